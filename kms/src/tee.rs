//! What the KMS asks of the TEE it runs in. In a dstack CVM it is an app
//! like any other and calls the guest API (`dstack.sock`): `GetKey` for the
//! key that seals its root keys (under `key_provider = local` that key is
//! bound to the CVM's measurements), `Attest` for the evidence in its
//! certificates and bootstrap answer, `Info` for its VM config. On a
//! development host there is no TEE: keys are stored unsealed (0600) and
//! certificates carry no evidence.

use dstack_guest_client::{GuestApiError, GuestClient};
use zeroize::Zeroizing;

/// The `GetKey` path of the sealing key. Changing it orphans every sealed
/// key store.
pub const SEAL_KEY_PATH: &str = "dstack-kms/root-keys-seal/v1";

/// Where the KMS runs.
#[derive(Debug, Clone)]
pub enum Tee {
    /// A development host: no sealing, no evidence.
    Host,
    /// A dstack CVM, through its guest API.
    Guest(GuestClient),
}

impl Tee {
    /// The 32-byte key that seals the root keys (`None` on a host).
    pub async fn seal_key(&self) -> Result<Option<Zeroizing<[u8; 32]>>, GuestApiError> {
        let Self::Guest(client) = self else {
            return Ok(None);
        };
        let answer = client.get_key(SEAL_KEY_PATH, "").await?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&answer.key);
        Ok(Some(key))
    }

    /// This CVM's attestation over `report_data` (`None` on a host).
    pub async fn attest(&self, report_data: &[u8; 64]) -> Result<Option<Vec<u8>>, GuestApiError> {
        match self {
            Self::Host => Ok(None),
            Self::Guest(client) => client.attest(report_data).await.map(Some),
        }
    }

    /// This CVM's VM config (empty on a host).
    pub async fn vm_config(&self) -> Result<String, GuestApiError> {
        match self {
            Self::Host => Ok(String::new()),
            Self::Guest(client) => Ok(client.info().await?.vm_config),
        }
    }

    /// Whether the KMS runs in a TEE.
    pub fn is_tee(&self) -> bool {
        matches!(self, Self::Guest(_))
    }
}
