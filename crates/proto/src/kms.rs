//! The KMS API (UPSTREAM §7): upstream's pRPC names, paths and JSON shapes,
//! so tools that call a dstack KMS work against ours. Methods are served at
//! `/prpc/KMS.<Method>` and `/prpc/<Method>` (JSON with `?json`, or GET with
//! a query string); bytes are lowercase hex; errors are HTTP 400
//! `{"error": ..}`. The onboarding service is at `/prpc/Onboard.<Method>`.
//! The auth webhook (`/bootAuth/app`, `/bootAuth/kms`) takes [`BootInfo`].

use serde::{Deserialize, Serialize};

use crate::guest_api::hex_bytes;

/// The special usage (RA-TLS OID .4) of a KMS RPC certificate; guests
/// refuse a KMS server certificate without it.
pub const RPC_CERT_USAGE: &str = "kms:rpc";

/// `GetAppKey` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetAppKeyRequest {
    /// Must be 1 (or 0, read as 1).
    pub api_version: u32,
    /// The caller's VM config JSON string (carries `os_image_hash`).
    pub vm_config: String,
}

/// `GetAppKey` answer: the app's keys.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppKeyResponse {
    /// The KMS root CA certificate (PEM).
    pub ca_cert: String,
    /// Disk key; the guest's LUKS passphrase is its hex.
    #[serde(with = "hex_bytes")]
    pub disk_crypt_key: Vec<u8>,
    /// Raw X25519 env-decryption secret.
    #[serde(with = "hex_bytes")]
    pub env_crypt_key: Vec<u8>,
    /// The app's secp256k1 key.
    #[serde(with = "hex_bytes")]
    pub k256_key: Vec<u8>,
    /// The KMS root k256 key's signature over the app's k256 public key.
    #[serde(with = "hex_bytes")]
    pub k256_signature: Vec<u8>,
    /// Legacy name of `gateway_app_id` (same value).
    pub tproxy_app_id: String,
    /// The gateway app the auth backend names.
    pub gateway_app_id: String,
    /// The OS image hash the KMS saw (the guest measures it as `os-image-hash`).
    #[serde(with = "hex_bytes")]
    pub os_image_hash: Vec<u8>,
}

impl std::fmt::Debug for AppKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeyResponse")
            .field("gateway_app_id", &self.gateway_app_id)
            .field("os_image_hash", &hex::encode(&self.os_image_hash))
            .finish_non_exhaustive()
    }
}

/// `GetAppEnvEncryptPubKey` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppId {
    /// The 20-byte app id.
    #[serde(with = "hex_bytes")]
    pub app_id: Vec<u8>,
}

/// `GetAppEnvEncryptPubKey` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PublicKeyResponse {
    /// X25519 public key.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// Legacy signature (no timestamp).
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// Unix seconds covered by `signature_v1`.
    pub timestamp: u64,
    /// Signature with the timestamp.
    #[serde(with = "hex_bytes")]
    pub signature_v1: Vec<u8>,
}

/// `GetMeta` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetMetaResponse {
    /// The KMS root CA certificate (PEM).
    pub ca_cert: String,
    /// Whether any upgrade is allowed (a dev policy).
    pub allow_any_upgrade: bool,
    /// Compressed SEC1 root k256 public key.
    #[serde(with = "hex_bytes")]
    pub k256_pubkey: Vec<u8>,
    /// What bootstrap attested, if this node bootstrapped.
    pub bootstrap_info: Option<BootstrapResponse>,
    /// Whether the KMS runs with a development policy.
    pub is_dev: bool,
    /// The gateway app id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_app_id: Option<String>,
    /// The KmsAuth contract, with the on-chain backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_contract_address: Option<String>,
    /// The chain id, with the on-chain backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// The AppAuth implementation, with the on-chain backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_auth_implementation: Option<String>,
}

/// `GetTempCaCert` answer: the CA that signs callers' RA-TLS client
/// certificates. Its key is public by design: holding it grants nothing,
/// since every key release checks the quote in the client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetTempCaCertResponse {
    /// Temporary CA certificate (PEM).
    pub temp_ca_cert: String,
    /// Temporary CA private key (PKCS#8 PEM).
    pub temp_ca_key: String,
    /// The KMS root CA certificate (PEM).
    pub ca_cert: String,
}

/// `SignCert` arguments: a certificate signing request (upstream's
/// `CertSigningRequestV2` SCALE bytes, `dstack_ra_tls::CertSigningRequestV2`)
/// and the leaf key's signature over it. No client certificate is needed:
/// the CSR carries its own attestation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignCertRequest {
    /// Must be 2 (the CSR version).
    pub api_version: u32,
    /// The CSR bytes.
    #[serde(with = "hex_bytes")]
    pub csr: Vec<u8>,
    /// ECDSA P-256 SHA-256 (ASN.1 DER) signature over `csr` by the leaf key.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// The caller's VM config JSON string (carries `os_image_hash`).
    pub vm_config: String,
}

