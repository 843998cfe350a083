//! The local key provider behind the host API's GetSealingKey (UPSTREAM §9).
//!
//! Upstream runs `local-key-provider` in an SGX enclave next to the VMM: it
//! verifies the TD's quote, derives `SHA-256(SGX sealing key ‖ MRTD ‖
//! RTMR0..3)`, seals it to the X25519 key in the quote's report_data, and
//! proves which enclave did so with an SGX quote whose report_data[..32] is
//! SHA-256 of the sealed box. Two providers sit behind one interface here:
//!
//! - [`KeyProvider::Sim`], on hosts that simulate the TEE: the supervisor
//!   plays the enclave. Its "SGX sealing key" is a random 32-byte secret in
//!   `<state-dir>/sim-key-provider.json` (mode 0600, written atomically, never
//!   logged); its enclave is a simulated one whose MRENCLAVE is
//!   SHA-256("dstack-rs simulated local key provider" ‖ sim root DER), so it
//!   names this host's simulated authority, and whose SGX quote is signed
//!   by the same simulated quoting enclave as the TDs' quotes. Lose the
//!   file and every key it derived is lost with it.
//! - [`KeyProvider::Upstream`]: forwards to upstream's SGX provider over TCP
//!   (`--local-key-provider ADDR`), in its wire protocol.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dstack_attest::sim::SimEnclaveIdentity;
use dstack_attest::{QuoteVerifier, SimAuthority, SimError, VerifyError};
use dstack_keys::sealing::{
    SealingError, TdMeasurements, derive_sealing_key, evidence_report_data,
    recipient_from_report_data, seal,
};
use dstack_proto::host::GetSealingKeyResponse;
use dstack_proto::host::local_key_provider::{MAX_FRAME, ProviderRequest, ProviderResponse, frame};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::state::write_json_atomic;

/// The file holding the simulated provider's sealing secret.
pub const SECRET_FILE: &str = "sim-key-provider.json";

