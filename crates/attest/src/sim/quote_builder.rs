//! Assembles TDX v4 quotes for a simulated TD: the byte layout of a real
//! quote, signed by the simulated quoting enclave.

use sha2::{Digest, Sha256};

use super::authority::{
    SIM_CPU_SVN, SIM_PCE_SVN, SIM_QE_ATTRIBUTES, SIM_QE_ISV_PROD_ID, SIM_QE_ISV_SVN,
    SIM_TEE_TCB_SVN, SimAuthority, SimError,
};
use crate::quote::{
    CERT_TYPE_PCK_CHAIN, CERT_TYPE_QE_REPORT, INTEL_QE_VENDOR_ID, TEE_TYPE_SGX, TEE_TYPE_TDX,
};
use crate::rtmr::Measurement;

/// TD attributes of a production TD: SEPT_VE_DISABLE (bit 28) set, debug clear.
pub const TD_ATTRIBUTES_PRODUCTION: [u8; 8] = [0, 0, 0, 0x10, 0, 0, 0, 0];
/// XFAM of a typical TD (x87, SSE, AVX, AVX-512 state, PK, ...).
pub const XFAM_DEFAULT: [u8; 8] = [0xe7, 0x02, 0x06, 0, 0, 0, 0, 0];

/// The measured identity of a simulated TD: what its TD report states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimTdIdentity {
    /// MRTD (firmware measurement).
    pub mr_td: Measurement,
    /// RTMR0..=3.
    pub rtmr: [Measurement; 4],
    /// MRCONFIGID set by the host at launch.
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// TD attributes; debug TDs set bit 0.
    pub td_attributes: [u8; 8],
}

impl Default for SimTdIdentity {
    fn default() -> Self {
        Self {
            mr_td: [0; 48],
            rtmr: [[0; 48]; 4],
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            td_attributes: TD_ATTRIBUTES_PRODUCTION,
        }
    }
}

/// SGX enclave attributes of a production 64-bit enclave: INIT and MODE64, debug clear.
pub const ENCLAVE_ATTRIBUTES_PRODUCTION: [u8; 16] =
    [0x05, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0];

/// The measured identity of a simulated SGX enclave: what its report states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEnclaveIdentity {
    /// MRENCLAVE.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER.
    pub mr_signer: [u8; 32],
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
}

impl SimAuthority {
    /// A TDX v4 quote of `td` binding `report_data`, signed like a real one.
    pub fn quote(&self, td: &SimTdIdentity, report_data: &[u8; 64]) -> Result<Vec<u8>, SimError> {
        let mut signed = self.header(4, TEE_TYPE_TDX);
        // TD report 1.0.
        signed.extend_from_slice(&SIM_TEE_TCB_SVN);
        signed.extend_from_slice(&[0u8; 48]); // MRSEAM
        signed.extend_from_slice(&[0u8; 48]); // MRSIGNERSEAM (Intel-signed modules: zero)
        signed.extend_from_slice(&[0u8; 8]); // SEAM attributes
        signed.extend_from_slice(&td.td_attributes);
        signed.extend_from_slice(&XFAM_DEFAULT);
        signed.extend_from_slice(&td.mr_td);
        signed.extend_from_slice(&td.mr_config_id);
        signed.extend_from_slice(&td.mr_owner);
        signed.extend_from_slice(&td.mr_owner_config);
        for rtmr in &td.rtmr {
            signed.extend_from_slice(rtmr);
        }
        signed.extend_from_slice(report_data);
        self.sign_quote(signed)
    }

    /// An SGX v3 quote of `enclave` binding `report_data`, signed by the same
    /// simulated quoting enclave and PCK as the TDX quotes; verify it with
    /// [`SimAuthority::sgx_collateral`].
    pub fn sgx_quote(
        &self,
        enclave: &SimEnclaveIdentity,
        report_data: &[u8; 64],
    ) -> Result<Vec<u8>, SimError> {
        let mut signed = self.header(3, TEE_TYPE_SGX);
        signed.extend_from_slice(&enclave_report(&EnclaveFields {
            attributes: &ENCLAVE_ATTRIBUTES_PRODUCTION,
            mr_enclave: &enclave.mr_enclave,
            mr_signer: &enclave.mr_signer,
            isv_prod_id: enclave.isv_prod_id,
            isv_svn: enclave.isv_svn,
            report_data,
        }));
        self.sign_quote(signed)
    }