/// `SignCert` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignCertResponse {
    /// PEM certificates: `[leaf, app CA, KMS root CA]`.
    pub certificate_chain: Vec<String>,
}

/// `GetKmsKey` arguments (a replica asking for the root keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetKmsKeyRequest {
    /// The replica's VM config JSON string.
    pub vm_config: String,
}

/// `GetKmsKey` answer: the root keys, for an authorised replica only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KmsKeyResponse {
    /// Temporary CA key (PKCS#8 PEM).
    pub temp_ca_key: String,
    /// The root keys (one set).
    pub keys: Vec<KmsKeys>,
}

impl std::fmt::Debug for KmsKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeyResponse")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// One set of KMS root keys. `Debug` shows no secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KmsKeys {
    /// Root CA key (PKCS#8 PEM).
    pub ca_key: String,
    /// Root secp256k1 key.
    #[serde(with = "hex_bytes")]
    pub k256_key: Vec<u8>,
}

impl std::fmt::Debug for KmsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeys").finish_non_exhaustive()
    }
}

/// `Onboard.Bootstrap` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapRequest {
    /// The DNS name the KMS RPC certificate is issued for.
    pub domain: String,
}

/// `Onboard.Bootstrap` answer: the new root public keys and the quote that
/// binds them (report_data = Keccak256("dstack-kms-genereted-keys-v1:" hex(ca) ";" hex(k256) ";")).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootstrapResponse {
    /// Root CA public key (SubjectPublicKeyInfo DER).
    #[serde(with = "hex_bytes")]
    pub ca_pubkey: Vec<u8>,
    /// Compressed SEC1 root k256 public key.
    #[serde(with = "hex_bytes")]
    pub k256_pubkey: Vec<u8>,
    /// The attestation (V0 bytes) over the two public keys.
    #[serde(with = "hex_bytes")]
    pub attestation: Vec<u8>,
}

/// `Onboard.Onboard` arguments: copy the root keys from a running KMS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnboardRequest {
    /// The source KMS's URL.
    pub source_url: String,
    /// The DNS name of this node's RPC certificate.
    pub domain: String,
}

/// `Onboard.Onboard` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnboardResponse {
    /// The (shared) root k256 public key.
    #[serde(with = "hex_bytes")]
    pub k256_pubkey: Vec<u8>,
}

/// `Onboard.GetImportKey` answer (a dstack-rs addition to upstream's
/// onboarding): a fresh X25519 key held only in the onboarding KMS's memory,
/// and its attestation over it (report_data = SHA-512(`dstack-kms-import-key:`
/// ‖ public_key)), so an operator seals existing root keys to this CVM alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportKeyResponse {
    /// The X25519 public key.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    /// The attestation (V0 bytes) binding it.
    #[serde(with = "hex_bytes")]
    pub attestation: Vec<u8>,
}

/// `Onboard.Import` arguments: [`ImportedKeys`] as JSON in a libsodium
/// sealed box to the [`ImportKeyResponse`] key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportRequest {
    /// The sealed box.
    #[serde(with = "hex_bytes")]
    pub sealed_keys: Vec<u8>,
}

/// What an upstream KMS keeps in its cert dir, as `Onboard.Import` carries it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedKeys {
    /// `root-ca.key`: PKCS#8 PEM.
    pub root_ca_key: String,
    /// `root-k256.key`: 32 raw bytes.
    #[serde(with = "hex_bytes")]
    pub root_k256_key: Vec<u8>,
    /// `tmp-ca.key`: PKCS#8 PEM.
    pub temp_ca_key: String,
}

impl std::fmt::Debug for ImportedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedKeys").finish_non_exhaustive()
    }
}

/// `Onboard.GetAttestationInfo` answer: what an operator registers in
/// KmsAuth (`addKmsAggregatedMr`, `addKmsDevice`, `addOsImageHash`) before
/// bootstrapping or onboarding this KMS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttestationInfoResponse {
    /// The device id (32 bytes).
    #[serde(with = "hex_bytes")]
    pub device_id: Vec<u8>,
    /// The aggregated measurement (32 bytes).
    #[serde(with = "hex_bytes")]
    pub mr_aggregated: Vec<u8>,
    /// The OS image hash from the VM config (32 bytes, or empty).
    #[serde(with = "hex_bytes")]
    pub os_image_hash: Vec<u8>,
    /// `dstack-tdx`.
    pub tee_variant: String,
    /// The operator's name for this site (may be empty).
    pub site_name: String,
    /// The chain the auth backend reads (empty if none).
    pub eth_rpc_url: String,
    /// The KmsAuth contract (empty if none).
    pub kms_contract_address: String,
    /// The platform's raw device identity (PPID; empty on the sim TEE).
    #[serde(with = "hex_bytes")]
    pub ppid: Vec<u8>,
}

