//! The guest API apps call on `/var/run/dstack.sock` (and the legacy
//! `tappd.sock`), compatible with upstream dstack's (UPSTREAM.md §1): apps
//! written for dstack's SDKs run unchanged.
//!
//! PID1 builds one [`GuestApi`] after the boot measurements and serves it on
//! both sockets:
//!
//! ```no_run
//! # async fn run(platform: std::sync::Arc<dyn dstack_attest::Platform>,
//! #              app: dstack_guest_api::AppInfo, keys: dstack_keys::AppKeys)
//! #              -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use dstack_guest_api::{Flavor, GuestApi};
//! let api = Arc::new(GuestApi::new(platform, app, keys)?);
//! let dstack = tokio::net::UnixListener::bind("/run/dstack.sock")?;
//! let tappd = tokio::net::UnixListener::bind("/run/tappd.sock")?;
//! tokio::spawn(api.clone().serve(tappd, Flavor::Tappd));
//! api.serve(dstack, Flavor::Dstack).await;
//! # Ok(()) }
//! ```
//!
//! Routes (every method takes POST with a JSON body, or GET with the
//! arguments in the query string; errors are `{"error": ".."}` with 400 for
//! bad input, 404 for an unknown path, 413 for a body over
//! [`MAX_BODY_BYTES`], 500 when the TEE fails). Wire types are in
//! [`dstack_proto::guest_api`].
//!
//! - dstack.sock: `/Info`, `/GetKey`, `/GetQuote`, `/Attest`, `/GetTlsKey`,
//!   `/Sign`, `/Verify`, `/EmitEvent`, `/Version`, `/GpuInfo`.
//! - tappd.sock: `/prpc/Tappd.<M>` or `/prpc/<M>` for `DeriveKey`,
//!   `DeriveK256Key`, `TdxQuote`, `RawQuote`, `Info`, `Version`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certs;
mod dstack;
mod server;
mod tappd;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::{Arc, Mutex, PoisonError};

use dstack_attest::{Event, Platform, PlatformError, RuntimeEvent};
use dstack_keys::AppKeys;

pub use server::MAX_BODY_BYTES;

/// The upstream dstack release whose guest API this implements, reported by
/// `/Version` (the SDKs gate newer features on it).
pub const UPSTREAM_VERSION: &str = "0.5.11";

/// What the app is, as measured at boot. Strings are served as given.
#[derive(Debug, Clone, Default)]
pub struct AppInfo {
    /// App id (20 bytes), as in the `app-id` event.
    pub app_id: Vec<u8>,
    /// Instance id (20 bytes, or empty), as in the `instance-id` event.
    pub instance_id: Vec<u8>,
    /// SHA-256 of the app-compose.json bytes.
    pub compose_hash: [u8; 32],
    /// The app's name from app-compose.
    pub app_name: String,
    /// The raw app-compose.json text.
    pub app_compose: String,
    /// The VM config JSON string.
    pub vm_config: String,
    /// The OS image hash (empty when unknown).
    pub os_image_hash: Vec<u8>,
    /// The `key-provider` event payload: compact JSON as measured.
    pub key_provider_info: String,
    /// DMI system vendor.
    pub cloud_vendor: String,
    /// DMI product name.
    pub cloud_product: String,
}

