//! Prometheus text counters: every request by method and outcome, with each
//! refusal counted under its reason, so an operator sees why keys were
//! refused without reading logs.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Request counters keyed by (method, outcome).
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// Counts one `method` call that ended in `outcome` (`ok` or a refusal reason).
    pub fn record(&self, method: &'static str, outcome: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry((method, outcome)).or_default() += 1;
    }

    /// The count of `method` calls that ended in `outcome`.
    pub fn get(&self, method: &str, outcome: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .iter()
            .filter(|((m, o), _)| *m == method && *o == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The counters in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::from(
            "# HELP dstack_kms_requests_total KMS requests by method and outcome (ok or the refusal reason).\n\
             # TYPE dstack_kms_requests_total counter\n",
        );
        for ((method, outcome), n) in counts.iter() {
            out.push_str(&format!(
                "dstack_kms_requests_total{{method=\"{method}\",outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record("GetAppKey", "ok");
        m.record("GetAppKey", "ok");
        m.record("GetAppKey", "compose_hash_not_allowed");
        assert_eq!(m.get("GetAppKey", "ok"), 2);
        let text = m.render();
        assert!(text.contains("# TYPE dstack_kms_requests_total counter"));
        assert!(text.contains(
            "dstack_kms_requests_total{method=\"GetAppKey\",outcome=\"compose_hash_not_allowed\"} 1"
        ));
    }
}
