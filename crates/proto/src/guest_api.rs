//! The guest API apps call on `/var/run/dstack.sock` (service `DstackGuest`,
//! paths `/<Method>`) and the legacy `tappd.sock` (service `Tappd`, paths
//! `/prpc/Tappd.<Method>`), as upstream dstack's pRPC JSON mapping writes
//! them (UPSTREAM.md §1): field names are the proto names, every field may
//! be missing (zero, empty or false), and `bytes` are lowercase hex without
//! `0x` on output, with a `0x` prefix accepted on input.
//!
//! | Path | Request | Response |
//! |---|---|---|
//! | `/GetKey` | [`GetKeyArgs`] | [`GetKeyResponse`] |
//! | `/GetQuote` | [`RawQuoteArgs`] | [`GetQuoteResponse`] |
//! | `/Attest` | [`RawQuoteArgs`] | [`AttestResponse`] |
//! | `/GetTlsKey` | [`GetTlsKeyArgs`] | [`GetTlsKeyResponse`] |
//! | `/Info` | `{}` | [`AppInfo`] |
//! | `/Version` | `{}` | [`WorkerVersion`] |
//! | `/GpuInfo` | `{}` | [`GpuInfoResponse`] |
//! | `/Sign` | [`SignRequest`] | [`SignResponse`] |
//! | `/Verify` | [`VerifyRequest`] | [`VerifyResponse`] |
//! | `/EmitEvent` | [`EmitEventArgs`] | `{}` |
//! | tappd `DeriveKey` | [`DeriveKeyArgs`] | [`GetTlsKeyResponse`] |
//! | tappd `DeriveK256Key` | [`GetKeyArgs`] | [`DeriveK256KeyResponse`] |
//! | tappd `TdxQuote` | [`TdxQuoteArgs`] | [`TdxQuoteResponse`] |
//! | tappd `RawQuote` | [`RawQuoteArgs`] | [`TdxQuoteResponse`] |
//! | tappd `Info`, `Version` | `{}` | as above |

use serde::{Deserialize, Serialize};

/// GetKey (and tappd DeriveK256Key) arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetKeyArgs {
    /// Derivation path.
    pub path: String,
    /// Purpose, signed together with the public key.
    pub purpose: String,
    /// `secp256k1` (default, also empty), `k256` or `ed25519`.
    pub algorithm: String,
}

/// GetKey response.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetKeyResponse {
    /// The 32-byte private key.
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    /// `[app signature, KMS signature]`.
    #[serde(with = "hex_list")]
    pub signature_chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for GetKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetKeyResponse")
            .field("signature_chain", &self.signature_chain)
            .finish_non_exhaustive()
    }
}

/// tappd DeriveK256Key response (GetKey under other names).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeriveK256KeyResponse {
    /// The 32-byte private key.
    #[serde(with = "hex_bytes")]
    pub k256_key: Vec<u8>,
    /// `[app signature, KMS signature]`.
    #[serde(with = "hex_list")]
    pub k256_signature_chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DeriveK256KeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeriveK256KeyResponse")
            .field("k256_signature_chain", &self.k256_signature_chain)
            .finish_non_exhaustive()
    }
}

/// GetQuote / Attest / tappd RawQuote arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawQuoteArgs {
    /// At most 64 bytes (exactly 64 for tappd RawQuote); right-padded with zeros.
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
}

/// GetQuote response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetQuoteResponse {
    /// The TDX quote.
    #[serde(with = "hex_bytes")]
    pub quote: Vec<u8>,
    /// The event log, a JSON array of events, as a string.
    pub event_log: String,
    /// The 64 bytes of report_data quoted.
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// The VM config JSON string.
    pub vm_config: String,
}

/// Attest response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttestResponse {
    /// The `VersionedAttestation` bytes.
    #[serde(with = "hex_bytes")]
    pub attestation: Vec<u8>,
}

/// GetTlsKey arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetTlsKeyArgs {
    /// Subject common name.
    pub subject: String,
    /// DNS (or IP) subject alternative names.
    pub alt_names: Vec<String>,
    /// Put the quote and event log into the certificate.
    pub usage_ra_tls: bool,
    /// Allow TLS server authentication.
    pub usage_server_auth: bool,
    /// Allow TLS client authentication.
    pub usage_client_auth: bool,
    /// Validity start, Unix seconds.
    pub not_before: Option<u64>,
    /// Validity end, Unix seconds.
    pub not_after: Option<u64>,
    /// Put the app info into the certificate.
    pub with_app_info: bool,
}

/// tappd DeriveKey arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeriveKeyArgs {
    /// Derivation path (ignored with `random_seed`).
    pub path: String,
    /// Subject common name.
    pub subject: String,
    /// DNS (or IP) subject alternative names.
    pub alt_names: Vec<String>,
    /// Put the quote and event log into the certificate.
    pub usage_ra_tls: bool,
    /// Allow TLS server authentication.
    pub usage_server_auth: bool,
    /// Allow TLS client authentication.
    pub usage_client_auth: bool,
    /// Derive from a fresh random seed instead of the app key.
    pub random_seed: bool,
}

/// GetTlsKey / tappd DeriveKey response.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetTlsKeyResponse {
    /// The private key, PKCS#8 PEM.
    pub key: String,
    /// PEM certificates, leaf first.
    pub certificate_chain: Vec<String>,
}

impl std::fmt::Debug for GetTlsKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetTlsKeyResponse")
            .field("certificate_chain", &self.certificate_chain)
            .finish_non_exhaustive()
    }
}

/// tappd TdxQuote arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TdxQuoteArgs {
    /// The content to hash into report_data (or report_data itself for `raw`).
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// `sha512` (default), `sha256`, `sha384`, `sha3-*`, `keccak*` or `raw`.
    pub hash_algorithm: String,
    /// The tag hashed before `:`; default `app-data`.
    pub prefix: String,
}

