//! Measuring the app into RTMR3 at boot, in dstack's order and with its
//! names and payloads (UPSTREAM.md §2.2), and the key provider whose use is
//! itself measured. Every function here blocks on the TEE: call them from
//! blocking threads.

use dstack_attest::eventlog::names;
use dstack_attest::{Platform, PlatformError, Quote, RuntimeEvent};
use dstack_compose::{AppCompose, KeyProviderKind, mr_config_id_matches};

/// The filesystem of the data disk, as measured in `storage-fs`.
pub const STORAGE_FS: &str = "ext4";

/// Why measuring failed. A failed measurement stops the boot: a guest whose
/// registers do not say what it runs must not run it.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// Extending RTMR3 failed.
    #[error("measuring {event:?} into RTMR3 failed")]
    Extend {
        /// The event.
        event: String,
        /// The cause.
        #[source]
        source: Box<PlatformError>,
    },
    /// The TEE could not quote (needed to read mr_config_id).
    #[error("the TEE could not produce a quote")]
    Quote(#[source] Box<PlatformError>),
    /// The quote the TEE produced is malformed.
    #[error("the TEE's quote is malformed")]
    BadQuote(#[source] dstack_attest::QuoteParseError),
    /// The host bound another app into the TD.
    #[error(
        "mr_config_id {found} does not match this app (compose-hash {compose_hash}): the host launched the TD for another app"
    )]
    MrConfigId {
        /// The TD's mr_config_id, hex.
        found: String,
        /// This app's compose-hash, hex.
        compose_hash: String,
    },
    /// The app asks for a key provider this guest cannot use.
    #[error("{0}")]
    KeyProvider(String),
    /// The app pins another key provider than the one that answered.
    #[error(
        "key_provider_id: the app pins key provider {expected}, but the host's provider is {found}"
    )]
    KeyProviderId {
        /// The pinned id, hex.
        expected: String,
        /// The provider's id, hex.
        found: String,
    },
}

/// Extends RTMR3 with one runtime event (and logs it, after the extend).
pub fn emit(platform: &dyn Platform, name: &str, payload: &[u8]) -> Result<(), MeasureError> {
    platform
        .emit_event(&RuntimeEvent {
            name: name.into(),
            payload: payload.to_vec(),
        })
        .map_err(|source| MeasureError::Extend {
            event: name.into(),
            source: Box::new(source),
        })
}

/// Refuses the providers this guest cannot use: KMS when the host hands
/// over no KMS URL, and TPM.
pub fn check_key_provider_supported(
    app: &AppCompose,
    kms_urls: &[String],
) -> Result<KeyProviderKind, MeasureError> {
    match app.key_provider() {
        kind @ (KeyProviderKind::None | KeyProviderKind::Local) => Ok(kind),
        KeyProviderKind::Kms if !kms_urls.is_empty() => Ok(KeyProviderKind::Kms),
        KeyProviderKind::Kms => Err(MeasureError::KeyProvider(
            "the app asks for KMS keys (kms_enabled), but this host configures no KMS (deploy with --kms URL)".into(),
        )),
        KeyProviderKind::Tpm => Err(MeasureError::KeyProvider(
            "the app asks for the TPM key provider, which dstack-rs does not support".into(),
        )),
    }
}

/// The app-compose's `key_provider_id` pin, raw (empty: not pinned).
pub fn pinned_key_provider_id(app: &AppCompose) -> Result<Vec<u8>, MeasureError> {
    hex::decode(app.key_provider_id.trim())
        .map_err(|e| MeasureError::KeyProvider(format!("key_provider_id is not hex: {e}")))
}

/// Upstream's `verify_key_provider_id`: a pinned id must be the provider's.
pub fn check_key_provider_id(pinned: &[u8], provider_id: &[u8]) -> Result<(), MeasureError> {
    if !pinned.is_empty() && pinned != provider_id {
        return Err(MeasureError::KeyProviderId {
            expected: hex::encode(pinned),
            found: hex::encode(provider_id),
        });
    }
    Ok(())
}

/// The measured identity, raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMeasurement {
    /// 20-byte app-id.
    pub app_id: Vec<u8>,
    /// 20-byte instance-id, or empty.
    pub instance_id: Vec<u8>,
    /// 32-byte compose-hash.
    pub compose_hash: [u8; 32],
    /// The `key-provider` payload.
    pub key_provider_info: String,
}

/// Measures the app's identity: `app-id`, `compose-hash`, `instance-id`,
/// `boot-mr-done` (in that order, after the caller's `system-preparing`).
/// The key provider is asked after this, as upstream does, so a local
/// provider's key is bound to these events.
pub fn measure_identity(
    platform: &dyn Platform,
    measured: &AppMeasurement,
) -> Result<(), MeasureError> {
    emit(platform, names::APP_ID, &measured.app_id)?;
    emit(platform, names::COMPOSE_HASH, &measured.compose_hash)?;
    emit(platform, names::INSTANCE_ID, &measured.instance_id)?;
    emit(platform, names::BOOT_MR_DONE, &[])
}

