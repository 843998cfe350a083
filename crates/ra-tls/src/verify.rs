//! Checking RA-TLS certificates, and rustls verifiers built on that check.
//!
//! The trust decision comes from the quote, not from a CA: a certificate is
//! accepted when its quote verifies under the configured trust anchor, the
//! quote's report_data binds the certificate's own public key, the event log
//! replays to the quoted RTMRs, and the caller's policy accepts the result.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dstack_attest::eventlog::{
    check_replay, check_runtime_replay, parse_event_log_json, verify_runtime_digests,
};
use dstack_attest::{AttestationV0, Collateral, Event, QuoteVerifier, Rtmrs, VerifiedQuote};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::RaTlsError;
use crate::app_info::CertAppInfo;
use crate::cert::report_data_for_spki;
use crate::oids;

/// A peer whose RA-TLS certificate passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    /// The verified quote (TCB status, measurements, report data).
    pub quote: VerifiedQuote,
    /// The event log, matched against the quote's RTMRs: all four for a
    /// legacy full log (`.2`), RTMR3 for a stripped one (`.8`), whose boot
    /// events are only RTMR0's ACPI DATA digests.
    pub event_log: Vec<Event>,
    /// The VM config string the attestation carried (empty if none).
    pub vm_config: String,
    /// The `.9` app-info extension, if present. The issuer's claim, not
    /// evidence: derive identity from the quote and event log instead.
    pub app_info: Option<CertAppInfo>,
    /// The app id extension, if present.
    pub app_id: Option<Vec<u8>>,
    /// The special-usage extension, if present.
    pub usage: Option<String>,
    /// SHA-256 of the certificate DER.
    pub cert_sha256: [u8; 32],
}

/// A caller's acceptance rule, run after all evidence checks pass.
pub type PeerPolicy = dyn Fn(&VerifiedPeer) -> Result<(), String> + Send + Sync;

/// Checks RA-TLS certificates.
pub struct RaTlsVerifier {
    quotes: QuoteVerifier,
    collateral: Option<Collateral>,
    policy: Option<Box<PeerPolicy>>,
    recent: Mutex<VecDeque<VerifiedPeer>>,
}

impl std::fmt::Debug for RaTlsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaTlsVerifier")
            .field("quotes", &self.quotes)
            .field("has_policy", &self.policy.is_some())
            .finish_non_exhaustive()
    }
}

const RECENT_PEERS: usize = 64;

struct Extensions {
    spki: Vec<u8>,
    attestation: Option<Vec<u8>>,
    app_info: Option<Vec<u8>>,
    quote: Option<Vec<u8>>,
    event_log: Option<Vec<u8>>,
    collateral: Option<Vec<u8>>,
    app_id: Option<Vec<u8>>,
    usage: Option<Vec<u8>>,
    not_before: i64,
    not_after: i64,
}

fn read_extensions(cert_der: &[u8]) -> Result<Extensions, RaTlsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| RaTlsError::Certificate(e.to_string()))?;
    let mut out = Extensions {
        spki: cert.tbs_certificate.subject_pki.raw.to_vec(),
        attestation: None,
        app_info: None,
        quote: None,
        event_log: None,
        collateral: None,
        app_id: None,
        usage: None,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    for ext in cert.extensions() {
        let Some(arcs) = ext.oid.iter() else { continue };
        let arcs: Vec<u64> = arcs.collect();
        let slot = match arcs.as_slice() {
            a if a == oids::ATTESTATION => &mut out.attestation,
            a if a == oids::APP_INFO => &mut out.app_info,
            a if a == oids::TDX_QUOTE => &mut out.quote,
            a if a == oids::EVENT_LOG => &mut out.event_log,
            a if a == oids::COLLATERAL => &mut out.collateral,
            a if a == oids::APP_ID => &mut out.app_id,
            a if a == oids::CERT_USAGE => &mut out.usage,
            _ => continue,
        };
        let content = yasna::parse_der(ext.value, |r| r.read_bytes()).map_err(|_| {
            RaTlsError::Certificate(format!("extension {arcs:?} is not an OCTET STRING"))
        })?;
        *slot = Some(content);
    }
    Ok(out)
}

/// The content of `cert`'s extension `oid` (unwrapped from its OCTET STRING).
pub(crate) fn extension(
    cert: &X509Certificate<'_>,
    oid: &[u64],
) -> Result<Option<Vec<u8>>, String> {
    for ext in cert.extensions() {
        let Some(arcs) = ext.oid.iter() else { continue };
        if arcs.eq(oid.iter().copied()) {
            return yasna::parse_der(ext.value, |r| r.read_bytes())
                .map(Some)
                .map_err(|_| format!("extension {oid:?} is not an OCTET STRING"));
        }
    }
    Ok(None)
}

