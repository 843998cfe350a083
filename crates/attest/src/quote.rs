//! Parsing of Intel DCAP quotes: TDX v4/v5 (TD report 1.0 and 1.5) and SGX v3.
//!
//! The parser reads only what a verifier or a human needs to see and checks
//! every length before it slices, so it can be fed hostile bytes (it is
//! fuzzed). Signature checks are `verify`'s job, not this module's.

use serde::Serialize;

/// Quote header length in bytes.
pub const HEADER_LEN: usize = 48;
/// SGX enclave report length in bytes.
pub const ENCLAVE_REPORT_LEN: usize = 384;
/// TD report 1.0 length in bytes.
pub const TD_REPORT10_LEN: usize = 584;
/// TD report 1.5 length in bytes.
pub const TD_REPORT15_LEN: usize = 648;
/// TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x81;
/// TEE type of an SGX quote.
pub const TEE_TYPE_SGX: u32 = 0x00;
/// Intel's QE vendor id.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data (wraps type 5).
pub const CERT_TYPE_QE_REPORT: u16 = 6;

const BODY_TYPE_SGX: u16 = 1;
const BODY_TYPE_TD10: u16 = 2;
const BODY_TYPE_TD15: u16 = 3;
const V5_BODY_DESCRIPTOR_LEN: usize = 6;

/// Why a byte string is not a quote this parser understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuoteParseError {
    /// The input ended before a field.
    #[error("quote truncated: {field} needs {needed} bytes at offset {offset}, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The header names a version this parser does not know.
    #[error("unsupported quote version {0} (expected 3, 4 or 5)")]
    UnsupportedVersion(u16),
    /// The header names an unknown TEE type.
    #[error("unsupported TEE type {0:#x}")]
    UnsupportedTeeType(u32),
    /// A v5 quote's body descriptor names an unknown body type.
    #[error("unsupported quote body type {0}")]
    UnsupportedBodyType(u16),
    /// A v5 body descriptor's size disagrees with its type.
    #[error("quote body of type {body_type} has size {size}, expected {expected}")]
    BodySizeMismatch {
        /// The body type.
        body_type: u16,
        /// The size the descriptor states.
        size: u32,
        /// The size that type has.
        expected: usize,
    },
    /// A v4/v5 quote whose certification data is not QE report data (type 6).
    #[error("unsupported certification data type {0} (expected 6, QE report certification data)")]
    UnsupportedCertificationData(u16),
    /// Non-zero bytes follow the signature data.
    #[error("{0} trailing bytes after the quote")]
    TrailingBytes(usize),
}

/// The fixed 48-byte quote header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Quote format version (3 SGX, 4 or 5 TDX).
    pub version: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub attestation_key_type: u16,
    /// TEE type (0 SGX, 0x81 TDX).
    pub tee_type: u32,
    /// QE security version (SGX) / reserved (TDX).
    pub qe_svn: u16,
    /// PCE security version.
    pub pce_svn: u16,
    /// QE vendor id.
    #[serde(with = "hex_bytes")]
    pub qe_vendor_id: [u8; 16],
    /// Platform-defined user data.
    #[serde(with = "hex_bytes")]
    pub user_data: [u8; 20],
}

/// A TD report as it appears in a TDX quote (1.0 fields, plus the 1.5 extras).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdReport {
    /// TEE TCB security versions.
    #[serde(with = "hex_bytes")]
    pub tee_tcb_svn: [u8; 16],
    /// Measurement of the TDX module.
    #[serde(with = "hex_bytes")]
    pub mr_seam: [u8; 48],
    /// Signer of the TDX module.
    #[serde(with = "hex_bytes")]
    pub mr_signer_seam: [u8; 48],
    /// TDX module attributes.
    #[serde(with = "hex_bytes")]
    pub seam_attributes: [u8; 8],
    /// TD attributes (bit 0 = debug).
    #[serde(with = "hex_bytes")]
    pub td_attributes: [u8; 8],
    /// Extended features available mask.
    #[serde(with = "hex_bytes")]
    pub xfam: [u8; 8],
    /// Measurement of the initial TD contents (firmware).
    #[serde(with = "hex_bytes")]
    pub mr_td: [u8; 48],
    /// Software-defined configuration id.
    #[serde(with = "hex_bytes")]
    pub mr_config_id: [u8; 48],
    /// Software-defined owner id.
    #[serde(with = "hex_bytes")]
    pub mr_owner: [u8; 48],
    /// Software-defined owner configuration.
    #[serde(with = "hex_bytes")]
    pub mr_owner_config: [u8; 48],
    /// Runtime measurement registers 0..=3.
    #[serde(with = "hex_rtmrs")]
    pub rtmr: [[u8; 48]; 4],
    /// The 64 bytes the TD asked to be bound into the report.
    #[serde(with = "hex_bytes")]
    pub report_data: [u8; 64],
    /// TD report 1.5 only: second TEE TCB SVN.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_hex_bytes")]
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TD report 1.5 only: service TD measurement.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_hex_bytes")]
    pub mr_service_td: Option<[u8; 48]>,
}