/// tappd TdxQuote / RawQuote response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TdxQuoteResponse {
    /// The TDX quote.
    #[serde(with = "hex_bytes")]
    pub quote: Vec<u8>,
    /// The event log JSON string.
    pub event_log: String,
    /// The hash algorithm used.
    pub hash_algorithm: String,
    /// The tag used (empty for `raw`).
    pub prefix: String,
}

/// Info response (proto `AppInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppInfo {
    /// App id (20 bytes).
    #[serde(with = "hex_bytes")]
    pub app_id: Vec<u8>,
    /// Instance id (20 bytes, or empty).
    #[serde(with = "hex_bytes")]
    pub instance_id: Vec<u8>,
    /// A demo certificate (PEM) or empty.
    pub app_cert: String,
    /// The TCB info JSON, as a string.
    pub tcb_info: String,
    /// The app's name from app-compose.
    pub app_name: String,
    /// Device id.
    #[serde(with = "hex_bytes")]
    pub device_id: Vec<u8>,
    /// Aggregated measurement.
    #[serde(with = "hex_bytes")]
    pub mr_aggregated: Vec<u8>,
    /// OS image hash.
    #[serde(with = "hex_bytes")]
    pub os_image_hash: Vec<u8>,
    /// The `key-provider` event payload as a string.
    pub key_provider_info: String,
    /// SHA-256 of app-compose.json.
    #[serde(with = "hex_bytes")]
    pub compose_hash: Vec<u8>,
    /// VM config JSON string.
    pub vm_config: String,
    /// DMI system vendor.
    pub cloud_vendor: String,
    /// DMI product name.
    pub cloud_product: String,
}

/// Version response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerVersion {
    /// Version of the guest agent.
    pub version: String,
    /// Source revision.
    pub rev: String,
}

/// GpuInfo response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuInfoResponse {
    /// The GPU attestation report, empty without a GPU.
    pub attestation: String,
}

/// Sign arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignRequest {
    /// `ed25519`, `secp256k1` or `secp256k1_prehashed`.
    pub algorithm: String,
    /// The data (a 32-byte digest for `secp256k1_prehashed`).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

/// Sign response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignResponse {
    /// The signature.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// `[signature, app signature over the signing key, KMS signature]`.
    #[serde(with = "hex_list")]
    pub signature_chain: Vec<Vec<u8>>,
    /// The signing public key.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
}

/// Verify arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    /// As for [`SignRequest`].
    pub algorithm: String,
    /// The signed data.
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// The signature.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// The public key.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
}

/// Verify response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyResponse {
    /// Whether the signature is valid.
    pub valid: bool,
}

/// EmitEvent arguments (dstack v0.5.x; removed upstream later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmitEventArgs {
    /// Event name.
    pub event: String,
    /// Event payload.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// The body of an empty response, `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

fn decode_hex<E: serde::de::Error>(text: &str) -> Result<Vec<u8>, E> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    hex::decode(digits).map_err(|e| E::custom(format!("invalid hex: {e}")))
}

/// Bytes as lowercase hex; `0x` accepted on input; `null` means empty.
pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::decode_hex(&text),
            None => Ok(Vec::new()),
        }
    }
}

/// A list of byte strings, each as [`hex_bytes`].
mod hex_list {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for item in list {
            seq.serialize_element(&hex::encode(item))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .unwrap_or_default()
            .iter()
            .map(|t| super::decode_hex(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_lowercase_hex_and_0x_is_accepted() {
        let args: RawQuoteArgs = serde_json::from_str(r#"{"report_data":"0xABcd"}"#).unwrap();
        assert_eq!(args.report_data, vec![0xab, 0xcd]);
        let json = serde_json::to_string(&args).unwrap();
        assert_eq!(json, r#"{"report_data":"abcd"}"#);
        let bad = serde_json::from_str::<RawQuoteArgs>(r#"{"report_data":"zz"}"#).unwrap_err();
        assert!(bad.to_string().contains("invalid hex"), "{bad}");
    }

    #[test]
    fn missing_and_null_fields_are_defaults() {
        let args: GetTlsKeyArgs = serde_json::from_str("{}").unwrap();
        assert_eq!(args, GetTlsKeyArgs::default());
        let args: SignRequest = serde_json::from_str(r#"{"data":null}"#).unwrap();
        assert!(args.data.is_empty());
        let args: GetTlsKeyArgs =
            serde_json::from_str(r#"{"alt_names":["a"],"not_after":5,"usage_ra_tls":true}"#)
                .unwrap();
        assert_eq!(args.alt_names, vec!["a"]);
        assert_eq!(args.not_after, Some(5));
        assert!(args.usage_ra_tls);
    }

    #[test]
    fn field_names_are_upstreams() {
        let response = SignResponse {
            signature: vec![1],
            signature_chain: vec![vec![1], vec![]],
            public_key: vec![2],
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"signature":"01","signature_chain":["01",""],"public_key":"02"}"#
        );
        let info = serde_json::to_value(AppInfo::default()).unwrap();
        let mut keys: Vec<_> = info.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "app_cert",
                "app_id",
                "app_name",
                "cloud_product",
                "cloud_vendor",
                "compose_hash",
                "device_id",
                "instance_id",
                "key_provider_info",
                "mr_aggregated",
                "os_image_hash",
                "tcb_info",
                "vm_config"
            ]
        );
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
    }

    #[test]
    fn debug_hides_private_keys() {
        let response = GetKeyResponse {
            key: vec![0xee; 32],
            signature_chain: vec![],
        };
        assert!(!format!("{response:?}").contains("238"));
    }
}
