//! `dstack.sock`'s methods (service `DstackGuest`, UPSTREAM §1.3).

use std::sync::Arc;

use dstack_attest::eventlog::names;
use dstack_attest::{Event, Quote, RuntimeEvent};
use dstack_keys::{KeyAlgorithm, SignAlgorithm};
use dstack_proto::guest_api as wire;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::certs::{LeafSpec, tls_key_response};
use crate::server::{ApiFailure, Call, json};
use crate::{GuestApi, UPSTREAM_VERSION, take_evidence};
use dstack_attest::AttestationV0;
use dstack_attest::Measures;

/// Runtime event names only the boot sequence may emit: an app emitting one
/// could make its log look like a different boot.
const RESERVED_EVENTS: &[&str] = &[
    names::SYSTEM_PREPARING,
    names::APP_ID,
    names::COMPOSE_HASH,
    names::INSTANCE_ID,
    names::BOOT_MR_DONE,
    names::MR_KMS,
    names::OS_IMAGE_HASH,
    names::KEY_PROVIDER,
    names::STORAGE_FS,
    names::SYSTEM_READY,
    // Upstream HEAD's boot events and an older name verifiers still look up.
    "init-script-hash",
    "gpu-policy-hash",
    "gpu-attestation",
    "rootfs-hash",
];

/// Runs `name` if it is one of dstack.sock's methods.
pub(crate) async fn dispatch(
    api: &Arc<GuestApi>,
    name: &str,
    call: &Call,
) -> Option<Result<Vec<u8>, ApiFailure>> {
    Some(match name {
        "Info" => blocking(api, |api| json(&info(api)?)).await,
        "GetKey" => async { json(&get_key(api, &call.args()?)?) }.await,
        "GetQuote" => {
            async {
                let args: wire::RawQuoteArgs = call.args()?;
                let report_data = pad64(&args.report_data)?;
                blocking(api, move |api| json(&quote(api, report_data)?)).await
            }
            .await
        }
        "Attest" => {
            async {
                let args: wire::RawQuoteArgs = call.args()?;
                let report_data = pad64(&args.report_data)?;
                blocking(api, move |api| json(&attest(api, report_data)?)).await
            }
            .await
        }
        "GetTlsKey" => {
            async {
                let args: wire::GetTlsKeyArgs = call.args()?;
                blocking(api, move |api| json(&get_tls_key(api, args)?)).await
            }
            .await
        }
        "Sign" => async { json(&sign(api, &call.args()?)?) }.await,
        "Verify" => async { json(&verify(&call.args()?)?) }.await,
        "EmitEvent" => {
            async {
                let args: wire::EmitEventArgs = call.args()?;
                let event = checked_event(args)?;
                blocking(api, move |api| {
                    let _guard = api
                        .measure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    api.platform.emit_event(&event)?;
                    json(&wire::Empty {})
                })
                .await
            }
            .await
        }
        "Version" => json(&version()),
        "GpuInfo" => json(&wire::GpuInfoResponse::default()),
        _ => return None,
    })
}

/// Runs `f` on the blocking pool: the platform may block (configfs, host RPC).
pub(crate) async fn blocking<T: Send + 'static>(
    api: &Arc<GuestApi>,
    f: impl FnOnce(&GuestApi) -> Result<T, ApiFailure> + Send + 'static,
) -> Result<T, ApiFailure> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || f(&api))
        .await
        .map_err(|e| ApiFailure::internal(&e))?
}

/// report_data right-padded with zeros; more than 64 bytes is refused.
pub(crate) fn pad64(data: &[u8]) -> Result<[u8; 64], ApiFailure> {
    if data.len() > 64 {
        return Err(ApiFailure::bad_request(format!(
            "report_data is {} bytes; it must be at most 64 bytes",
            data.len()
        )));
    }
    let mut out = [0u8; 64];
    out[..data.len()].copy_from_slice(data);
    Ok(out)
}

pub(crate) fn version() -> wire::WorkerVersion {
    wire::WorkerVersion {
        version: UPSTREAM_VERSION.to_owned(),
        rev: concat!("dstack-rs-", env!("CARGO_PKG_VERSION")).to_owned(),
    }
}

pub(crate) fn info(api: &GuestApi) -> Result<wire::AppInfo, ApiFailure> {
    let evidence = take_evidence(api.platform.as_ref(), &api.measure, &[0; 64])?;
    let quote = Quote::parse(&evidence.quote).map_err(|e| ApiFailure::internal(&e))?;
    let report = quote.td_report().ok_or_else(|| ApiFailure {
        status: hyper::StatusCode::INTERNAL_SERVER_ERROR,
        message: "the platform's quote has no TD report".into(),
    })?;
    let app = &api.app;
    let Measures {
        mr_aggregated,
        device_id,
        ..
    } = Measures::of(report, app.key_provider_info.as_bytes());
    let tcb_info = serde_json::json!({
        "mrtd": hex::encode(report.mr_td),
        "rtmr0": hex::encode(report.rtmr[0]),
        "rtmr1": hex::encode(report.rtmr[1]),
        "rtmr2": hex::encode(report.rtmr[2]),
        "rtmr3": hex::encode(report.rtmr[3]),
        "mr_aggregated": hex::encode(mr_aggregated),
        "os_image_hash": hex::encode(&app.os_image_hash),
        "compose_hash": hex::encode(app.compose_hash),
        "device_id": hex::encode(device_id),
        "event_log": evidence.events,
        "app_compose": app.app_compose,
    });
    Ok(wire::AppInfo {
        app_id: app.app_id.clone(),
        instance_id: app.instance_id.clone(),
        app_cert: api.root.cert_pem.clone(),
        tcb_info: serde_json::to_string_pretty(&tcb_info).map_err(|e| ApiFailure::internal(&e))?,
        app_name: app.app_name.clone(),
        device_id: device_id.to_vec(),
        mr_aggregated: mr_aggregated.to_vec(),
        os_image_hash: app.os_image_hash.clone(),
        key_provider_info: app.key_provider_info.clone(),
        compose_hash: app.compose_hash.to_vec(),
        vm_config: app.vm_config.clone(),
        cloud_vendor: app.cloud_vendor.clone(),
        cloud_product: app.cloud_product.clone(),
    })
}