/// The quote an RA-TLS certificate carries (`.8`, else the legacy `.1`):
/// what a verifier fetches collateral for before checking the certificate.
pub fn certificate_quote(cert_der: &[u8]) -> Result<Vec<u8>, RaTlsError> {
    let ext = read_extensions(cert_der)?;
    match (&ext.attestation, ext.quote) {
        (Some(bytes), _) => Ok(AttestationV0::from_bytes(bytes)?.quote),
        (None, Some(quote)) => Ok(quote),
        (None, None) => Err(RaTlsError::MissingQuote),
    }
}

/// What an RA-TLS certificate carries, decoded but not checked: the input
/// of [`RaTlsVerifier::verify_cert`], and of tools that check the evidence
/// themselves and explain each step (`dstack verify --url`).
#[derive(Debug, Clone)]
pub struct CertEvidence {
    /// The certificate's SubjectPublicKeyInfo (DER): what the quote's
    /// report_data must bind ([`report_data_for_spki`]).
    pub spki: Vec<u8>,
    /// The quote (`.8`, else the legacy `.1`).
    pub quote: Vec<u8>,
    /// The event log: `.8`'s stripped one (RTMR3 and RTMR0's ACPI DATA
    /// events), else the legacy `.2` full one, else empty.
    pub event_log: Vec<Event>,
    /// Whether the event log is `.8`'s stripped one (only RTMR3 replays).
    pub stripped: bool,
    /// The VM config string the attestation carried (empty if none).
    pub vm_config: String,
    /// The `.9` app info, if present (the issuer's claim, not evidence).
    pub app_info: Option<CertAppInfo>,
    /// The `.3` app id, if present.
    pub app_id: Option<Vec<u8>>,
    /// The `.4` special usage, if present.
    pub usage: Option<String>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    collateral: Option<Vec<u8>>,
}

impl CertEvidence {
    /// The collateral the certificate carries in-band, if any.
    pub fn collateral(&self) -> Result<Option<Collateral>, RaTlsError> {
        let Some(bytes) = &self.collateral else {
            return Ok(None);
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| RaTlsError::Certificate("collateral extension is not UTF-8".into()))?;
        Collateral::from_json(text)
            .map(Some)
            .map_err(|e| RaTlsError::Certificate(e.to_string()))
    }
}

/// Decodes an RA-TLS certificate's evidence without checking it. Upstream's
/// verifiers read `.8` first and fall back to `.1` plus `.2`; so does this.
pub fn decode_certificate(cert_der: &[u8]) -> Result<CertEvidence, RaTlsError> {
    let ext = read_extensions(cert_der)?;
    let (quote, event_log, vm_config, stripped) = match &ext.attestation {
        Some(bytes) => {
            let attestation = AttestationV0::from_bytes(bytes)?;
            (
                attestation.quote,
                attestation.event_log,
                attestation.config,
                true,
            )
        }
        None => {
            let quote = ext.quote.clone().ok_or(RaTlsError::MissingQuote)?;
            let event_log = match &ext.event_log {
                Some(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        RaTlsError::Certificate("event log extension is not UTF-8".into())
                    })?;
                    parse_event_log_json(text)?
                }
                None => Vec::new(),
            };
            (quote, event_log, String::new(), false)
        }
    };
    let app_info = ext
        .app_info
        .as_deref()
        .map(CertAppInfo::decode)
        .transpose()?;
    Ok(CertEvidence {
        spki: ext.spki,
        quote,
        event_log,
        stripped,
        vm_config,
        app_info,
        app_id: ext.app_id,
        usage: ext.usage.map(|u| String::from_utf8_lossy(&u).into_owned()),
        not_before: ext.not_before,
        not_after: ext.not_after,
        collateral: ext.collateral,
    })
}

