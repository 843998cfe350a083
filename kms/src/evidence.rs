//! Checking a peer's evidence, one way for every KMS path: callers' client
//! certificates (GetAppKey, GetKmsKey), a source KMS's RPC certificate
//! (onboarding) and this KMS's own attestation (bootstrap self-check,
//! attestation info). Collateral comes from a PCCS when one is configured
//! (cached until its next update), else from the verifier.

use std::time::SystemTime;

use dstack_attest::pccs::CollateralCache;
use dstack_ra_tls::{RaTlsVerifier, VerifiedPeer};

use crate::KmsError;

/// The quote verifier and where collateral comes from.
#[derive(Debug)]
pub struct EvidenceChecker {
    verifier: RaTlsVerifier,
    pccs: Option<CollateralCache>,
}

impl EvidenceChecker {
    /// Checks evidence with `verifier` and its own collateral.
    pub fn new(verifier: RaTlsVerifier) -> Self {
        Self {
            verifier,
            pccs: None,
        }
    }

    /// Fetch each quote's collateral from a PCCS instead.
    pub fn with_pccs(mut self, cache: CollateralCache) -> Self {
        self.pccs = Some(cache);
        self
    }

    /// An RA-TLS certificate, judged at `at`.
    pub async fn verify_cert(&self, cert: &[u8], at: SystemTime) -> Result<VerifiedPeer, KmsError> {
        let collateral = match &self.pccs {
            Some(cache) => Some(cache.get(&dstack_ra_tls::certificate_quote(cert)?).await?),
            None => None,
        };
        Ok(self.verifier.verify_cert_with(cert, at, collateral)?)
    }

    /// A bare attestation that must bind `report_data`, judged at `at`.
    pub async fn verify_attestation(
        &self,
        attestation: &[u8],
        report_data: &[u8; 64],
        at: SystemTime,
    ) -> Result<VerifiedPeer, KmsError> {
        let collateral = match &self.pccs {
            Some(cache) => {
                let quote = dstack_attest::AttestationV0::from_bytes(attestation)
                    .map_err(dstack_ra_tls::RaTlsError::from)?
                    .quote;
                Some(cache.get(&quote).await?)
            }
            None => None,
        };
        Ok(self
            .verifier
            .verify_attestation_with(attestation, report_data, at, collateral)?)
    }
}
