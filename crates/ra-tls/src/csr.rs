//! Certificate signing requests an app sends to a KMS's `SignCert`:
//! upstream's `CertSigningRequestV2` (UPSTREAM §6), byte for byte.
//!
//! Layout (SCALE): `confirm: String` · `pubkey: Vec<u8>` (the leaf's
//! SubjectPublicKeyInfo DER) · `config` ([`CertConfigV2`]: `org_name:
//! Option<String>`, `subject: String`, `subject_alt_names: Vec<String>`,
//! `usage_server_auth`, `usage_client_auth`, `ext_quote`, `ext_app_info`:
//! bool, `not_before`, `not_after`: `Option<u64>`) · `attestation`: the
//! `VersionedAttestation` bytes with **no length prefix**, running to the end
//! of the input. The signature is ECDSA P-256 with SHA-256 (ASN.1 DER) by
//! the leaf key over those bytes, so only the holder of the key the
//! attestation binds can ask for a certificate on it.

use dstack_attest::scale::{Reader, ScaleError, Writer};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The confirm string every CSR carries: a signature over a CSR can never
/// be mistaken for a signature over anything else the key signs.
pub const CSR_CONFIRM: &str = "please sign cert:";

/// What the requested certificate should say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertConfigV2 {
    /// Organization name in the subject.
    pub org_name: Option<String>,
    /// Subject common name.
    pub subject: String,
    /// Subject alternative names (DNS names or IP addresses).
    pub subject_alt_names: Vec<String>,
    /// Allow TLS server authentication.
    pub usage_server_auth: bool,
    /// Allow TLS client authentication.
    pub usage_client_auth: bool,
    /// Carry the attestation in the certificate (`.8`): an RA-TLS certificate.
    pub ext_quote: bool,
    /// Carry the app info (`.9`).
    pub ext_app_info: bool,
    /// Validity start, Unix seconds.
    pub not_before: Option<u64>,
    /// Validity end, Unix seconds.
    pub not_after: Option<u64>,
}

/// A certificate signing request (version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSigningRequestV2 {
    /// Must be [`CSR_CONFIRM`].
    pub confirm: String,
    /// The leaf's public key (SubjectPublicKeyInfo DER).
    pub pubkey: Vec<u8>,
    /// What the certificate should say.
    pub config: CertConfigV2,
    /// The `VersionedAttestation` bytes; their quote binds `pubkey`
    /// (report_data = SHA-512("ratls-cert:" ‖ pubkey)).
    pub attestation: Vec<u8>,
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The bytes are not a CSR.
    #[error("the CSR is malformed")]
    Malformed(#[from] ScaleError),
    /// The public key is not an EC SubjectPublicKeyInfo.
    #[error("the CSR public key is not an EC SubjectPublicKeyInfo")]
    PublicKey,
    /// The signature does not verify under the CSR's public key.
    #[error("the CSR signature does not verify under its public key")]
    Signature,
    /// The confirm string is not [`CSR_CONFIRM`].
    #[error("the CSR confirm string is {found:?}, not {CSR_CONFIRM:?}")]
    Confirm {
        /// What the CSR says.
        found: String,
    },
    /// The signing key is not a P-256 key, or signing failed.
    #[error("cannot sign the CSR with a key that is not P-256")]
    SigningKey,
}

impl CertSigningRequestV2 {
    /// A request for `pubkey` (SPKI DER) with `config`, carrying `attestation`.
    pub fn new(pubkey: Vec<u8>, config: CertConfigV2, attestation: Vec<u8>) -> Self {
        Self {
            confirm: CSR_CONFIRM.to_owned(),
            pubkey,
            config,
            attestation,
        }
    }