    /// The 48-byte quote header.
    fn header(&self, version: u16, tee_type: u32) -> Vec<u8> {
        let mut header = Vec::with_capacity(48 + 584);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes()); // ECDSA P-256
        header.extend_from_slice(&tee_type.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // reserved (QE SVN in v3)
        header.extend_from_slice(&SIM_PCE_SVN.to_le_bytes());
        header.extend_from_slice(&INTEL_QE_VENDOR_ID);
        let mut user_data = [0u8; 20];
        user_data[..16].copy_from_slice(&Sha256::digest(self.root_der())[..16]);
        header.extend_from_slice(&user_data);
        header
    }

    /// Appends the signature data to header ‖ report: the attestation key's
    /// signature, the QE report certifying that key, and the PCK chain.
    fn sign_quote(&self, signed: Vec<u8>) -> Result<Vec<u8>, SimError> {
        let signature = self.sign_with_attestation_key(&signed)?;
        let attestation_key = self.attestation_public_key()?;
        // The QE report binds the attestation key: its report data starts with
        // SHA-256(attestation key ‖ QE authentication data).
        const QE_AUTH_DATA_LEN: u16 = 32;
        let qe_auth_data = [0u8; QE_AUTH_DATA_LEN as usize];
        let mut qe_report_data = [0u8; 64];
        let binding = Sha256::new()
            .chain_update(attestation_key)
            .chain_update(qe_auth_data)
            .finalize();
        qe_report_data[..32].copy_from_slice(&binding);
        let qe_report = self.qe_report(&qe_report_data);
        let qe_report_signature = self.sign_with_pck_key(&qe_report)?;
        let chain = self.pck_chain_pem();

        let mut qe_cert_data = Vec::new();
        qe_cert_data.extend_from_slice(&qe_report);
        qe_cert_data.extend_from_slice(&qe_report_signature);
        qe_cert_data.extend_from_slice(&QE_AUTH_DATA_LEN.to_le_bytes());
        qe_cert_data.extend_from_slice(&qe_auth_data);
        qe_cert_data.extend_from_slice(&CERT_TYPE_PCK_CHAIN.to_le_bytes());
        qe_cert_data.extend_from_slice(&len_u32(chain.len()).to_le_bytes());
        qe_cert_data.extend_from_slice(chain.as_bytes());

        let mut sig_data = Vec::new();
        sig_data.extend_from_slice(&signature);
        sig_data.extend_from_slice(&attestation_key);
        // v4 wraps the QE report data as certification data of type 6; v3
        // carries it bare.
        if signed[..2] != 3u16.to_le_bytes() {
            sig_data.extend_from_slice(&CERT_TYPE_QE_REPORT.to_le_bytes());
            sig_data.extend_from_slice(&len_u32(qe_cert_data.len()).to_le_bytes());
        }
        sig_data.extend_from_slice(&qe_cert_data);

        let mut quote = signed;
        quote.extend_from_slice(&len_u32(sig_data.len()).to_le_bytes());
        quote.extend_from_slice(&sig_data);
        Ok(quote)
    }

    /// The simulated quoting enclave's SGX report (384 bytes).
    fn qe_report(&self, report_data: &[u8; 64]) -> Vec<u8> {
        enclave_report(&EnclaveFields {
            attributes: &SIM_QE_ATTRIBUTES,
            mr_enclave: &Sha256::digest(b"dstack-rs simulated quoting enclave").into(),
            mr_signer: &self.qe_mr_signer(),
            isv_prod_id: SIM_QE_ISV_PROD_ID,
            isv_svn: SIM_QE_ISV_SVN,
            report_data,
        })
    }
}

struct EnclaveFields<'a> {
    attributes: &'a [u8; 16],
    mr_enclave: &'a [u8; 32],
    mr_signer: &'a [u8; 32],
    isv_prod_id: u16,
    isv_svn: u16,
    report_data: &'a [u8; 64],
}

/// An SGX enclave report body (384 bytes) on the simulated CPU.
fn enclave_report(f: &EnclaveFields<'_>) -> Vec<u8> {
    let mut r = Vec::with_capacity(384);
    r.extend_from_slice(&SIM_CPU_SVN);
    r.extend_from_slice(&0u32.to_le_bytes()); // MISCSELECT
    r.extend_from_slice(&[0u8; 28]);
    r.extend_from_slice(f.attributes);
    r.extend_from_slice(f.mr_enclave);
    r.extend_from_slice(&[0u8; 32]);
    r.extend_from_slice(f.mr_signer);
    r.extend_from_slice(&[0u8; 96]);
    r.extend_from_slice(&f.isv_prod_id.to_le_bytes());
    r.extend_from_slice(&f.isv_svn.to_le_bytes());
    r.extend_from_slice(&[0u8; 60]);
    r.extend_from_slice(f.report_data);
    r
}

/// Lengths here are of a few kilobytes of certificates; saturate rather than wrap.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
