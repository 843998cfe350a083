//! Checking a peer's evidence one way for every server that judges peers
//! (the KMS's callers and onboarding sources, the gateway's CVMs).
//! Collateral comes from a PCCS when one is configured (cached until its
//! next update), else from the verifier.

use std::time::SystemTime;

use dstack_attest::pccs::CollateralCache;
use dstack_attest::pccs::PccsError;

use crate::{RaTlsError, RaTlsVerifier, VerifiedPeer};

/// Why a peer's evidence was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The certificate or attestation did not verify.
    #[error(transparent)]
    Attestation(#[from] RaTlsError),
    /// The quote's collateral could not be fetched.
    #[error(transparent)]
    Collateral(#[from] PccsError),
}

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
    pub async fn verify_cert(
        &self,
        cert: &[u8],
        at: SystemTime,
    ) -> Result<VerifiedPeer, EvidenceError> {
        let collateral = match &self.pccs {
            Some(cache) => Some(cache.get(&crate::certificate_quote(cert)?).await?),
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
    ) -> Result<VerifiedPeer, EvidenceError> {
        let collateral = match &self.pccs {
            Some(cache) => {
                let quote = dstack_attest::AttestationV0::from_bytes(attestation)
                    .map_err(RaTlsError::from)?
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
