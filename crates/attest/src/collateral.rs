//! Quote collateral: the signed TCB info, QE identity, CRLs and issuer chains
//! a verifier checks a quote against, loaded from a file or fetched from a PCCS.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;

pub use dcap_qvl::QuoteCollateralV3 as RawCollateral;

/// Why collateral could not be loaded or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollateralError {
    /// The collateral file could not be read.
    #[error("cannot read collateral file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The collateral JSON does not have dcap-qvl's `QuoteCollateralV3` shape.
    #[error("collateral is not valid QuoteCollateralV3 JSON")]
    Json(#[source] serde_json::Error),
    /// The TCB info or QE identity inside is not JSON with issue/next-update dates.
    #[error("collateral {what} is malformed")]
    Malformed {
        /// Which part.
        what: &'static str,
    },
    /// Fetching from the PCCS failed.
    #[cfg(feature = "pccs")]
    #[error(transparent)]
    Pccs(#[from] crate::pccs::PccsError),
}

/// Collateral for one quote, with its validity window.
#[derive(Debug, Clone)]
pub struct Collateral {
    raw: RawCollateral,
}

/// The time window inside which collateral may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The latest issue date of the signed parts.
    pub issued: DateTime<Utc>,
    /// The earliest next-update date of the signed parts.
    pub next_update: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dates {
    issue_date: DateTime<Utc>,
    next_update: DateTime<Utc>,
}

impl Collateral {
    /// Wrap collateral that dcap-qvl produced or parsed.
    pub fn from_raw(raw: RawCollateral) -> Self {
        Self { raw }
    }

    /// Parse collateral JSON (dcap-qvl's `QuoteCollateralV3` serialisation).
    pub fn from_json(json: &str) -> Result<Self, CollateralError> {
        serde_json::from_str(json)
            .map(Self::from_raw)
            .map_err(CollateralError::Json)
    }

    /// Load collateral JSON from a file.
    pub fn load(path: &Path) -> Result<Self, CollateralError> {
        let text = std::fs::read_to_string(path).map_err(|source| CollateralError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Serialise to the same JSON shape `from_json` reads.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and byte vectors cannot fail.
        serde_json::to_string_pretty(&self.raw).unwrap_or_default()
    }

    /// Fetch collateral for `quote` from a PCCS (or Intel PCS) base URL,
    /// uncached; verifiers that check more than one quote use
    /// [`crate::pccs::CollateralCache`].
    #[cfg(feature = "pccs")]
    pub async fn fetch(pccs_url: &str, quote: &[u8]) -> Result<Self, CollateralError> {
        Ok(crate::pccs::fetch_for_quote(pccs_url, quote).await?)
    }

    /// The dcap-qvl form, for verification.
    pub fn raw(&self) -> &RawCollateral {
        &self.raw
    }

    /// When the signed TCB info and QE identity say this collateral is valid.
    pub fn validity(&self) -> Result<Validity, CollateralError> {
        let tcb: Dates = serde_json::from_str(&self.raw.tcb_info)
            .map_err(|_| CollateralError::Malformed { what: "tcb_info" })?;
        let qe: Dates = serde_json::from_str(&self.raw.qe_identity).map_err(|_| {
            CollateralError::Malformed {
                what: "qe_identity",
            }
        })?;
        Ok(Validity {
            issued: tcb.issue_date.max(qe.issue_date),
            next_update: tcb.next_update.min(qe.next_update),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::testdata_path;

    #[test]
    fn loads_sample_collateral_and_reads_its_window() {
        let c = Collateral::load(&testdata_path("tdx_quote_collateral.json")).unwrap();
        let v = c.validity().unwrap();
        assert_eq!(v.issued.to_rfc3339(), "2025-06-19T10:32:27+00:00");
        assert_eq!(v.next_update.to_rfc3339(), "2025-07-19T10:16:03+00:00");
        // Round trip through our own serialisation.
        let again = Collateral::from_json(&c.to_json()).unwrap();
        assert_eq!(again.raw().tcb_info, c.raw().tcb_info);
        assert_eq!(again.raw().pck_crl, c.raw().pck_crl);
    }

    #[test]
    fn names_missing_file_and_bad_json() {
        let err = Collateral::load(Path::new("/nonexistent/collateral.json")).unwrap_err();
        assert!(matches!(err, CollateralError::Read { .. }));
        let err = Collateral::from_json("{\"tcb_info\": 1}").unwrap_err();
        assert!(matches!(err, CollateralError::Json(_)));
    }
}
