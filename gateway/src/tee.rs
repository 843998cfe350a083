//! What this node takes from the CVM it runs in: its WireGuard key and the
//! cluster's sealing secret (app keys derived by the KMS, so every replica
//! of the same app derives the same seal and its own stable WireGuard
//! key), its RA-TLS RPC certificate, and quotes over ACME keys. Outside a
//! CVM (development, benchmarks) keys come from a file and nothing is quoted.

use std::path::{Path, PathBuf};

use dstack_guest_client::{GuestApiError, GuestClient};
use dstack_ra_tls::{CertRequest, RaTlsCert};
use rcgen::PublicKeyData;
use zeroize::Zeroizing;

/// The certificate usage CVMs require of a gateway's RPC certificate.
pub const RPC_USAGE: &str = "gateway:rpc";

/// Why keys or evidence could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeeError {
    /// The guest API refused or failed.
    #[error("guest API {socket}: {source}")]
    GuestApi {
        /// Its socket.
        socket: PathBuf,
        /// What failed.
        source: GuestApiError,
    },
    /// The development key file could not be used.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate could not be made.
    #[error("cannot make the RPC certificate: {0}")]
    Certificate(String),
}

/// Where keys and quotes come from.
#[derive(Debug, Clone)]
pub enum Tee {
    /// The guest API of the CVM this node runs in.
    Guest(GuestClient),
    /// A file of development keys; no quotes.
    Insecure(PathBuf),
}

/// The secrets a node starts with.
pub struct NodeSecrets {
    /// The WireGuard private key.
    pub wg_private: Zeroizing<[u8; 32]>,
    /// Input of the cluster's sealing key (the same on every replica).
    pub seal_secret: Zeroizing<Vec<u8>>,
    /// The app id, hex (names the cluster's etcd namespace).
    pub app_id: String,
}

impl std::fmt::Debug for NodeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSecrets")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl Tee {
    /// Whether quotes are available.
    pub fn is_tee(&self) -> bool {
        matches!(self, Self::Guest(_))
    }

    fn guest_error(client: &GuestClient, source: GuestApiError) -> TeeError {
        TeeError::GuestApi {
            socket: client.socket().to_owned(),
            source,
        }
    }

    /// This node's secrets: the WireGuard key differs per node id, the seal does not.
    pub async fn secrets(&self, node_id: u32) -> Result<NodeSecrets, TeeError> {
        match self {
            Self::Guest(client) => {
                let wg = client
                    .get_key(&format!("dstack-gateway/wireguard/{node_id}"), "wireguard")
                    .await
                    .map_err(|e| Self::guest_error(client, e))?;
                let seal = client
                    .get_key("dstack-gateway/cluster-seal", "cluster-kv")
                    .await
                    .map_err(|e| Self::guest_error(client, e))?;
                let info = client
                    .info()
                    .await
                    .map_err(|e| Self::guest_error(client, e))?;
                let mut wg_private = Zeroizing::new([0u8; 32]);
                wg_private.copy_from_slice(&wg.key);
                Ok(NodeSecrets {
                    wg_private,
                    seal_secret: Zeroizing::new(seal.key.clone()),
                    app_id: hex::encode(&info.app_id),
                })
            }
            Self::Insecure(path) => insecure_secrets(path, node_id),
        }
    }

    /// A quote (the guest API's `GetQuote` answer as JSON) and attestation
    /// (`Attest`, hex) over `tag`-tagged `content`; empty outside a CVM.
    pub async fn quote_content(
        &self,
        tag: &str,
        content: &[u8],
    ) -> Result<(String, String), TeeError> {
        let Self::Guest(client) = self else {
            return Ok((String::new(), String::new()));
        };
        let report_data = dstack_keys::report_data::report_data_with_hash(
            tag,
            content,
            dstack_keys::report_data::HashAlgorithm::Sha512,
        )
        .map_err(|e| TeeError::Certificate(e.to_string()))?;
        let quote = client
            .get_quote(&report_data)
            .await
            .map_err(|e| Self::guest_error(client, e))?;
        let attestation = client
            .attest(&report_data)
            .await
            .map_err(|e| Self::guest_error(client, e))?;
        let quote =
            serde_json::to_string(&quote).map_err(|e| TeeError::Certificate(e.to_string()))?;
        Ok((quote, hex::encode(attestation)))
    }

    /// The RPC server's certificate and key (PKCS#8): self-signed, carrying
    /// this CVM's attestation bound to the key, so a CVM checks the quote
    /// and pins the gateway's app id.
    pub async fn rpc_certificate(&self, names: &[String]) -> Result<(Vec<u8>, Vec<u8>), TeeError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TeeError::Certificate(e.to_string()))?;
        let attestation = match self {
            Self::Guest(client) => {
                let report_data =
                    dstack_ra_tls::report_data_for_spki(&key.subject_public_key_info());
                Some(
                    client
                        .attest(&report_data)
                        .await
                        .map_err(|e| Self::guest_error(client, e))?,
                )
            }
            Self::Insecure(_) => None,
        };
        let mut request = CertRequest::new("dstack-gateway");
        request.alt_names = names.to_vec();
        request.usage = Some(RPC_USAGE.to_owned());
        request.client_auth = false;
        request.attestation = attestation;
        let cert = RaTlsCert::build(&key, &request, None, None)
            .map_err(|e| TeeError::Certificate(e.to_string()))?;
        Ok((cert.cert_der, cert.key_der))
    }
}

/// `{"wg_private_key": base64, "seal_secret": hex, "app_id": hex}`.
fn insecure_secrets(path: &Path, node_id: u32) -> Result<NodeSecrets, TeeError> {
    use base64::Engine;
    let bad = |reason: String| TeeError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("no string field {name:?}")))
    };
    let seal_secret = Zeroizing::new(
        hex::decode(field("seal_secret")?).map_err(|e| bad(format!("seal_secret: {e}")))?,
    );
    // Each node of a development cluster gets its own tunnel key from the one file.
    let wg_field = field("wg_private_key")?;
    let mut wg_private = Zeroizing::new([0u8; 32]);
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(wg_field.trim())
            .map_err(|e| bad(format!("wg_private_key: {e}")))?,
    );
    if decoded.len() != 32 {
        return Err(bad("wg_private_key is not 32 bytes".into()));
    }
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(&*decoded);
    hasher.update(node_id.to_be_bytes());
    wg_private.copy_from_slice(&hasher.finalize());
    Ok(NodeSecrets {
        wg_private,
        seal_secret,
        app_id: field("app_id")?,
    })
}
