//! `dstack vm deploy --env-file / --encrypted-env`: the app's encrypted
//! environment (UPSTREAM §5), sealed here so that the supervisor, which is
//! untrusted by design, only ever holds ciphertext.
//!
//! `--env-file`: the app's env public key comes from its KMS through the
//! supervisor (`POST /v1/env-key`), so it is only used once the KMS root
//! k256 key's `signature_v1` over it, the app id and a fresh timestamp
//! verifies against a trusted signer: `--kms-signer` (or
//! `DSTACK_KMS_SIGNER`), else the KMS's own `GetMeta` `k256_pubkey` (also
//! through the supervisor, so it only catches mix-ups; a notice says so).
//! Values are never printed: messages name keys only.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use dstack_compose::{AppCompose, KeyProviderKind};
use dstack_envcrypt::{
    BLOB_OVERHEAD, DEFAULT_MAX_AGE_SECS, EnvKeyError, EnvVar, MAX_BLOB_LEN, SignedEnvKey, Signer,
    parse_dotenv, seal, verify_env_public_key,
};
use dstack_proto::kms::{GetMetaResponse, PublicKeyResponse};
use dstack_proto::supervisor::{EnvKeyRequest, KmsMetaRequest};
use hyper::Method;

use super::Failure;
use crate::client::Client;

/// A `--kms-signer` value: a compressed (or uncompressed) secp256k1 public
/// key, or a 20-byte Ethereum address, hex with or without `0x`.
pub(super) fn parse_signer(text: &str) -> Result<Signer, String> {
    text.trim().parse::<Signer>().map_err(|e| e.to_string())
}

/// What `deploy` needs to make the encrypted env.
pub(super) struct EnvOptions<'a> {
    /// `--env-file`.
    pub(super) env_file: Option<&'a Path>,
    /// `--encrypted-env`.
    pub(super) encrypted_env: Option<&'a Path>,
    /// `--kms-signer` / `DSTACK_KMS_SIGNER`.
    pub(super) signers: &'a [Signer],
    /// The KMS the guest asks first (the first `--kms`); empty: the
    /// supervisor's default.
    pub(super) kms_url: &'a str,
    /// `--app-id`, as given.
    pub(super) app_id: Option<&'a str>,
}

/// The hex `DeployRequest.encrypted_env` for these options ("" for none).
pub(super) async fn encrypted_env(
    options: &EnvOptions<'_>,
    app_compose: &str,
    client: &Client,
) -> Result<String, Failure> {
    if let Some(path) = options.encrypted_env {
        let app = AppCompose::parse_manifest(app_compose).map_err(|e| anyhow!(e))?;
        if app.key_provider() != KeyProviderKind::Kms {
            eprintln!(
                "warning: this app does not get its keys from a KMS, so its guest has no env \
                 key and will refuse the encrypted env"
            );
        }
        return ready_blob(path);
    }
    let Some(path) = options.env_file else {
        return Ok(String::new());
    };
    let vars = read_env_file(path)?;
    let app = kms_app(app_compose)?;
    let dropped = dropped_keys(&vars, &app.allowed_envs);
    if !dropped.is_empty() {
        eprintln!(
            "warning: the guest will drop {} (not in the app-compose's allowed_envs): {}",
            if dropped.len() == 1 {
                "this variable"
            } else {
                "these variables"
            },
            dropped.join(", ")
        );
    }
    let app_id = deploy_app_id(options.app_id, app_compose)?;
    let (response, trusted) =
        fetch_env_key(&app_id, options.signers, options.kms_url, client).await?;
    let blob = seal_for(&vars, &response, &app_id, &trusted, now_unix())?;
    eprintln!(
        "sealed {} variable{} for app {} to the env key of {} (signer checked)",
        vars.len(),
        if vars.len() == 1 { "" } else { "s" },
        hex::encode(app_id),
        if options.kms_url.is_empty() {
            "the supervisor's default KMS"
        } else {
            options.kms_url
        }
    );
    Ok(hex::encode(blob))
}

/// The variables of a `.env` file; errors name the line, never a value.
pub(super) fn read_env_file(path: &Path) -> Result<Vec<EnvVar>, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --env-file {}", path.display()))?;
    parse_dotenv(&text)
        .map_err(|e| Failure::BadInput(anyhow!("--env-file {}: {e}", path.display())))
}