/// What the KMS tells its auth backend about a booting app or KMS
/// (upstream's `PolicyBootInfo`; camelCase JSON, hex without `0x`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BootInfo {
    /// `dstack-tdx` for TDX (also on the sim TEE, which simulates it).
    pub tee_variant: String,
    /// SHA-256(MRTD ‖ RTMR0-3 [‖ config ids]).
    #[serde(with = "hex_bytes")]
    pub mr_aggregated: Vec<u8>,
    /// The OS image hash.
    #[serde(with = "hex_bytes")]
    pub os_image_hash: Vec<u8>,
    /// SHA-256(MRTD ‖ RTMR0-2 ‖ mr_key_provider).
    #[serde(with = "hex_bytes")]
    pub mr_system: Vec<u8>,
    /// The 20-byte app id.
    #[serde(with = "hex_bytes")]
    pub app_id: Vec<u8>,
    /// SHA-256 of the app-compose.json bytes.
    #[serde(with = "hex_bytes")]
    pub compose_hash: Vec<u8>,
    /// The 20-byte instance id (or empty).
    #[serde(with = "hex_bytes")]
    pub instance_id: Vec<u8>,
    /// Device id.
    #[serde(with = "hex_bytes")]
    pub device_id: Vec<u8>,
    /// The `key-provider` event payload.
    #[serde(with = "hex_bytes")]
    pub key_provider_info: Vec<u8>,
    /// The quote's TCB status, e.g. `UpToDate`.
    pub tcb_status: String,
    /// Intel advisory ids that apply.
    pub advisory_ids: Vec<String>,
}

/// The auth backend's verdict (`bootAuth` response). Every field is
/// required when decoding, as upstream's KMS requires them: an answer
/// missing `isAllowed` is a broken backend, not a refusal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootAuthResponse {
    /// Whether the boot may get keys.
    pub is_allowed: bool,
    /// The gateway app id to hand the app.
    pub gateway_app_id: String,
    /// Why not, when refused.
    pub reason: String,
}

/// What an auth webhook says about itself (`GET <auth_url>/`, upstream's
/// `AuthApiInfoResponse`). auth-eth and auth-simple also send the legacy
/// `appAuthImplementation`, which is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthApiInfo {
    /// `ok` when the backend can answer.
    pub status: String,
    /// The KmsAuth contract the backend reads.
    pub kms_contract_addr: String,
    /// The chain's RPC endpoint as the backend publishes it (scheme and
    /// host only with auth-eth; absent with auth-simple).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub eth_rpc_url: String,
    /// The gateway app id.
    pub gateway_app_id: String,
    /// The chain id.
    pub chain_id: u64,
    /// The AppAuth implementation new apps are deployed with.
    pub app_implementation: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_cert_uses_upstreams_json_shapes() {
        let request = SignCertRequest {
            api_version: 2,
            csr: vec![0xab, 0x01],
            signature: vec![0x30],
            vm_config: "{}".into(),
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"api_version": 2, "csr": "ab01", "signature": "30", "vm_config": "{}"})
        );
        let decoded: SignCertRequest =
            serde_json::from_str(r#"{"api_version":2,"csr":"0xab01","signature":"30"}"#).unwrap();
        assert_eq!(decoded.csr, vec![0xab, 0x01]);
        assert!(decoded.vm_config.is_empty());
        let response: SignCertResponse =
            serde_json::from_str(r#"{"certificate_chain":["a","b","c"]}"#).unwrap();
        assert_eq!(response.certificate_chain.len(), 3);
    }

    #[test]
    fn boot_auth_response_needs_every_field() {
        let ok: BootAuthResponse =
            serde_json::from_str(r#"{"isAllowed":true,"gatewayAppId":"gw","reason":""}"#).unwrap();
        assert!(ok.is_allowed);
        assert!(serde_json::from_str::<BootAuthResponse>("{}").is_err());
        assert!(
            serde_json::from_str::<BootAuthResponse>(r#"{"reason":"x","gatewayAppId":""}"#)
                .is_err()
        );
    }

    #[test]
    fn auth_api_info_reads_auth_eth_answer() {
        // auth-eth's `GET /` (server.ts), legacy field included.
        let info: AuthApiInfo = serde_json::from_str(
            r#"{"status":"ok","kmsContractAddr":"0xabc","ethRpcUrl":"http://rpc:8545",
                "gatewayAppId":"gw","chainId":31337,"appAuthImplementation":"0xdef",
                "appImplementation":"0xdef"}"#,
        )
        .unwrap();
        assert_eq!(info.chain_id, 31337);
        assert_eq!(info.app_implementation, "0xdef");
        assert_eq!(info.eth_rpc_url, "http://rpc:8545");
        // auth-simple sends no ethRpcUrl.
        let info: AuthApiInfo = serde_json::from_str(
            r#"{"status":"ok","kmsContractAddr":"","gatewayAppId":"","chainId":0,"appImplementation":""}"#,
        )
        .unwrap();
        assert!(info.eth_rpc_url.is_empty());
    }
}
