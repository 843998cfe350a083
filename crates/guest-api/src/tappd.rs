//! `tappd.sock`'s methods (service `Tappd`, UPSTREAM §1.4), the API of
//! dstack before 0.5; the same keys and quotes under older names.

use std::sync::Arc;

use dstack_keys::report_data::TAG_APP_DATA;
use dstack_keys::{HashAlgorithm, report_data_with_hash};
use dstack_proto::guest_api as wire;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::GuestApi;
use crate::certs::{LeafSpec, tls_key_response};
use crate::dstack::{blocking, get_key, info, quote, version};
use crate::server::{ApiFailure, Call, json};

/// Runs `name` if it is one of tappd.sock's methods.
pub(crate) async fn dispatch(
    api: &Arc<GuestApi>,
    name: &str,
    call: &Call,
) -> Option<Result<Vec<u8>, ApiFailure>> {
    Some(match name {
        "DeriveKey" => {
            async {
                let args: wire::DeriveKeyArgs = call.args()?;
                blocking(api, move |api| json(&derive_key(api, args)?)).await
            }
            .await
        }
        "DeriveK256Key" => {
            async {
                let key = get_key(api, &call.args()?)?;
                json(&wire::DeriveK256KeyResponse {
                    k256_key: key.key,
                    k256_signature_chain: key.signature_chain,
                })
            }
            .await
        }
        "TdxQuote" => {
            async {
                let args: wire::TdxQuoteArgs = call.args()?;
                blocking(api, move |api| json(&tdx_quote(api, &args)?)).await
            }
            .await
        }
        "RawQuote" => {
            async {
                let args: wire::RawQuoteArgs = call.args()?;
                let args = wire::TdxQuoteArgs {
                    report_data: args.report_data,
                    hash_algorithm: "raw".into(),
                    prefix: String::new(),
                };
                blocking(api, move |api| json(&tdx_quote(api, &args)?)).await
            }
            .await
        }
        "Info" => blocking(api, |api| json(&info(api)?)).await,
        "Version" => json(&version()),
        _ => return None,
    })
}

/// A P-256 key from HKDF over the app k256 key with info = path (or over a
/// fresh random seed), certified by the app root.
fn derive_key(
    api: &GuestApi,
    args: wire::DeriveKeyArgs,
) -> Result<wire::GetTlsKeyResponse, ApiFailure> {
    let key = if args.random_seed {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut seed[..]);
        dstack_keys::derive_p256_key_pair_from_bytes(&seed[..], &[args.path.as_bytes()])?
    } else {
        let ikm = api.keys.k256_key();
        dstack_keys::derive_p256_key_pair_from_bytes(&ikm[..], &[args.path.as_bytes()])?
    };
    let spec = LeafSpec {
        subject: args.subject,
        alt_names: args.alt_names,
        ra_tls: args.usage_ra_tls,
        server_auth: args.usage_server_auth,
        client_auth: args.usage_client_auth,
        not_before: None,
        not_after: None,
        with_app_info: false,
    };
    Ok(tls_key_response(api, &key, spec)?)
}

/// report_data = hash(prefix ":" data), zero-padded (default sha512,
/// prefix `app-data`), or the data itself for `raw`.
fn tdx_quote(
    api: &GuestApi,
    args: &wire::TdxQuoteArgs,
) -> Result<wire::TdxQuoteResponse, ApiFailure> {
    let hash = HashAlgorithm::parse(&args.hash_algorithm)?;
    let tag = if args.prefix.is_empty() {
        TAG_APP_DATA
    } else {
        &args.prefix
    };
    let report_data = report_data_with_hash(tag, &args.report_data, hash)
        .map_err(|e| ApiFailure::bad_request(format!("report_data: {e}")))?;
    let response = quote(api, report_data)?;
    Ok(wire::TdxQuoteResponse {
        quote: response.quote,
        event_log: response.event_log,
        hash_algorithm: hash.name().to_owned(),
        prefix: if hash == HashAlgorithm::Raw {
            String::new()
        } else {
            tag.to_owned()
        },
    })
}