/// The app-compose of an app whose guest gets its env key from a KMS:
/// only then does anyone outside the guest know the key to encrypt to.
fn kms_app(app_compose: &str) -> Result<AppCompose, Failure> {
    let app = AppCompose::parse_manifest(app_compose).map_err(|e| anyhow!(e))?;
    match app.key_provider() {
        KeyProviderKind::Kms => Ok(app),
        other => Err(Failure::BadInput(anyhow!(
            "--env-file needs an app whose keys come from a KMS (\"kms_enabled\": true or \
             \"key_provider\": \"kms\" in its app-compose.json, and the variables listed in \
             \"allowed_envs\"); this app's key provider is {}, whose guest has no env key to \
             decrypt with",
            format!("{other:?}").to_lowercase()
        ))),
    }
}

/// Keys the guest will skip: not in `allowed_envs` (each once, in order).
pub(super) fn dropped_keys(vars: &[EnvVar], allowed: &[String]) -> Vec<String> {
    let mut dropped: Vec<String> = Vec::new();
    for var in vars {
        if !allowed.contains(&var.key) && !dropped.contains(&var.key) {
            dropped.push(var.key.clone());
        }
    }
    dropped
}

/// The app's env-key answer from its KMS (through the supervisor) and the
/// signers to check it against: `signers`, or, when none is given, the
/// KMS's own GetMeta key (announced).
async fn fetch_env_key(
    app_id: &[u8; 20],
    signers: &[Signer],
    kms_url: &str,
    client: &Client,
) -> Result<(PublicKeyResponse, Vec<Signer>), Failure> {
    let response: PublicKeyResponse = client
        .call(
            Method::POST,
            "/v1/env-key",
            Some(&EnvKeyRequest {
                app_id: hex::encode(app_id),
                kms_url: kms_url.to_owned(),
            }),
        )
        .await
        .map_err(|e| Failure::Failed(format!("cannot get the app's env key: {e:#}")))?;
    let trusted = if signers.is_empty() {
        vec![kms_reported_signer(client, kms_url).await?]
    } else {
        signers.to_vec()
    };
    Ok((response, trusted))
}

/// The app's env public key, verified: what `dstack vm env-key` prints, to
/// encrypt to with other tools (the SDKs' `encrypt_env_vars`).
pub(super) async fn checked_env_key(
    app_id: &[u8; 20],
    signers: &[Signer],
    kms_url: &str,
    client: &Client,
) -> Result<[u8; 32], Failure> {
    let (response, trusted) = fetch_env_key(app_id, signers, kms_url, client).await?;
    verify_env_key(&response, app_id, &trusted, now_unix())
        .map_err(|e| Failure::Rejected(describe(&e, &trusted)))
}

/// The app id this deploy will have: `--app-id`, else the compose's own.
pub(super) fn deploy_app_id(given: Option<&str>, app_compose: &str) -> Result<[u8; 20], Failure> {
    match given {
        Some(text) => {
            let digits = text.strip_prefix("0x").unwrap_or(text);
            hex::decode(digits)
                .ok()
                .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    Failure::BadInput(anyhow!("--app-id {text:?} is not 20 bytes of hex"))
                })
        }
        None => Ok(dstack_compose::app_id(&dstack_compose::compose_hash(
            app_compose.as_bytes(),
        ))),
    }
}

/// No signer given: the KMS's own k256 key, from its `GetMeta` (trust on
/// first use, announced).
async fn kms_reported_signer(client: &Client, kms_url: &str) -> Result<Signer, Failure> {
    let meta: GetMetaResponse = client
        .call(
            Method::POST,
            "/v1/kms-meta",
            Some(&KmsMetaRequest {
                kms_url: kms_url.to_owned(),
            }),
        )
        .await
        .map_err(|e| Failure::Failed(format!("cannot get the KMS's signing key: {e:#}")))?;
    let signer = Signer::from_public_key(&meta.k256_pubkey).map_err(|e| {
        Failure::Rejected(format!(
            "the KMS's GetMeta k256_pubkey ({}) is unusable: {e}",
            hex::encode(&meta.k256_pubkey)
        ))
    })?;
    eprintln!("{}", tofu_notice(&signer));
    Ok(signer)
}

