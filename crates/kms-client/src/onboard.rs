//! The onboarding service of a KMS without keys (`Onboard.<Method>` over
//! plain HTTP, UPSTREAM §7.1), as `dstack kms bootstrap|onboard` call it.
//! Nothing secret crosses it; the bootstrap answer is trusted only after
//! its attestation verifies.

use std::time::Duration;

use dstack_proto::kms::{
    AttestationInfoResponse, BootstrapRequest, BootstrapResponse, ImportKeyResponse, ImportRequest,
    OnboardRequest, OnboardResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// The report_data of a bootstrap answer's attestation (upstream's
/// `attest_keys`): Keccak256 of `dstack-kms-genereted-keys-v1:<hex ca
/// pubkey>;<hex k256 pubkey>;` (upstream's spelling), zero-padded to 64.
pub fn bootstrap_report_data(ca_pubkey: &[u8], k256_pubkey: &[u8]) -> [u8; 64] {
    use sha3::{Digest, Keccak256};
    let content = format!(
        "dstack-kms-genereted-keys-v1:{};{};",
        hex::encode(ca_pubkey),
        hex::encode(k256_pubkey)
    );
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&Keccak256::digest(content.as_bytes()));
    report_data
}

/// The report_data of the import key's attestation:
/// SHA-512(`dstack-kms-import-key:` ‖ X25519 public key), upstream's
/// `tag:content` convention.
pub fn import_key_report_data(public_key: &[u8]) -> [u8; 64] {
    use sha2::{Digest, Sha512};
    let mut hasher = Sha512::new();
    hasher.update(b"dstack-kms-import-key:");
    hasher.update(public_key);
    hasher.finalize().into()
}

/// Onboarding can wait on a quote and, for `Onboard`, a whole key transfer.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A KMS's onboarding endpoint (`http://host:port`).
#[derive(Debug, Clone)]
pub struct OnboardClient {
    url: String,
    authority: String,
}

impl OnboardClient {
    /// A client for `url` (`http://host:port`, a trailing `/` or `/prpc` allowed).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let rest = rest.strip_suffix("/prpc").unwrap_or(rest);
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(bad()),
        }
        if rest.contains('/') {
            return Err(bad());
        }
        Ok(Self {
            url: url.to_owned(),
            authority: rest.to_owned(),
        })
    }

    /// `Bootstrap`: fresh root keys for `domain`.
    pub async fn bootstrap(&self, domain: &str) -> Result<BootstrapResponse, ClientError> {
        let request = BootstrapRequest {
            domain: domain.to_owned(),
        };
        self.call("Bootstrap", &request).await
    }

    /// `Onboard`: copy the root keys from the KMS at `source_url`.
    pub async fn onboard(
        &self,
        source_url: &str,
        domain: &str,
    ) -> Result<OnboardResponse, ClientError> {
        let request = OnboardRequest {
            source_url: source_url.to_owned(),
            domain: domain.to_owned(),
        };
        self.call("Onboard", &request).await
    }

    /// `GetAttestationInfo`: the measurements to register in KmsAuth.
    pub async fn attestation_info(&self) -> Result<AttestationInfoResponse, ClientError> {
        self.call("GetAttestationInfo", &serde_json::json!({}))
            .await
    }

    /// `GetImportKey`: the attested key to seal imported root keys to.
    pub async fn import_key(&self) -> Result<ImportKeyResponse, ClientError> {
        self.call("GetImportKey", &serde_json::json!({})).await
    }

    /// `Import`: root keys sealed to the import key.
    pub async fn import(&self, sealed_keys: Vec<u8>) -> Result<OnboardResponse, ClientError> {
        self.call("Import", &ImportRequest { sealed_keys }).await
    }

    /// `Finish`: leave onboarding; the KMS then serves its API over HTTPS.
    pub async fn finish(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.call("Finish", &serde_json::json!({})).await?;
        Ok(())
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: &str,
        request: &Q,
    ) -> Result<A, ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, request))
            .await
            .map_err(|_| self.transport(format!("{method} timed out after {CALL_TIMEOUT:?}")))?
    }

    async fn call_inner<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: &str,
        request: &Q,
    ) -> Result<A, ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.transport(e.to_string()))?;
        let path = format!("/prpc/Onboard.{method}?json");
        crate::exchange(&self.url, tcp, &self.authority, &path, method, request).await
    }

    fn transport(&self, reason: String) -> ClientError {
        ClientError::Transport {
            url: self.url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_report_data_is_upstreams_keccak_padded() {
        use sha3::{Digest, Keccak256};
        let rd = bootstrap_report_data(&[0xaa, 0xbb], &[0x02, 0x01]);
        let expected = Keccak256::digest(b"dstack-kms-genereted-keys-v1:aabb;0201;");
        assert_eq!(rd[..32], expected[..]);
        assert_eq!(rd[32..], [0u8; 32]);
    }

    #[test]
    fn urls_are_http_host_port() {
        assert!(OnboardClient::new("http://10.0.2.2:8000").is_ok());
        assert!(OnboardClient::new("http://kms:8000/prpc").is_ok());
        for bad in [
            "https://x:1",
            "http://x",
            "http://:1",
            "http://x:1/other",
            "",
        ] {
            assert!(OnboardClient::new(bad).is_err(), "{bad}");
        }
    }
}