impl TdReport {
    /// Whether the TD runs in debug mode (its memory is readable by the host).
    pub fn is_debug(&self) -> bool {
        self.td_attributes[0] & 0x01 != 0
    }
}

/// An SGX enclave report (the body of an SGX quote, and the QE report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnclaveReport {
    /// CPU security version.
    #[serde(with = "hex_bytes")]
    pub cpu_svn: [u8; 16],
    /// MISCSELECT.
    pub misc_select: u32,
    /// Enclave attributes (bit 1 of byte 0 = debug).
    #[serde(with = "hex_bytes")]
    pub attributes: [u8; 16],
    /// Enclave measurement.
    #[serde(with = "hex_bytes")]
    pub mr_enclave: [u8; 32],
    /// Enclave signer.
    #[serde(with = "hex_bytes")]
    pub mr_signer: [u8; 32],
    /// Product id.
    pub isv_prod_id: u16,
    /// Security version.
    pub isv_svn: u16,
    /// Report data.
    #[serde(with = "hex_bytes")]
    pub report_data: [u8; 64],
}

impl EnclaveReport {
    /// Whether the enclave is a debug enclave.
    pub fn is_debug(&self) -> bool {
        self.attributes[0] & 0x02 != 0
    }
}

/// The attested body of a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A quote holds one report and is parsed once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Report {
    /// An SGX enclave.
    Sgx(EnclaveReport),
    /// A TDX trust domain (report 1.0 or 1.5).
    Td(TdReport),
}

/// The ECDSA signature data that follows the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureData {
    /// Signature over header and body by the attestation key (r ‖ s).
    #[serde(with = "hex_bytes")]
    pub signature: [u8; 64],
    /// The attestation public key (x ‖ y).
    #[serde(with = "hex_bytes")]
    pub attestation_key: [u8; 64],
    /// The quoting enclave's report, which binds the attestation key.
    pub qe_report: EnclaveReport,
    /// Signature over the QE report by the PCK key.
    #[serde(with = "hex_bytes")]
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    #[serde(with = "hex::serde")]
    pub qe_auth_data: Vec<u8>,
    /// Innermost certification data type (5 = PCK chain).
    pub cert_type: u16,
    /// Innermost certification data (the PEM PCK chain for type 5).
    #[serde(skip)]
    pub cert_data: Vec<u8>,
}

impl SignatureData {
    /// The PCK certificate chain in PEM, when the quote carries one.
    pub fn pck_chain_pem(&self) -> Option<&str> {
        if self.cert_type != CERT_TYPE_PCK_CHAIN {
            return None;
        }
        let text = std::str::from_utf8(&self.cert_data).ok()?;
        Some(text.trim_end_matches('\0'))
    }

    /// The DER of the last certificate of the PCK chain: the root the quote
    /// claims. Only a trust decision made elsewhere makes it an anchor (a
    /// sim guest trusts the root its own TEE quotes under).
    pub fn chain_root_der(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let chain = self.pck_chain_pem()?;
        let start = chain.rfind(BEGIN)? + BEGIN.len();
        let end = start + chain[start..].find(END)?;
        let body: String = chain[start..end].split_whitespace().collect();
        base64::engine::general_purpose::STANDARD.decode(body).ok()
    }
}

/// A parsed quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// The header.
    pub header: Header,
    /// The attested report.
    pub report: Report,
    /// Signatures and certification data.
    pub signature: SignatureData,
    /// Length of the signed prefix (header and body).
    #[serde(skip)]
    pub signed_len: usize,
}

