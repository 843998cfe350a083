//! The simulated attestation authority: a root CA, a PCK CA and PCK
//! certificate, a TCB-signing certificate and a quoting-enclave attestation
//! key, arranged exactly like Intel's DCAP hierarchy so that dcap-qvl verifies
//! simulated quotes with the simulated root as its only trust anchor.

use std::path::Path;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collateral::{Collateral, RawCollateral};

/// Platform identity the simulated PCK certificate and TCB info agree on.
pub(crate) const SIM_FMSPC: [u8; 6] = [0x5d, 0x57, 0x00, 0x00, 0x00, 0x00];
pub(crate) const SIM_PCE_ID: [u8; 2] = [0, 0];
pub(crate) const SIM_PCE_SVN: u16 = 13;
pub(crate) const SIM_CPU_SVN: [u8; 16] = [2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0];
/// TEE TCB SVN of the simulated TDX module: ISVSVN 5, module version 1.
pub(crate) const SIM_TEE_TCB_SVN: [u8; 16] = [5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub(crate) const SIM_QE_ISV_PROD_ID: u16 = 2;
pub(crate) const SIM_QE_ISV_SVN: u16 = 4;
pub(crate) const SIM_QE_ATTRIBUTES: [u8; 16] = [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

const SGX_EXTENSION_OID: [u64; 7] = [1, 2, 840, 113741, 1, 13, 1];
const COLLATERAL_LIFETIME_DAYS: i64 = 30;
const CERT_LIFETIME_DAYS: i64 = 365 * 25;
const STATE_VERSION: u32 = 1;

/// Why the simulated authority could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Key or certificate generation failed.
    #[error("certificate generation failed")]
    Certificate(#[from] rcgen::Error),
    /// A stored key is not a P-256 PKCS#8 key.
    #[error("stored {what} key is not a P-256 PKCS#8 key")]
    Key {
        /// Which key.
        what: &'static str,
    },
    /// The state file is not readable or not ours.
    #[error("simulated TEE state {path} is unreadable")]
    State {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file's JSON is malformed or of another version.
    #[error("simulated TEE state is malformed: {0}")]
    StateFormat(String),
}

/// Everything needed to reload the authority: keys (PKCS#8) and certificates (DER).
#[derive(Serialize, Deserialize)]
struct State {
    version: u32,
    #[serde(with = "hex::serde")]
    root_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    root_cert: Vec<u8>,
    #[serde(with = "hex::serde")]
    pck_ca_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pck_ca_cert: Vec<u8>,
    #[serde(with = "hex::serde")]
    pck_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pck_cert: Vec<u8>,
    #[serde(with = "hex::serde")]
    tcb_signer_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    tcb_signer_cert: Vec<u8>,
    #[serde(with = "hex::serde")]
    attestation_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    qe_mr_signer: Vec<u8>,
}

/// A simulated Intel provisioning hierarchy and quoting enclave.
pub struct SimAuthority {
    state: State,
}

impl std::fmt::Debug for SimAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("SimAuthority")
            .field(
                "root_sha256",
                &hex::encode(Sha256::digest(&self.state.root_cert)),
            )
            .finish_non_exhaustive()
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(
        DnType::OrganizationName,
        "dstack-rs simulated TEE (not a real TEE)",
    );
    name
}

fn ca_params(common_name: &str, not_before: DateTime<Utc>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = KeyIdMethod::Sha256;
    set_validity(&mut params, not_before);
    params
}

fn leaf_params(common_name: &str, not_before: DateTime<Utc>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    set_validity(&mut params, not_before);
    params
}

fn set_validity(params: &mut CertificateParams, not_before: DateTime<Utc>) {
    params.not_before = to_offset(not_before);
    params.not_after = to_offset(not_before + Duration::days(CERT_LIFETIME_DAYS));
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn new_key() -> Result<KeyPair, SimError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn load_key(der: &[u8], what: &'static str) -> Result<KeyPair, SimError> {
    KeyPair::try_from(der).map_err(|_| SimError::Key { what })
}

fn signing_key(der: &[u8], what: &'static str) -> Result<SigningKey, SimError> {
    SigningKey::from_pkcs8_der(der).map_err(|_| SimError::Key { what })
}

/// The Intel SGX extension of a PCK certificate: PPID, TCB (component SVNs,
/// PCE SVN, CPU SVN), PCE id, FMSPC and SGX type, as DER.
fn sgx_extension(ppid: &[u8; 16]) -> Vec<u8> {
    let oid = |last: &[u64]| {
        let mut arc = SGX_EXTENSION_OID.to_vec();
        arc.extend_from_slice(last);
        yasna::models::ObjectIdentifier::from_slice(&arc)
    };
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[1]));
                w.next().write_bytes(ppid);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[2]));
                w.next().write_sequence(|w| {
                    for (i, svn) in SIM_CPU_SVN.iter().enumerate() {
                        w.next().write_sequence(|w| {
                            w.next().write_oid(&oid(&[2, i as u64 + 1]));
                            w.next().write_u8(*svn);
                        });
                    }
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 17]));
                        w.next().write_u16(SIM_PCE_SVN);
                    });
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 18]));
                        w.next().write_bytes(&SIM_CPU_SVN);
                    });
                });
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[3]));
                w.next().write_bytes(&SIM_PCE_ID);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[4]));
                w.next().write_bytes(&SIM_FMSPC);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[5]));
                w.next().write_enum(0);
            });
        });
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl SimAuthority {
    /// Create a fresh authority with new keys.
    pub fn generate() -> Result<Self, SimError> {
        // Back-date a day so a verifier with a slightly slow clock accepts it.
        let not_before = Utc::now() - Duration::days(1);
        let root_key = new_key()?;
        let root_params = ca_params("dstack-rs Simulated TEE Root CA", not_before);
        let root_cert = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key);

        let pck_ca_key = new_key()?;
        let pck_ca_params = ca_params("dstack-rs Simulated PCK Platform CA", not_before);
        let pck_ca_cert = pck_ca_params.signed_by(&pck_ca_key, &root_issuer)?;
        let pck_ca_issuer = Issuer::from_params(&pck_ca_params, &pck_ca_key);

        let pck_key = new_key()?;
        let mut pck_params = leaf_params("dstack-rs Simulated PCK Certificate", not_before);
        let ppid: [u8; 16] = rand::random();
        pck_params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &SGX_EXTENSION_OID,
                sgx_extension(&ppid),
            ));
        let pck_cert = pck_params.signed_by(&pck_key, &pck_ca_issuer)?;

        let tcb_signer_key = new_key()?;
        let tcb_params = leaf_params("dstack-rs Simulated TCB Signing", not_before);
        let tcb_signer_cert = tcb_params.signed_by(&tcb_signer_key, &root_issuer)?;

        let attestation_key = new_key()?;
        let qe_mr_signer = Sha256::digest(root_cert.der()).to_vec();
        Ok(Self {
            state: State {
                version: STATE_VERSION,
                root_key: root_key.serialize_der(),
                root_cert: root_cert.der().to_vec(),
                pck_ca_key: pck_ca_key.serialize_der(),
                pck_ca_cert: pck_ca_cert.der().to_vec(),
                pck_key: pck_key.serialize_der(),
                pck_cert: pck_cert.der().to_vec(),
                tcb_signer_key: tcb_signer_key.serialize_der(),
                tcb_signer_cert: tcb_signer_cert.der().to_vec(),
                attestation_key: attestation_key.serialize_der(),
                qe_mr_signer,
            },
        })
    }

    /// Load an authority saved with [`SimAuthority::save`], or create and save
    /// one if `path` does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, SimError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_json(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let authority = Self::generate()?;
                authority.save(path)?;
                Ok(authority)
            }
            Err(source) => Err(SimError::State {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parse saved state.
    pub fn from_json(text: &str) -> Result<Self, SimError> {
        let state: State =
            serde_json::from_str(text).map_err(|e| SimError::StateFormat(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(SimError::StateFormat(format!(
                "version {} (expected {STATE_VERSION})",
                state.version
            )));
        }
        let authority = Self { state };
        // Fail at load time, not at the first quote, if a key is unusable.
        authority.keys()?;
        Ok(authority)
    }

    /// Save the state (private keys included) atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), SimError> {
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| SimError::StateFormat(e.to_string()))?;
        dstack_fsutil::write_atomic(path, &json, 0o600).map_err(|source| SimError::State {
            path: path.display().to_string(),
            source,
        })
    }

    /// The root certificate (DER): the trust anchor verifiers must opt into.
    pub fn root_der(&self) -> &[u8] {
        &self.state.root_cert
    }

    /// The FMSPC of the simulated platform (its PCK certificate and TCB info agree).
    pub fn fmspc(&self) -> [u8; 6] {
        SIM_FMSPC
    }

    /// The root certificate as PEM.
    pub fn root_pem(&self) -> String {
        pem(&self.state.root_cert)
    }

    fn keys(&self) -> Result<Keys, SimError> {
        Ok(Keys {
            root: load_key(&self.state.root_key, "root")?,
            pck_ca: load_key(&self.state.pck_ca_key, "PCK CA")?,
            pck: signing_key(&self.state.pck_key, "PCK")?,
            tcb_signer: signing_key(&self.state.tcb_signer_key, "TCB signer")?,
            attestation: signing_key(&self.state.attestation_key, "attestation")?,
        })
    }

    /// The PCK chain a quote carries: leaf, PCK CA, root (PEM).
    pub(crate) fn pck_chain_pem(&self) -> String {
        [
            pem(&self.state.pck_cert),
            pem(&self.state.pck_ca_cert),
            pem(&self.state.root_cert),
        ]
        .concat()
    }

    pub(crate) fn qe_mr_signer(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.state.qe_mr_signer);
        out
    }

    /// Sign `msg` with the attestation key (raw r ‖ s).
    pub(crate) fn sign_with_attestation_key(&self, msg: &[u8]) -> Result<[u8; 64], SimError> {
        let sig: Signature = self.keys()?.attestation.sign(msg);
        Ok(sig.to_bytes().into())
    }

    /// Sign `msg` with the PCK key (raw r ‖ s): this is how the QE report is certified.
    pub(crate) fn sign_with_pck_key(&self, msg: &[u8]) -> Result<[u8; 64], SimError> {
        let sig: Signature = self.keys()?.pck.sign(msg);
        Ok(sig.to_bytes().into())
    }

    /// The attestation public key as x ‖ y.
    pub(crate) fn attestation_public_key(&self) -> Result<[u8; 64], SimError> {
        let point = self
            .keys()?
            .attestation
            .verifying_key()
            .to_encoded_point(false);
        let mut out = [0u8; 64];
        out.copy_from_slice(&point.as_bytes()[1..]);
        Ok(out)
    }

    /// Collateral for TDX quotes, valid from an hour before `now` for thirty
    /// days, signed under the simulated root: TCB info, QE identity and both CRLs.
    pub fn collateral(&self, now: DateTime<Utc>) -> Result<Collateral, SimError> {
        self.collateral_for(now, false)
    }

    /// Collateral for the SGX quotes of [`SimAuthority::sgx_quote`]: dcap-qvl
    /// wants SGX TCB info (`"id": "SGX"`) and the `QE` identity for them.
    pub fn sgx_collateral(&self, now: DateTime<Utc>) -> Result<Collateral, SimError> {
        self.collateral_for(now, true)
    }

    fn collateral_for(&self, now: DateTime<Utc>, sgx: bool) -> Result<Collateral, SimError> {
        let keys = self.keys()?;
        let issued = now - Duration::hours(1);
        let next_update = issued + Duration::days(COLLATERAL_LIFETIME_DAYS);
        let (tcb_info, qe_identity) = if sgx {
            (
                self.sgx_tcb_info_json(issued, next_update),
                self.qe_identity_json(issued, next_update, "QE"),
            )
        } else {
            (
                self.tcb_info_json(issued, next_update),
                self.qe_identity_json(issued, next_update, "TD_QE"),
            )
        };
        let sign = |json: &str| -> Vec<u8> {
            let sig: Signature = keys.tcb_signer.sign(json.as_bytes());
            sig.to_bytes().to_vec()
        };
        let root_issuer =
            Issuer::from_ca_cert_der(&self.state.root_cert.as_slice().into(), &keys.root)?;
        let pck_ca_issuer =
            Issuer::from_ca_cert_der(&self.state.pck_ca_cert.as_slice().into(), &keys.pck_ca)?;
        let crl = |issuer: &Issuer<'_, &KeyPair>| -> Result<Vec<u8>, SimError> {
            let params = CertificateRevocationListParams {
                this_update: to_offset(issued),
                next_update: to_offset(next_update),
                crl_number: SerialNumber::from(issued.timestamp().unsigned_abs()),
                issuing_distribution_point: None,
                revoked_certs: vec![],
                key_identifier_method: KeyIdMethod::Sha256,
            };
            Ok(params.signed_by(issuer)?.der().to_vec())
        };
        let signer_chain = [pem(&self.state.tcb_signer_cert), pem(&self.state.root_cert)].concat();
        Ok(Collateral::from_raw(RawCollateral {
            pck_crl_issuer_chain: [pem(&self.state.pck_ca_cert), pem(&self.state.root_cert)]
                .concat(),
            root_ca_crl: crl(&root_issuer)?,
            pck_crl: crl(&pck_ca_issuer)?,
            tcb_info_issuer_chain: signer_chain.clone(),
            tcb_info_signature: sign(&tcb_info),
            tcb_info,
            qe_identity_issuer_chain: signer_chain,
            qe_identity_signature: sign(&qe_identity),
            qe_identity,
            pck_certificate_chain: None,
        }))
    }

    fn tcb_info_json(&self, issued: DateTime<Utc>, next_update: DateTime<Utc>) -> String {
        let components = |svns: &[u8]| -> Vec<serde_json::Value> {
            svns.iter()
                .map(|svn| serde_json::json!({ "svn": svn }))
                .collect()
        };
        let zeros48 = "0".repeat(96);
        let tcb_date = rfc3339(issued - Duration::days(30));
        serde_json::json!({
            "id": "TDX",
            "version": 3,
            "issueDate": rfc3339(issued),
            "nextUpdate": rfc3339(next_update),
            "fmspc": hex::encode_upper(SIM_FMSPC),
            "pceId": hex::encode_upper(SIM_PCE_ID),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tdxModule": {
                "mrsigner": zeros48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF"
            },
            "tdxModuleIdentities": [{
                "id": format!("TDX_{:02X}", SIM_TEE_TCB_SVN[1]),
                "mrsigner": zeros48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [{
                    "tcb": { "isvsvn": SIM_TEE_TCB_SVN[0] },
                    "tcbDate": tcb_date,
                    "tcbStatus": "UpToDate"
                }]
            }],
            "tcbLevels": [{
                "tcb": {
                    "sgxtcbcomponents": components(&SIM_CPU_SVN),
                    "pcesvn": SIM_PCE_SVN,
                    "tdxtcbcomponents": components(&SIM_TEE_TCB_SVN)
                },
                "tcbDate": tcb_date,
                "tcbStatus": "UpToDate"
            }]
        })
        .to_string()
    }

    /// SGX TCB info (version 3, no TDX module): the platform's one level.
    fn sgx_tcb_info_json(&self, issued: DateTime<Utc>, next_update: DateTime<Utc>) -> String {
        let components: Vec<serde_json::Value> = SIM_CPU_SVN
            .iter()
            .map(|svn| serde_json::json!({ "svn": svn }))
            .collect();
        let tcb_date = rfc3339(issued - Duration::days(30));
        serde_json::json!({
            "id": "SGX",
            "version": 3,
            "issueDate": rfc3339(issued),
            "nextUpdate": rfc3339(next_update),
            "fmspc": hex::encode_upper(SIM_FMSPC),
            "pceId": hex::encode_upper(SIM_PCE_ID),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tcbLevels": [{
                "tcb": {
                    "sgxtcbcomponents": components,
                    "pcesvn": SIM_PCE_SVN
                },
                "tcbDate": tcb_date,
                "tcbStatus": "UpToDate"
            }]
        })
        .to_string()
    }

    fn qe_identity_json(
        &self,
        issued: DateTime<Utc>,
        next_update: DateTime<Utc>,
        id: &str,
    ) -> String {
        serde_json::json!({
            "id": id,
            "version": 2,
            "issueDate": rfc3339(issued),
            "nextUpdate": rfc3339(next_update),
            "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": hex::encode_upper(SIM_QE_ATTRIBUTES),
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": hex::encode_upper(self.qe_mr_signer()),
            "isvprodid": SIM_QE_ISV_PROD_ID,
            "tcbLevels": [{
                "tcb": { "isvsvn": SIM_QE_ISV_SVN },
                "tcbDate": rfc3339(issued - Duration::days(30)),
                "tcbStatus": "UpToDate"
            }]
        })
        .to_string()
    }
}

struct Keys {
    root: KeyPair,
    pck_ca: KeyPair,
    pck: SigningKey,
    tcb_signer: SigningKey,
    attestation: SigningKey,
}