/// The event log as GetQuote serves it: every event keeps its digest (the
/// SDKs replay them); boot events drop their payloads, like upstream.
pub(crate) fn quote_event_log(events: &[Event]) -> Result<String, ApiFailure> {
    let served: Vec<Event> = events
        .iter()
        .map(|e| {
            if e.is_runtime() {
                e.clone()
            } else {
                Event {
                    event_payload: Vec::new(),
                    ..e.clone()
                }
            }
        })
        .collect();
    serde_json::to_string(&served).map_err(|e| ApiFailure::internal(&e))
}

pub(crate) fn quote(
    api: &GuestApi,
    report_data: [u8; 64],
) -> Result<wire::GetQuoteResponse, ApiFailure> {
    let evidence = take_evidence(api.platform.as_ref(), &api.measure, &report_data)?;
    Ok(wire::GetQuoteResponse {
        event_log: quote_event_log(&evidence.events)?,
        quote: evidence.quote,
        report_data: report_data.to_vec(),
        vm_config: api.app.vm_config.clone(),
    })
}

fn attest(api: &GuestApi, report_data: [u8; 64]) -> Result<wire::AttestResponse, ApiFailure> {
    let evidence = take_evidence(api.platform.as_ref(), &api.measure, &report_data)?;
    let attestation = AttestationV0::new(
        evidence.quote,
        evidence.events,
        report_data,
        api.app.vm_config.clone(),
    );
    Ok(wire::AttestResponse {
        attestation: attestation.to_bytes(),
    })
}

fn unix_seconds(value: Option<u64>, field: &str) -> Result<Option<i64>, ApiFailure> {
    value
        .map(|v| {
            i64::try_from(v)
                .ok()
                .filter(|&v| v < 253_402_300_800) // year 10000
                .ok_or_else(|| ApiFailure::bad_request(format!("{field} {v} is out of range")))
        })
        .transpose()
}

fn get_tls_key(
    api: &GuestApi,
    args: wire::GetTlsKeyArgs,
) -> Result<wire::GetTlsKeyResponse, ApiFailure> {
    let not_before = unix_seconds(args.not_before, "not_before")?;
    let not_after = unix_seconds(args.not_after, "not_after")?;
    if let (Some(before), Some(after)) = (not_before, not_after)
        && before >= after
    {
        return Err(ApiFailure::bad_request(format!(
            "not_before ({before}) must be earlier than not_after ({after})"
        )));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    let key = dstack_keys::derive_p256_key_pair_from_bytes(&seed[..], &[])?;
    let spec = LeafSpec {
        subject: args.subject,
        alt_names: args.alt_names,
        ra_tls: args.usage_ra_tls,
        server_auth: args.usage_server_auth,
        client_auth: args.usage_client_auth,
        not_before,
        not_after,
        with_app_info: args.with_app_info,
    };
    Ok(tls_key_response(api, &key, spec)?)
}

pub(crate) fn get_key(
    api: &GuestApi,
    args: &wire::GetKeyArgs,
) -> Result<wire::GetKeyResponse, ApiFailure> {
    let algorithm = KeyAlgorithm::parse(&args.algorithm)?;
    let derived = api.keys.get_key(&args.path, &args.purpose, algorithm)?;
    Ok(wire::GetKeyResponse {
        key: derived.key.to_vec(),
        signature_chain: derived.signature_chain,
    })
}

fn sign(api: &GuestApi, args: &wire::SignRequest) -> Result<wire::SignResponse, ApiFailure> {
    let signed = api
        .keys
        .sign(SignAlgorithm::parse(&args.algorithm)?, &args.data)?;
    Ok(wire::SignResponse {
        signature: signed.signature,
        signature_chain: signed.signature_chain,
        public_key: signed.public_key,
    })
}

fn verify(args: &wire::VerifyRequest) -> Result<wire::VerifyResponse, ApiFailure> {
    let valid = dstack_keys::verify(
        SignAlgorithm::parse(&args.algorithm)?,
        &args.data,
        &args.signature,
        &args.public_key,
    )?;
    Ok(wire::VerifyResponse { valid })
}

/// An app event, refused if its name is empty, reserved for boot, or holds
/// a `:` (the digest joins name and payload with `:`, so such a name could
/// alias another event's).
fn checked_event(args: wire::EmitEventArgs) -> Result<RuntimeEvent, ApiFailure> {
    if args.event.is_empty() {
        return Err(ApiFailure::bad_request("event name must not be empty"));
    }
    if RESERVED_EVENTS.contains(&args.event.as_str()) {
        return Err(ApiFailure::bad_request(format!(
            "event name {:?} is reserved for boot measurements",
            args.event
        )));
    }
    if args.event.contains(':') {
        return Err(ApiFailure::bad_request(format!(
            "event name {:?} must not contain ':'",
            args.event
        )));
    }
    Ok(RuntimeEvent {
        name: args.event,
        payload: args.payload,
    })
}