impl Quote {
    /// Parse a quote; the whole input must be one quote.
    pub fn parse(bytes: &[u8]) -> Result<Self, QuoteParseError> {
        let mut r = Reader::new(bytes);
        let header = Header {
            version: r.u16("header.version")?,
            attestation_key_type: r.u16("header.attestation_key_type")?,
            tee_type: r.u32("header.tee_type")?,
            qe_svn: r.u16("header.qe_svn")?,
            pce_svn: r.u16("header.pce_svn")?,
            qe_vendor_id: r.array("header.qe_vendor_id")?,
            user_data: r.array("header.user_data")?,
        };
        let report = match (header.version, header.tee_type) {
            (3, TEE_TYPE_SGX) | (4, TEE_TYPE_SGX) => Report::Sgx(parse_enclave_report(&mut r)?),
            (4, TEE_TYPE_TDX) => Report::Td(parse_td_report(&mut r, false)?),
            (5, TEE_TYPE_SGX | TEE_TYPE_TDX) => {
                let body_type = r.u16("body.type")?;
                let size = r.u32("body.size")?;
                let (expected, is_15) = match body_type {
                    BODY_TYPE_SGX => (ENCLAVE_REPORT_LEN, false),
                    BODY_TYPE_TD10 => (TD_REPORT10_LEN, false),
                    BODY_TYPE_TD15 => (TD_REPORT15_LEN, true),
                    other => return Err(QuoteParseError::UnsupportedBodyType(other)),
                };
                if size as usize != expected {
                    return Err(QuoteParseError::BodySizeMismatch {
                        body_type,
                        size,
                        expected,
                    });
                }
                if body_type == BODY_TYPE_SGX {
                    Report::Sgx(parse_enclave_report(&mut r)?)
                } else {
                    Report::Td(parse_td_report(&mut r, is_15)?)
                }
            }
            (3..=5, other) => return Err(QuoteParseError::UnsupportedTeeType(other)),
            (version, _) => return Err(QuoteParseError::UnsupportedVersion(version)),
        };
        let signed_len = r.offset;
        debug_assert!(
            signed_len
                == HEADER_LEN
                    + match &report {
                        Report::Sgx(_) => ENCLAVE_REPORT_LEN,
                        Report::Td(td) if td.mr_service_td.is_some() => TD_REPORT15_LEN,
                        Report::Td(_) => TD_REPORT10_LEN,
                    }
                    + if header.version == 5 {
                        V5_BODY_DESCRIPTOR_LEN
                    } else {
                        0
                    }
        );
        let sig_len = r.u32("signature_data.length")? as usize;
        let sig_bytes = r.bytes("signature_data", sig_len)?;
        // Quote buffers from some stacks are zero-padded to a fixed size;
        // anything else after the signature data is not part of a quote.
        let rest = r.bytes("padding", r.remaining())?;
        if rest.iter().any(|&b| b != 0) {
            return Err(QuoteParseError::TrailingBytes(rest.len()));
        }
        let signature = parse_signature_data(sig_bytes, header.version)?;
        Ok(Quote {
            header,
            report,
            signature,
            signed_len,
        })
    }

    /// The TD report, when this is a TDX quote.
    pub fn td_report(&self) -> Option<&TdReport> {
        match &self.report {
            Report::Td(td) => Some(td),
            Report::Sgx(_) => None,
        }
    }

    /// The report data of the attested body.
    pub fn report_data(&self) -> &[u8; 64] {
        match &self.report {
            Report::Td(td) => &td.report_data,
            Report::Sgx(sgx) => &sgx.report_data,
        }
    }
}

fn parse_enclave_report(r: &mut Reader<'_>) -> Result<EnclaveReport, QuoteParseError> {
    let cpu_svn = r.array("report.cpu_svn")?;
    let misc_select = r.u32("report.misc_select")?;
    r.skip("report.reserved1", 28)?;
    let attributes = r.array("report.attributes")?;
    let mr_enclave = r.array("report.mr_enclave")?;
    r.skip("report.reserved2", 32)?;
    let mr_signer = r.array("report.mr_signer")?;
    r.skip("report.reserved3", 96)?;
    let isv_prod_id = r.u16("report.isv_prod_id")?;
    let isv_svn = r.u16("report.isv_svn")?;
    r.skip("report.reserved4", 60)?;
    let report_data = r.array("report.report_data")?;
    Ok(EnclaveReport {
        cpu_svn,
        misc_select,
        attributes,
        mr_enclave,
        mr_signer,
        isv_prod_id,
        isv_svn,
        report_data,
    })
}