/// Why the guest API could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestApiError {
    /// The TEE could not quote the app root certificate.
    #[error("TEE platform failed")]
    Platform(#[from] PlatformError),
    /// The app root certificate could not be made.
    #[error("cannot issue the app root certificate")]
    RootCert(#[from] dstack_ra_tls::RaTlsError),
    /// The app key could not be used.
    #[error("app key is unusable")]
    Key(#[from] dstack_keys::KeyError),
    /// A background task died.
    #[error("blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    /// The certificate signing request could not be signed.
    #[error("cannot sign the certificate request")]
    Csr(#[from] dstack_ra_tls::CsrError),
    /// The signer (the KMS) did not sign the certificate.
    #[error("the KMS did not sign the certificate")]
    Signer(#[source] SignerError),
}

/// Why a [`CertSigner`] did not sign: its own error (in KMS mode, the KMS
/// client's), kept whole for the error chain.
pub type SignerError = Box<dyn std::error::Error + Send + Sync>;

/// Who certifies the app's TLS keys when it is not the app root: in KMS
/// mode, the KMS's `SignCert`, so `/GetTlsKey` and tappd `DeriveKey` answer
/// `[leaf, app CA, KMS root CA]` (UPSTREAM §1.3) instead of `[leaf, app
/// root]`. Called on a blocking thread, once per certificate, as upstream's
/// guest agent asks the KMS once per request.
pub trait CertSigner: Send + Sync {
    /// The PEM chain, leaf first, for `csr` with its key's `signature`.
    fn sign(
        &self,
        csr: &dstack_ra_tls::CertSigningRequestV2,
        signature: &[u8],
    ) -> Result<Vec<String>, SignerError>;
}

/// Which socket's API to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `dstack.sock`: methods at `/<Method>`.
    Dstack,
    /// The legacy `tappd.sock`: methods at `/prpc/Tappd.<Method>`.
    Tappd,
}

/// The guest API: the app's identity and keys, and the TEE that attests them.
pub struct GuestApi {
    platform: Arc<dyn Platform>,
    app: AppInfo,
    keys: AppKeys,
    root: certs::AppRoot,
    /// Signs leaves instead of the app root (KMS mode).
    signer: Option<Arc<dyn CertSigner>>,
    /// Held across "read event log + quote" and "emit event", so a quote
    /// and the log served with it always agree.
    measure: Mutex<()>,
}

impl std::fmt::Debug for GuestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestApi")
            .field("platform", &self.platform.kind())
            .field("app", &self.app)
            .field("keys", &self.keys)
            .field("kms_signed", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

impl GuestApi {
    /// A guest API for `app`. Issues the app root certificate ("App Root
    /// Cert", self-signed by the app key, carrying a quote that binds it),
    /// so this quotes once and may block on the platform.
    pub fn new(
        platform: Arc<dyn Platform>,
        app: AppInfo,
        keys: AppKeys,
    ) -> Result<Self, GuestApiError> {
        let measure = Mutex::new(());
        let root = certs::AppRoot::issue(platform.as_ref(), &measure, &keys, &app)?;
        Ok(Self {
            platform,
            app,
            keys,
            root,
            signer: None,
            measure,
        })
    }

    /// Have `signer` (the KMS) certify `/GetTlsKey` and `DeriveKey` keys
    /// instead of the app root.
    pub fn with_cert_signer(mut self, signer: Arc<dyn CertSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The app root certificate (PEM) that signs `/GetTlsKey` certificates
    /// (unless a [`CertSigner`] does).
    pub fn root_cert_pem(&self) -> &str {
        &self.root.cert_pem
    }

    /// Serve `flavor`'s API on `listener` until accepting fails for good;
    /// one task per connection.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::UnixListener, flavor: Flavor) {
        server::serve(self, listener, flavor).await;
    }
}

/// A quote and the event log it was taken with.
pub(crate) struct Evidence {
    pub(crate) quote: Vec<u8>,
    pub(crate) events: Vec<Event>,
}

/// Quotes `report_data` and reads the event log under `measure`; runtime
/// events missing a digest get it recomputed (every event carries one).
pub(crate) fn take_evidence(
    platform: &dyn Platform,
    measure: &Mutex<()>,
    report_data: &[u8; 64],
) -> Result<Evidence, PlatformError> {
    let _guard = measure.lock().unwrap_or_else(PoisonError::into_inner);
    let quote = platform.quote(report_data)?;
    let mut events = platform.event_log()?;
    for event in &mut events {
        if event.is_runtime() && event.digest.is_empty() {
            event.digest = RuntimeEvent {
                name: event.event.clone(),
                payload: event.event_payload.clone(),
            }
            .digest()
            .to_vec();
        }
    }
    Ok(Evidence { quote, events })
}