impl RaTlsVerifier {
    /// A verifier checking quotes with `quotes` (its trust anchor and TCB policy).
    pub fn new(quotes: QuoteVerifier) -> Self {
        Self {
            quotes,
            collateral: None,
            policy: None,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Use this collateral for peers whose certificate carries none.
    pub fn with_collateral(mut self, collateral: Collateral) -> Self {
        self.collateral = Some(collateral);
        self
    }

    /// Run `policy` on every peer that passes the evidence checks.
    pub fn with_policy(
        mut self,
        policy: impl Fn(&VerifiedPeer) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// Check an RA-TLS certificate at `at`.
    pub fn verify_cert(&self, cert_der: &[u8], at: SystemTime) -> Result<VerifiedPeer, RaTlsError> {
        self.verify_cert_with(cert_der, at, None)
    }

    /// [`RaTlsVerifier::verify_cert`] with `collateral` for this quote (e.g.
    /// from a PCCS, for [`certificate_quote`]), taking precedence over the
    /// verifier's own.
    pub fn verify_cert_with(
        &self,
        cert_der: &[u8],
        at: SystemTime,
        collateral: Option<Collateral>,
    ) -> Result<VerifiedPeer, RaTlsError> {
        let cert = decode_certificate(cert_der)?;
        let now = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        if now < cert.not_before || now > cert.not_after {
            return Err(RaTlsError::CertificateExpired);
        }
        let collateral = match collateral {
            Some(given) => Some(given),
            None => cert.collateral()?,
        };
        let mut event_log = cert.event_log;
        let verified = self.check_evidence(
            &cert.quote,
            &mut event_log,
            cert.stripped,
            &report_data_for_spki(&cert.spki),
            collateral,
            at,
        )?;
        let peer = VerifiedPeer {
            quote: verified,
            event_log,
            vm_config: cert.vm_config,
            app_info: cert.app_info,
            app_id: cert.app_id,
            usage: cert.usage,
            cert_sha256: Sha256::digest(cert_der).into(),
        };
        if let Some(policy) = &self.policy {
            policy(&peer).map_err(RaTlsError::PolicyRejected)?;
        }
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == RECENT_PEERS {
            recent.pop_front();
        }
        recent.push_back(peer.clone());
        Ok(peer)
    }

    /// [`RaTlsVerifier::verify_attestation_with`] for evidence that must
    /// bind a key the way a certificate's does (SHA-512(`ratls-cert:` ‖
    /// `spki`)), such as a certificate signing request's.
    pub fn verify_attestation(
        &self,
        attestation: &[u8],
        spki: &[u8],
        at: SystemTime,
        collateral: Option<Collateral>,
    ) -> Result<VerifiedPeer, RaTlsError> {
        self.verify_attestation_with(attestation, &report_data_for_spki(spki), at, collateral)
    }

    /// Check a bare versioned attestation (what `Attest` returns, and what
    /// a KMS bootstrap answer carries) whose quote must bind `report_data`,
    /// at `at`, with `collateral` for its quote if given (else the
    /// verifier's own). The peer has no certificate fields; `cert_sha256`
    /// is the SHA-256 of the attestation bytes.
    pub fn verify_attestation_with(
        &self,
        attestation: &[u8],
        report_data: &[u8; 64],
        at: SystemTime,
        collateral: Option<Collateral>,
    ) -> Result<VerifiedPeer, RaTlsError> {
        let decoded = AttestationV0::from_bytes(attestation)?;
        let mut event_log = decoded.event_log;
        // A stripped attestation (as in `.8`) has no boot events besides
        // RTMR0's ACPI data; a full one (`Attest`'s) replays all four.
        let stripped = !event_log.iter().any(|e| e.imr == 1 || e.imr == 2);
        let verified = self.check_evidence(
            &decoded.quote,
            &mut event_log,
            stripped,
            report_data,
            collateral,
            at,
        )?;
        let peer = VerifiedPeer {
            quote: verified,
            event_log,
            vm_config: decoded.config,
            app_info: None,
            app_id: None,
            usage: None,
            cert_sha256: Sha256::digest(attestation).into(),
        };
        if let Some(policy) = &self.policy {
            policy(&peer).map_err(RaTlsError::PolicyRejected)?;
        }
        Ok(peer)
    }

    /// The checks every piece of evidence passes: the quote under the
    /// trust anchor and TCB policy, its report_data, and the event log
    /// replayed against its RTMRs (RTMR3 only for a stripped log).
    fn check_evidence(
        &self,
        quote: &[u8],
        event_log: &mut [Event],
        stripped: bool,
        report_data: &[u8; 64],
        collateral: Option<Collateral>,
        at: SystemTime,
    ) -> Result<VerifiedQuote, RaTlsError> {
        let collateral = match (collateral, &self.collateral) {
            (Some(given), _) => given,
            (None, Some(own)) => own.clone(),
            (None, None) => return Err(RaTlsError::MissingCollateral),
        };
        let verified = self.quotes.verify_at(quote, &collateral, at)?;
        if verified.quote.report_data() != report_data {
            return Err(RaTlsError::KeyBindingMismatch);
        }
        if let Some(td) = verified.quote.td_report() {
            verify_runtime_digests(event_log)?;
            if stripped {
                check_runtime_replay(event_log, &Rtmrs(td.rtmr))?;
            } else {
                check_replay(event_log, &Rtmrs(td.rtmr))?;
            }
        }
        Ok(verified)
    }

    /// The verified peer behind a certificate this verifier accepted recently
    /// (e.g. `conn.peer_certificates()[0]` after a handshake).
    pub fn verified_peer(&self, cert_der: &[u8]) -> Option<VerifiedPeer> {
        let hash: [u8; 32] = Sha256::digest(cert_der).into();
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().find(|p| p.cert_sha256 == hash).cloned()
    }
}

/// rustls verifiers (server side and client side) backed by an [`RaTlsVerifier`].
#[derive(Debug)]
pub struct RaTlsCertVerifier {
    inner: Arc<RaTlsVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl RaTlsCertVerifier {
    /// Wrap `inner` for use in rustls configs.
    pub fn new(inner: Arc<RaTlsVerifier>) -> Self {
        Self {
            inner,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    /// The underlying verifier, to look up verified peers after a handshake.
    pub fn verifier(&self) -> &Arc<RaTlsVerifier> {
        &self.inner
    }

    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        let at = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.inner
            .verify_cert(end_entity.as_ref(), at)
            .map(|_| ())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(e),
                )))
            })
    }
}

impl ServerCertVerifier for RaTlsCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for RaTlsCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