fn parse_td_report(r: &mut Reader<'_>, is_15: bool) -> Result<TdReport, QuoteParseError> {
    let mut report = TdReport {
        tee_tcb_svn: r.array("td.tee_tcb_svn")?,
        mr_seam: r.array("td.mr_seam")?,
        mr_signer_seam: r.array("td.mr_signer_seam")?,
        seam_attributes: r.array("td.seam_attributes")?,
        td_attributes: r.array("td.td_attributes")?,
        xfam: r.array("td.xfam")?,
        mr_td: r.array("td.mr_td")?,
        mr_config_id: r.array("td.mr_config_id")?,
        mr_owner: r.array("td.mr_owner")?,
        mr_owner_config: r.array("td.mr_owner_config")?,
        rtmr: [
            r.array("td.rtmr0")?,
            r.array("td.rtmr1")?,
            r.array("td.rtmr2")?,
            r.array("td.rtmr3")?,
        ],
        report_data: r.array("td.report_data")?,
        tee_tcb_svn2: None,
        mr_service_td: None,
    };
    if is_15 {
        report.tee_tcb_svn2 = Some(r.array("td.tee_tcb_svn2")?);
        report.mr_service_td = Some(r.array("td.mr_service_td")?);
    }
    Ok(report)
}

fn parse_signature_data(bytes: &[u8], version: u16) -> Result<SignatureData, QuoteParseError> {
    let mut r = Reader::new(bytes);
    let signature = r.array("signature_data.signature")?;
    let attestation_key = r.array("signature_data.attestation_key")?;
    // v4/v5 wrap the QE report in certification data of type 6; v3 inlines it.
    let mut inner_storage;
    let inner: &mut Reader<'_> = if version >= 4 {
        let cert_type = r.u16("certification_data.type")?;
        let len = r.u32("certification_data.size")? as usize;
        let body = r.bytes("certification_data", len)?;
        if cert_type != CERT_TYPE_QE_REPORT {
            return Err(QuoteParseError::UnsupportedCertificationData(cert_type));
        }
        inner_storage = Reader::new(body);
        &mut inner_storage
    } else {
        &mut r
    };
    let qe_report_bytes = inner.bytes("qe_report", ENCLAVE_REPORT_LEN)?;
    let qe_report = parse_enclave_report(&mut Reader::new(qe_report_bytes))?;
    let qe_report_signature = inner.array("qe_report_signature")?;
    let auth_len = inner.u16("qe_auth_data.size")? as usize;
    let qe_auth_data = inner.bytes("qe_auth_data", auth_len)?.to_vec();
    let cert_type = inner.u16("pck_certification_data.type")?;
    let cert_len = inner.u32("pck_certification_data.size")? as usize;
    let cert_data = inner.bytes("pck_certification_data", cert_len)?.to_vec();
    Ok(SignatureData {
        signature,
        attestation_key,
        qe_report,
        qe_report_signature,
        qe_auth_data,
        cert_type,
        cert_data,
    })
}

/// A bounds-checked little-endian cursor.
struct Reader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, offset: 0 }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.offset
    }

    fn bytes(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], QuoteParseError> {
        let out = self
            .offset
            .checked_add(len)
            .and_then(|end| self.data.get(self.offset..end))
            .ok_or(QuoteParseError::Truncated {
                field,
                offset: self.offset,
                needed: len,
                available: self.remaining(),
            })?;
        self.offset += len;
        Ok(out)
    }

    fn skip(&mut self, field: &'static str, len: usize) -> Result<(), QuoteParseError> {
        self.bytes(field, len).map(|_| ())
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], QuoteParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(field, N)?);
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, QuoteParseError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, QuoteParseError> {
        self.array(field).map(u32::from_le_bytes)
    }
}

mod hex_bytes {
    pub(super) fn serialize<S: serde::Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
}

mod opt_hex_bytes {
    pub(super) fn serialize<S: serde::Serializer, const N: usize>(
        bytes: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
}

mod hex_rtmrs {
    use serde::ser::SerializeSeq;