/// What is said when the KMS's own report of its key is trusted.
fn tofu_notice(signer: &Signer) -> String {
    let key = signer
        .public_key()
        .map(|k| format!("0x{}", hex::encode(k)))
        .unwrap_or_default();
    format!(
        "notice: no --kms-signer given, so the env key was checked against the KMS's own \
         signing key as reported through the supervisor (GetMeta k256_pubkey {key}, address \
         0x{}). That catches a wrong KMS, not a dishonest supervisor or network, which could \
         answer both. Pin the key with --kms-signer {key} (or DSTACK_KMS_SIGNER); `dstack kms \
         info https://HOST:PORT` shows it straight from the KMS.",
        hex::encode(signer.address())
    )
}

/// The sealed blob for `vars`: `response`'s public key, once its
/// `signature_v1` verifies against one of `trusted` at `now`.
pub(super) fn seal_for(
    vars: &[EnvVar],
    response: &PublicKeyResponse,
    app_id: &[u8; 20],
    trusted: &[Signer],
    now: u64,
) -> Result<Vec<u8>, Failure> {
    let public_key = verify_env_key(response, app_id, trusted, now)
        .map_err(|e| Failure::Rejected(describe(&e, trusted)))?;
    seal(&public_key, vars, &mut rand::rngs::OsRng)
        .map_err(|e| Failure::BadInput(anyhow!("--env-file: {e}")))
}

/// The app's env public key from `response`, if one of `trusted` signed
/// it (upstream's SDK window: at most 300 s old, 60 s ahead).
pub(super) fn verify_env_key(
    response: &PublicKeyResponse,
    app_id: &[u8; 20],
    trusted: &[Signer],
    now: u64,
) -> Result<[u8; 32], EnvKeyError> {
    let signed = SignedEnvKey {
        public_key: &response.public_key,
        signature: &response.signature,
        timestamp: response.timestamp,
        signature_v1: &response.signature_v1,
    };
    let mut refused = None;
    for signer in trusted {
        match verify_env_public_key(&signed, app_id, signer, now, DEFAULT_MAX_AGE_SECS) {
            Ok(key) => return Ok(key),
            // Another trusted signer may be the one.
            Err(e @ EnvKeyError::UntrustedSigner { .. }) => refused = Some(e),
            // Nothing about the signer: the same for every one.
            Err(e) => return Err(e),
        }
    }
    Err(refused.unwrap_or(EnvKeyError::NoSignature))
}

/// The refusal, naming every trusted signer when there are several.
fn describe(err: &EnvKeyError, trusted: &[Signer]) -> String {
    match err {
        EnvKeyError::UntrustedSigner {
            recovered_address,
            recovered_public_key,
            ..
        } if trusted.len() > 1 => format!(
            "the env public key was signed by address 0x{} (public key 0x{}), which is none \
             of the {} trusted KMS signers: another KMS, or a forged response",
            hex::encode(recovered_address),
            hex::encode(recovered_public_key),
            trusted.len()
        ),
        other => other.to_string(),
    }
}

/// A ready blob from `--encrypted-env`, as hex: hex text (what the
/// official SDKs' `encrypt_env_vars` return; `0x` and surrounding
/// whitespace allowed) or raw binary. Only loosely checked: the guest is
/// the judge, and operators may want to see it refuse.
pub(super) fn ready_blob(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --encrypted-env {}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::BadInput(anyhow!(
            "--encrypted-env {} is empty",
            path.display()
        )));
    }
    let (digits, len) = match hex_text(&bytes) {
        Some(text) => (text.to_ascii_lowercase(), text.len() / 2),
        None => (hex::encode(&bytes), bytes.len()),
    };
    if len > MAX_BLOB_LEN {
        eprintln!(
            "warning: the encrypted env is {len} bytes; guests refuse more than {MAX_BLOB_LEN} \
             (the boot will stop with that error)"
        );
    } else if len < BLOB_OVERHEAD {
        eprintln!(
            "warning: the encrypted env is {len} bytes, shorter than any sealed env \
             ({BLOB_OVERHEAD}); the guest will refuse it"
        );
    }
    Ok(digits)
}

/// The hex digits of `bytes` if it is hex text (even length, `0x` and
/// surrounding whitespace allowed).
fn hex_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let digits = text.strip_prefix("0x").unwrap_or(text);
    (!digits.is_empty() && digits.len() % 2 == 0 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(digits)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