    /// The SCALE bytes (what is signed and what `SignCert`'s `csr` carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        let c = &self.config;
        let mut w = Writer::with_capacity(256 + self.pubkey.len() + self.attestation.len());
        w.string(&self.confirm);
        w.bytes(&self.pubkey);
        w.option(c.org_name.as_deref(), Writer::string);
        w.string(&c.subject);
        w.compact(c.subject_alt_names.len());
        for name in &c.subject_alt_names {
            w.string(name);
        }
        w.bool(c.usage_server_auth);
        w.bool(c.usage_client_auth);
        w.bool(c.ext_quote);
        w.bool(c.ext_app_info);
        w.option(c.not_before, Writer::u64);
        w.option(c.not_after, Writer::u64);
        w.raw(&self.attestation);
        w.finish()
    }

    /// Decodes [`CertSigningRequestV2::to_bytes`] output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CsrError> {
        let mut r = Reader::new(bytes);
        let confirm = r.string()?;
        let pubkey = r.bytes()?.to_vec();
        let org_name = r.option(Reader::string)?;
        let subject = r.string()?;
        let n = r.compact()?;
        let mut subject_alt_names = Vec::new();
        for _ in 0..n {
            subject_alt_names.push(r.string()?);
        }
        let config = CertConfigV2 {
            org_name,
            subject,
            subject_alt_names,
            usage_server_auth: r.bool()?,
            usage_client_auth: r.bool()?,
            ext_quote: r.bool()?,
            ext_app_info: r.bool()?,
            not_before: r.option(Reader::u64)?,
            not_after: r.option(Reader::u64)?,
        };
        Ok(Self {
            confirm,
            pubkey,
            config,
            attestation: r.rest().to_vec(),
        })
    }

    /// The signature of this CSR by `key` (the leaf key, P-256): ECDSA
    /// SHA-256, ASN.1 DER.
    pub fn sign(&self, key: &KeyPair) -> Result<Vec<u8>, CsrError> {
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CsrError::SigningKey);
        }
        key.sign(&self.to_bytes()).map_err(|_| CsrError::SigningKey)
    }

    /// Checks `signature` against the CSR's own public key, then the
    /// confirm string (upstream's order).
    pub fn verify(&self, signature: &[u8]) -> Result<(), CsrError> {
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(&self.pubkey).map_err(|_| CsrError::PublicKey)?;
        if !matches!(spki.parsed(), Ok(PublicKey::EC(_))) {
            return Err(CsrError::PublicKey);
        }
        // A point on another curve fails here too: ring checks it is P-256.
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki.subject_public_key.data)
            .verify(&self.to_bytes(), signature)
            .map_err(|_| CsrError::Signature)?;
        if self.confirm != CSR_CONFIRM {
            return Err(CsrError::Confirm {
                found: self.confirm.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dstack_attest::AttestationV0;
    use rcgen::PublicKeyData;

    use super::*;

    /// An empty V0 attestation (no quote, no events, zero report data).
    fn empty_attestation(quote: Vec<u8>) -> Vec<u8> {
        AttestationV0 {
            quote,
            event_log: vec![],
            runtime_events: vec![],
            report_data: [0; 64],
            config: String::new(),
        }
        .to_bytes()
    }

    /// The SCALE bytes, spelled out field by field from the layout: the
    /// same bytes upstream's `CertSigningRequestV2::encode` gives.
    #[test]
    fn encoding_is_upstreams_scale_layout() {
        let csr = CertSigningRequestV2::new(
            vec![1, 2, 3],
            CertConfigV2 {
                subject: "test.example.com".into(),
                usage_server_auth: true,
                ..CertConfigV2::default()
            },
            empty_attestation(vec![9]),
        );
        let expected = [
            "44",                             // compact 17
            &hex::encode(CSR_CONFIRM),        // confirm
            "0c010203",                       // pubkey: compact 3, bytes
            "00",                             // org_name: None
            "40",                             // compact 16
            &hex::encode("test.example.com"), // subject
            "00",                             // no alt names
            "01000000",                       // server, client, quote, app info
            "0000",                           // not_before, not_after: None
            "0000",                           // V0, DstackTdx
            "0409",                           // quote [9]
            "0000",                           // no events, no runtime events
            &"00".repeat(64),                 // report_data
            "00",                             // config ""
        ]
        .concat();
        assert_eq!(hex::encode(csr.to_bytes()), expected);
        assert_eq!(
            CertSigningRequestV2::from_bytes(&csr.to_bytes()).unwrap(),
            csr
        );
    }

    /// A CSR encoded and signed outside Rust (Python `cryptography`, fixed
    /// P-256 scalar 0x0102..20, SCALE bytes built by hand): decoded, re-encoded
    /// and verified here.
    #[test]
    fn verifies_a_request_signed_elsewhere() {
        let spki = "3059301306072a8648ce3d020106082a8648ce3d03010703420004515c3d6eb9e396b904d3feca7f54fdcd0cc1e997bf375dca515ad0a6c3b4035f4536be3a50f318fbf9a5475902a221502bef0d57e08c53b2cc0a56f17d9f9354";
        let csr_hex = [
            "44706c65617365207369676e20636572743a6d01",
            spki,
            "011844737461636b2c6170702e6578616d706c65082c6170702e6578616d706c65",
            "2031302e302e302e31010001000100f1536500000000000000040900000000",
            &"00".repeat(62),
            "00",
        ]
        .concat();
        let signature = hex::decode(
            "30450220510ff8cbd71de78042146791cf90b5725893e1914d6a51c12bc5b934794d0553022100bff5c2cf456c9ad9d290e1109f287eb592ed2470635aa92b10fbe6f47e3eaaa2",
        )
        .unwrap();
        let bytes = hex::decode(&csr_hex).unwrap();
        let csr = CertSigningRequestV2::from_bytes(&bytes).unwrap();
        assert_eq!(csr.confirm, CSR_CONFIRM);
        assert_eq!(hex::encode(&csr.pubkey), spki);
        assert_eq!(
            csr.config,
            CertConfigV2 {
                org_name: Some("Dstack".into()),
                subject: "app.example".into(),
                subject_alt_names: vec!["app.example".into(), "10.0.0.1".into()],
                usage_server_auth: true,
                usage_client_auth: false,
                ext_quote: true,
                ext_app_info: false,
                not_before: Some(1_700_000_000),
                not_after: None,
            }
        );
        assert_eq!(csr.attestation, empty_attestation(vec![9]));
        assert_eq!(csr.to_bytes(), bytes);
        csr.verify(&signature).unwrap();
    }

    #[test]
    fn signed_requests_verify_and_tampering_is_named() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let config = CertConfigV2 {
            org_name: Some("Org".into()),
            subject: "leaf".into(),
            subject_alt_names: vec!["a.example".into()],
            usage_client_auth: true,
            ext_app_info: true,
            not_before: Some(1),
            not_after: Some(u64::MAX),
            ..CertConfigV2::default()
        };
        let csr = CertSigningRequestV2::new(
            key.subject_public_key_info(),
            config,
            empty_attestation(vec![]),
        );
        let signature = csr.sign(&key).unwrap();
        csr.verify(&signature).unwrap();
        let decoded = CertSigningRequestV2::from_bytes(&csr.to_bytes()).unwrap();
        assert_eq!(decoded, csr);
        decoded.verify(&signature).unwrap();

        let mut flipped = signature.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(csr.verify(&flipped), Err(CsrError::Signature));

        let mut changed = csr.clone();
        changed.config.subject_alt_names.push("evil.example".into());
        assert_eq!(changed.verify(&signature), Err(CsrError::Signature));

        // Another key's signature over the same bytes.
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            csr.verify(&csr.sign(&other).unwrap()),
            Err(CsrError::Signature)
        );

        // Signed, but not a signing request.
        let mut wrong = csr.clone();
        wrong.confirm = "please sign this:".into();
        let signature = wrong.sign(&key).unwrap();
        assert_eq!(
            wrong.verify(&signature),
            Err(CsrError::Confirm {
                found: "please sign this:".into()
            })
        );

        let mut not_a_key = csr.clone();
        not_a_key.pubkey = vec![0x30, 0x00];
        assert_eq!(not_a_key.verify(&signature), Err(CsrError::PublicKey));
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(csr.sign(&ed25519), Err(CsrError::SigningKey));
    }

    #[test]
    fn truncated_requests_are_malformed() {
        let csr = CertSigningRequestV2::new(
            vec![1; 91],
            CertConfigV2 {
                org_name: Some("o".into()),
                subject: "s".into(),
                not_after: Some(5),
                ..CertConfigV2::default()
            },
            Vec::new(),
        );
        let bytes = csr.to_bytes();
        assert_eq!(CertSigningRequestV2::from_bytes(&bytes).unwrap(), csr);
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    CertSigningRequestV2::from_bytes(&bytes[..cut]),
                    Err(CsrError::Malformed(_))
                ),
                "{cut}"
            );
        }
        // A bool that is neither 0 nor 1: usage_server_auth, before the
        // four flags, not_before (1 byte) and not_after (9 bytes).
        let mut bad = bytes.clone();
        let flags = bad.len() - 9 - 1 - 4;
        bad[flags] = 2;
        assert!(matches!(
            CertSigningRequestV2::from_bytes(&bad),
            Err(CsrError::Malformed(ScaleError::Tag(_)))
        ));
    }
}