    pub(super) fn serialize<S: serde::Serializer>(
        rtmrs: &[[u8; 48]; 4],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(4))?;
        for r in rtmrs {
            seq.serialize_element(&hex::encode(r))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::read_testdata;

    #[test]
    fn parses_tdx_v4_sample() {
        let bytes = read_testdata("tdx_quote");
        let quote = Quote::parse(&bytes).expect("sample parses");
        assert_eq!(quote.header.version, 4);
        assert_eq!(quote.header.tee_type, TEE_TYPE_TDX);
        assert_eq!(quote.header.qe_vendor_id, INTEL_QE_VENDOR_ID);
        assert_eq!(quote.signed_len, HEADER_LEN + TD_REPORT10_LEN);
        let td = quote.td_report().expect("TD report");
        assert!(td.mr_service_td.is_none());
        assert!(!td.is_debug());
        // The signed region plus the 4-byte length and signature data is the
        // whole quote, up to the sample's zero padding.
        let sig_len = u32::from_le_bytes(
            bytes[quote.signed_len..quote.signed_len + 4]
                .try_into()
                .unwrap(),
        ) as usize;
        let end = quote.signed_len + 4 + sig_len;
        assert!(end <= bytes.len());
        assert!(bytes[end..].iter().all(|&b| b == 0));
        let pem = quote.signature.pck_chain_pem().expect("PCK chain");
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 3);
        assert_eq!(quote.signature.qe_auth_data.len(), 32);
        // The MRTD read at its fixed offset agrees with the parsed field.
        let mrtd_offset = HEADER_LEN + 16 + 48 + 48 + 8 + 8 + 8;
        assert_eq!(&bytes[mrtd_offset..mrtd_offset + 48], &td.mr_td);
        let rd_offset = HEADER_LEN + TD_REPORT10_LEN - 64;
        assert_eq!(&bytes[rd_offset..rd_offset + 64], quote.report_data());
    }

    #[test]
    fn parses_sgx_v3_sample() {
        let bytes = read_testdata("sgx_quote");
        let quote = Quote::parse(&bytes).expect("sample parses");
        assert_eq!(quote.header.version, 3);
        assert!(matches!(quote.report, Report::Sgx(_)));
        assert!(quote.td_report().is_none());
        assert_eq!(quote.signed_len, HEADER_LEN + ENCLAVE_REPORT_LEN);
    }

    #[test]
    fn v5_quote_with_td15_body_parses() {
        let v4 = read_testdata("tdx_quote");
        // Build a v5 quote by hand from the v4 sample: header, body descriptor,
        // the TD 1.0 body extended with the 1.5 fields, then the signature data.
        let mut v5 = Vec::new();
        v5.extend_from_slice(&5u16.to_le_bytes());
        v5.extend_from_slice(&v4[2..HEADER_LEN]);
        v5.extend_from_slice(&BODY_TYPE_TD15.to_le_bytes());
        v5.extend_from_slice(&u32::try_from(TD_REPORT15_LEN).unwrap().to_le_bytes());
        v5.extend_from_slice(&v4[HEADER_LEN..HEADER_LEN + TD_REPORT10_LEN]);
        v5.extend_from_slice(&[0x11; 16]);
        v5.extend_from_slice(&[0x22; 48]);
        v5.extend_from_slice(&v4[HEADER_LEN + TD_REPORT10_LEN..]);
        let quote = Quote::parse(&v5).expect("v5 parses");
        let td = quote.td_report().unwrap();
        assert_eq!(td.tee_tcb_svn2, Some([0x11; 16]));
        assert_eq!(td.mr_service_td, Some([0x22; 48]));
        assert_eq!(
            quote.signed_len,
            HEADER_LEN + V5_BODY_DESCRIPTOR_LEN + TD_REPORT15_LEN
        );
        let v4_parsed = Quote::parse(&v4).unwrap();
        assert_eq!(td.rtmr, v4_parsed.td_report().unwrap().rtmr);
    }

    /// Where the sample's quote ends and its zero padding begins.
    fn quote_end(bytes: &[u8]) -> usize {
        let quote = Quote::parse(bytes).unwrap();
        let len_field = &bytes[quote.signed_len..quote.signed_len + 4];
        quote.signed_len + 4 + u32::from_le_bytes(len_field.try_into().unwrap()) as usize
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = read_testdata("tdx_quote");
        let end = quote_end(&bytes);
        assert!(Quote::parse(&bytes[..end]).is_ok());
        for len in 0..end {
            assert!(Quote::parse(&bytes[..len]).is_err(), "prefix {len} parsed");
        }
    }

    #[test]
    fn names_bad_version_and_trailing_bytes() {
        let mut bytes = read_testdata("tdx_quote");
        // The sample is zero-padded; padding is fine, other trailing bytes are not.
        let padding = bytes.len() - quote_end(&bytes);
        assert!(padding > 0);
        bytes.push(1);
        assert_eq!(
            Quote::parse(&bytes),
            Err(QuoteParseError::TrailingBytes(padding + 1))
        );
        bytes.pop();
        bytes[0] = 9;
        assert_eq!(
            Quote::parse(&bytes),
            Err(QuoteParseError::UnsupportedVersion(9))
        );
    }
}