/// Measures `key-provider`, then checks that the TD's `mr_config_id` (set
/// by the host at launch) names this app and this provider.
pub fn measure_key_provider(
    platform: &dyn Platform,
    app: &AppCompose,
    measured: &AppMeasurement,
) -> Result<(), MeasureError> {
    emit(
        platform,
        names::KEY_PROVIDER,
        measured.key_provider_info.as_bytes(),
    )?;
    let quote = platform
        .quote(&[0; 64])
        .map_err(|e| MeasureError::Quote(Box::new(e)))?;
    let quote = Quote::parse(&quote).map_err(MeasureError::BadQuote)?;
    if let Some(report) = quote.td_report()
        && !mr_config_id_matches(
            &report.mr_config_id,
            &measured.compose_hash,
            &measured.app_id,
            app.key_provider(),
            &pinned_key_provider_id(app)?,
        )
    {
        return Err(MeasureError::MrConfigId {
            found: hex::encode(report.mr_config_id),
            compose_hash: hex::encode(measured.compose_hash),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dstack_attest::eventlog::{check_replay, key_provider};
    use dstack_attest::{Rtmrs, SimAuthority, SimPlatform, SimTdIdentity};

    use super::*;

    const JSON: &str = r#"{"manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services:\n  w:\n    image: busybox\n"}"#;

    fn measured(hash: [u8; 32]) -> AppMeasurement {
        AppMeasurement {
            app_id: hash[..20].to_vec(),
            instance_id: vec![3; 20],
            compose_hash: hash,
            key_provider_info: key_provider::NONE.into(),
        }
    }

    fn platform(mr_config_id: [u8; 48]) -> SimPlatform {
        let identity = SimTdIdentity {
            mr_config_id,
            ..SimTdIdentity::default()
        };
        SimPlatform::new(
            Arc::new(SimAuthority::generate().unwrap()),
            identity,
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn measures_in_upstream_order_and_replays() {
        let app = AppCompose::parse(JSON).unwrap().0;
        let hash = dstack_compose::compose_hash(JSON.as_bytes());
        let td = platform(dstack_compose::mr_config_id_v1(&hash));
        emit(&td, names::SYSTEM_PREPARING, &[]).unwrap();
        measure_identity(&td, &measured(hash)).unwrap();
        measure_key_provider(&td, &app, &measured(hash)).unwrap();
        let log = td.event_log().unwrap();
        let order: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            order,
            [
                "system-preparing",
                "app-id",
                "compose-hash",
                "instance-id",
                "boot-mr-done",
                "key-provider"
            ]
        );
        assert_eq!(log[5].event_payload, br#"{"name":"none","id":""}"#);
        let quote = Quote::parse(&td.quote(&[0; 64]).unwrap()).unwrap();
        check_replay(&log, &Rtmrs(quote.td_report().unwrap().rtmr)).unwrap();
    }

    #[test]
    fn another_apps_mr_config_id_stops_the_boot() {
        let app = AppCompose::parse(JSON).unwrap().0;
        let hash = dstack_compose::compose_hash(JSON.as_bytes());
        let td = platform(dstack_compose::mr_config_id_v1(&[9; 32]));
        let err = measure_key_provider(&td, &app, &measured(hash)).unwrap_err();
        assert!(matches!(err, MeasureError::MrConfigId { .. }), "{err}");
        // Zero means the host bound nothing: accepted.
        measure_key_provider(&platform([0; 48]), &app, &measured(hash)).unwrap();
    }

    #[test]
    fn none_and_local_providers_are_available() {
        let kms = JSON.replace('}', r#","kms_enabled":true}"#);
        let kms_app = AppCompose::parse(&kms).unwrap().0;
        let err = check_key_provider_supported(&kms_app, &[]).unwrap_err();
        assert!(err.to_string().contains("no KMS"), "{err}");
        assert_eq!(
            check_key_provider_supported(&kms_app, &["https://10.0.2.2:8000".into()]).unwrap(),
            KeyProviderKind::Kms
        );
        let local = JSON.replace('}', r#","key_provider":"local"}"#);
        let app = AppCompose::parse(&local).unwrap().0;
        assert_eq!(
            check_key_provider_supported(&app, &[]).unwrap(),
            KeyProviderKind::Local
        );
    }

    #[test]
    fn a_pinned_provider_id_must_match() {
        let pinned = JSON.replace(
            '}',
            &format!(r#","key_provider_id":"{}"}}"#, "ab".repeat(32)),
        );
        let app = AppCompose::parse(&pinned).unwrap().0;
        let pin = pinned_key_provider_id(&app).unwrap();
        check_key_provider_id(&pin, &[0xab; 32]).unwrap();
        let err = check_key_provider_id(&pin, &[0xcd; 32]).unwrap_err();
        assert!(matches!(err, MeasureError::KeyProviderId { .. }), "{err}");
        assert!(err.to_string().contains("key_provider_id"), "{err}");
        // Not pinned: any provider.
        check_key_provider_id(&[], &[0xcd; 32]).unwrap();
        let bad = JSON.replace('}', r#","key_provider_id":"xyz"}"#);
        assert!(pinned_key_provider_id(&AppCompose::parse(&bad).unwrap().0).is_err());
    }
}