/// How long the upstream provider may take (upstream's own I/O limit).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a sealing key was not provided.
#[derive(Debug, thiserror::Error)]
pub enum KeyProviderError {
    /// The host runs no key provider (a TDX host without `--local-key-provider`).
    #[error(
        "this host runs no local key provider (on a TDX host start dstack-supervisor with --local-key-provider ADDR)"
    )]
    Absent,
    /// The TD's quote did not verify.
    #[error("quote: the TD's quote does not verify")]
    Quote(#[source] VerifyError),
    /// The quote verified but is not a TD's.
    #[error("quote: not a TDX quote")]
    NotTdx,
    /// The recipient key cannot be sealed to.
    #[error("quote: report_data carries no usable X25519 key")]
    Sealing(#[source] SealingError),
    /// The simulated authority failed to quote or issue collateral.
    #[error("the simulated TEE failed")]
    Sim(#[from] SimError),
    /// The secret file could not be read or written.
    #[error("cannot {operation} {}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The secret file is not ours.
    #[error("{} is invalid: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The upstream provider could not be reached or answered badly.
    #[error("the local key provider at {addr} failed: {reason}")]
    Upstream {
        /// Its address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

impl KeyProviderError {
    /// Whether the guest's request is at fault (HTTP 400) rather than the host.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, Self::Quote(_) | Self::NotTdx | Self::Sealing(_))
    }
}

/// A source of sealing keys.
#[derive(Debug)]
pub enum KeyProvider {
    /// The supervisor plays the provider (sim TEE hosts).
    Sim(SimKeyProvider),
    /// Upstream's SGX provider over TCP.
    Upstream(UpstreamKeyProvider),
}

impl KeyProvider {
    /// GetSealingKey for `quote`. Blocks (quote verification, network): call
    /// it from a blocking thread.
    pub fn provide(&self, quote: &[u8]) -> Result<GetSealingKeyResponse, KeyProviderError> {
        match self {
            KeyProvider::Sim(sim) => sim.provide(quote),
            KeyProvider::Upstream(upstream) => upstream.provide(quote),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SavedSecret {
    version: u32,
    #[serde(with = "hex::serde")]
    sealing_secret: Vec<u8>,
}

/// The supervisor playing upstream's SGX enclave under the simulated authority.
pub struct SimKeyProvider {
    authority: Arc<SimAuthority>,
    secret: Zeroizing<Vec<u8>>,
    enclave: SimEnclaveIdentity,
}

impl std::fmt::Debug for SimKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("SimKeyProvider")
            .field("mr_enclave", &hex::encode(self.enclave.mr_enclave))
            .finish_non_exhaustive()
    }
}

impl SimKeyProvider {
    /// The provider whose secret is in `<state_dir>/sim-key-provider.json`,
    /// created on first use.
    pub fn load_or_generate(
        state_dir: &Path,
        authority: Arc<SimAuthority>,
    ) -> Result<Self, KeyProviderError> {
        let path = state_dir.join(SECRET_FILE);
        let secret = match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: SavedSecret =
                    serde_json::from_slice(&bytes).map_err(|e| KeyProviderError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if saved.version != 1 || saved.sealing_secret.len() != 32 {
                    return Err(KeyProviderError::Corrupt {
                        path,
                        reason: "not a version 1 file with a 32-byte secret".into(),
                    });
                }
                Zeroizing::new(saved.sealing_secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = Zeroizing::new(rand::random::<[u8; 32]>().to_vec());
                let saved = SavedSecret {
                    version: 1,
                    sealing_secret: secret.to_vec(),
                };
                write_json_atomic(&path, &saved).map_err(|source| KeyProviderError::Io {
                    operation: "write",
                    path,
                    source,
                })?;
                secret
            }
            Err(source) => {
                return Err(KeyProviderError::Io {
                    operation: "read",
                    path,
                    source,
                });
            }
        };
        Ok(Self::new(authority, secret))
    }

    /// A provider with a given secret.
    pub fn new(authority: Arc<SimAuthority>, secret: Zeroizing<Vec<u8>>) -> Self {
        let root = authority.root_der();
        let enclave = SimEnclaveIdentity {
            mr_enclave: Sha256::new()
                .chain_update(b"dstack-rs simulated local key provider")
                .chain_update(root)
                .finalize()
                .into(),
            mr_signer: Sha256::new()
                .chain_update(b"dstack-rs simulated local key provider signer")
                .chain_update(root)
                .finalize()
                .into(),
            isv_prod_id: 1,
            isv_svn: 1,
        };
        Self {
            authority,
            secret,
            enclave,
        }
    }

    /// The simulated enclave's MRENCLAVE: the provider id guests measure.
    pub fn mr_enclave(&self) -> [u8; 32] {
        self.enclave.mr_enclave
    }

    fn provide(&self, quote: &[u8]) -> Result<GetSealingKeyResponse, KeyProviderError> {
        // The same verifier and root a relying party uses for sim quotes.
        let collateral = self.authority.collateral(Utc::now())?;
        let verified = QuoteVerifier::new(self.authority.root_der().to_vec())
            .verify(quote, &collateral)
            .map_err(KeyProviderError::Quote)?;
        let td = verified.quote.td_report().ok_or(KeyProviderError::NotTdx)?;
        let key = derive_sealing_key(
            &self.secret,
            &TdMeasurements {
                mr_td: &td.mr_td,
                rtmr: &td.rtmr,
            },
        );
        let recipient = recipient_from_report_data(&td.report_data);
        let encrypted_key = seal(&recipient, &key[..]).map_err(KeyProviderError::Sealing)?;
        let provider_quote = self
            .authority
            .sgx_quote(&self.enclave, &evidence_report_data(&encrypted_key))?;
        Ok(GetSealingKeyResponse {
            encrypted_key,
            provider_quote,
            provider_collateral: self.authority.sgx_collateral(Utc::now())?.to_json(),
        })
    }
}

/// Upstream's `local-key-provider`, reached over TCP.
#[derive(Debug, Clone)]
pub struct UpstreamKeyProvider {
    addr: String,
}

impl UpstreamKeyProvider {
    /// A provider at `addr` (`host:port`; upstream listens on 127.0.0.1:3443).
    pub fn new(addr: String) -> Self {
        Self { addr }
    }

    fn provide(&self, quote: &[u8]) -> Result<GetSealingKeyResponse, KeyProviderError> {
        let fail = |reason: String| KeyProviderError::Upstream {
            addr: self.addr.clone(),
            reason,
        };
        let request = frame(&ProviderRequest {
            quote: quote.to_vec(),
        })
        .ok_or_else(|| fail("the quote is too large".into()))?;
        let addr = self
            .addr
            .to_socket_addrs()
            .map_err(|e| fail(format!("bad address: {e}")))?
            .next()
            .ok_or_else(|| fail("the address resolves to nothing".into()))?;
        let mut stream = TcpStream::connect_timeout(&addr, UPSTREAM_TIMEOUT)
            .map_err(|e| fail(format!("connect: {e}")))?;
        let io = |e: std::io::Error| fail(format!("I/O: {e}"));
        stream
            .set_read_timeout(Some(UPSTREAM_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(UPSTREAM_TIMEOUT)))
            .map_err(io)?;
        stream.write_all(&request).map_err(io)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).map_err(io)?;
        let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
        if len == 0 || len > MAX_FRAME {
            return Err(fail(format!("answer of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).map_err(io)?;
        let response: ProviderResponse =
            serde_json::from_slice(&body).map_err(|e| fail(format!("answer is not JSON: {e}")))?;
        Ok(GetSealingKeyResponse {
            encrypted_key: response.encrypted_key,
            provider_quote: response.provider_quote,
            provider_collateral: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use dstack_attest::{Quote, Report, SimTdIdentity};
    use dstack_keys::sealing::{RecipientKey, check_evidence};

    use super::*;

    fn td() -> SimTdIdentity {
        SimTdIdentity {
            mr_td: [1; 48],
            rtmr: [[2; 48], [3; 48], [4; 48], [5; 48]],
            ..SimTdIdentity::default()
        }
    }

    #[test]
    fn seals_the_derived_key_with_evidence() {
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let provider = SimKeyProvider::new(authority.clone(), Zeroizing::new(vec![0x11; 32]));
        let guest = RecipientKey::generate();
        let quote = authority.quote(&td(), &guest.report_data()).unwrap();
        let response = provider.provide(&quote).unwrap();
        // SHA-256(0x11 * 32 ‖ MRTD 0x01 * 48 ‖ RTMR 0x02..0x05 * 48 each), by python3.
        assert_eq!(
            hex::encode(*guest.open_sealing_key(&response.encrypted_key).unwrap()),
            "fbdda5ab5ff4b817658483b35a91c3761caad5ffbc27b760950b08d58dbb147e"
        );
        let collateral =
            dstack_attest::Collateral::from_json(&response.provider_collateral).unwrap();
        let verified = QuoteVerifier::new(authority.root_der().to_vec())
            .verify(&response.provider_quote, &collateral)
            .unwrap();
        let Report::Sgx(enclave) = &verified.quote.report else {
            panic!("the provider quote is not SGX");
        };
        assert_eq!(enclave.mr_enclave, provider.mr_enclave());
        check_evidence(&response.encrypted_key, &enclave.report_data).unwrap();
    }

    #[test]
    fn refuses_bad_quotes_by_name() {
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let provider = SimKeyProvider::new(authority.clone(), Zeroizing::new(vec![0x11; 32]));
        let report_data = RecipientKey::generate().report_data();
        let quote = authority.quote(&td(), &report_data).unwrap();

        let err = provider.provide(&quote[..100]).unwrap_err();
        assert!(matches!(err, KeyProviderError::Quote(_)), "{err}");
        assert!(err.is_bad_request());

        let mut tampered = quote.clone();
        tampered[200] ^= 1; // inside the TD report: the signature no longer matches
        let err = provider.provide(&tampered).unwrap_err();
        assert!(matches!(err, KeyProviderError::Quote(_)), "{err}");

        let foreign = SimAuthority::generate().unwrap();
        let err = provider
            .provide(&foreign.quote(&td(), &report_data).unwrap())
            .unwrap_err();
        assert!(
            matches!(err, KeyProviderError::Quote(VerifyError::UntrustedChain(_))),
            "{err:?}"
        );

        let mut weak = [0u8; 64];
        weak[32] = 1;
        let err = provider
            .provide(&authority.quote(&td(), &weak).unwrap())
            .unwrap_err();
        assert!(matches!(err, KeyProviderError::Sealing(_)), "{err}");

        let sgx = authority
            .sgx_quote(&provider.enclave, &report_data)
            .unwrap();
        assert!(matches!(Quote::parse(&sgx).unwrap().report, Report::Sgx(_)));
        assert!(provider.provide(&sgx).is_err());
    }

    #[test]
    fn the_secret_persists_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let a = SimKeyProvider::load_or_generate(dir.path(), authority.clone()).unwrap();
        let b = SimKeyProvider::load_or_generate(dir.path(), authority.clone()).unwrap();
        assert_eq!(*a.secret, *b.secret);
        let meta = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!format!("{a:?}").contains(&hex::encode(&*a.secret)));
        std::fs::write(dir.path().join(SECRET_FILE), "{}").unwrap();
        let err = SimKeyProvider::load_or_generate(dir.path(), authority).unwrap_err();
        assert!(matches!(err, KeyProviderError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn forwards_to_an_upstream_provider_in_its_protocol() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            socket.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            socket.read_exact(&mut body).unwrap();
            let request: ProviderRequest = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, br#"{"quote":[9,8,7]}"#);
            let answer = frame(&ProviderResponse {
                encrypted_key: request.quote,
                provider_quote: vec![1],
            })
            .unwrap();
            socket.write_all(&answer).unwrap();
        });
        let response = UpstreamKeyProvider::new(addr).provide(&[9, 8, 7]).unwrap();
        server.join().unwrap();
        assert_eq!(response.encrypted_key, [9, 8, 7]);
        assert_eq!(response.provider_quote, [1]);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let err = UpstreamKeyProvider::new(addr).provide(&[1]).unwrap_err();
        assert!(matches!(err, KeyProviderError::Upstream { .. }), "{err}");
    }
}
