//! Prometheus text counters and gauges: every connection the proxy accepts
//! ends under exactly one outcome (`proxied` or the refusal's reason), so an
//! operator sees malformed SNI, unknown apps, oversized ClientHellos and
//! slow clients without reading logs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Why the proxy refused or ended a connection before relaying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The first bytes were not a TLS ClientHello, or it was malformed.
    MalformedHello,
    /// The SNI was missing or not a valid host name / route.
    MalformedSni,
    /// The ClientHello was larger than the gateway reads.
    OversizedHello,
    /// The client did not send its ClientHello (or PROXY header) in time.
    HandshakeTimeout,
    /// The client hung up before its ClientHello was complete (a probe,
    /// or a client giving up): not slow, so not a timeout.
    ClientClosed,
    /// No registered app or instance of that id, or no TXT record.
    UnknownApp,
    /// The port is outside the app's port policy (or the policy is unknown).
    PortPolicy,
    /// The app has as many connections as it may have.
    ConnectionCap,
    /// No instance of the app answered.
    BackendUnreachable,
    /// The TLS handshake with the client failed.
    TlsHandshake,
    /// A bad inbound PROXY header.
    ProxyHeader,
    /// This node is set down (draining).
    NodeDown,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedHello => "malformed_client_hello",
            Self::MalformedSni => "malformed_sni",
            Self::OversizedHello => "oversized_client_hello",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::ClientClosed => "client_closed",
            Self::UnknownApp => "unknown_app",
            Self::PortPolicy => "port_policy",
            Self::ConnectionCap => "connection_cap",
            Self::BackendUnreachable => "backend_unreachable",
            Self::TlsHandshake => "tls_handshake",
            Self::ProxyHeader => "proxy_header",
            Self::NodeDown => "node_down",
        }
    }
}

/// The gateway's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    active: AtomicI64,
}

/// Keeps the active-connection gauge up while it lives.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a Metrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Counts one event `name` with label `value`.
    pub fn count(&self, name: &'static str, value: &'static str) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        *counters.entry((name, value)).or_default() += 1;
    }

    /// Counts a refused connection.
    pub fn refused(&self, why: Refusal) {
        self.count("connections", why.as_str());
    }

    /// The count of `name` with label `value`.
    pub fn get(&self, name: &str, value: &str) -> u64 {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters
            .iter()
            .filter(|((n, v), _)| *n == name && *v == value)
            .map(|(_, c)| *c)
            .sum()
    }

    /// Marks a connection active until the guard drops.
    pub fn active(&self) -> ActiveGuard<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }

    /// Connections open now.
    pub fn active_now(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, extra_gauges: &[(&str, &str, f64)]) -> String {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        let mut last = "";
        for ((name, value), n) in counters.iter() {
            if *name != last {
                out.push_str(&format!("# TYPE dstack_gateway_{name}_total counter\n"));
                last = name;
            }
            let label = match *name {
                "connections" => "outcome",
                "registrations" => "outcome",
                "certificates" => "outcome",
                _ => "kind",
            };
            out.push_str(&format!(
                "dstack_gateway_{name}_total{{{label}=\"{value}\"}} {n}\n"
            ));
        }
        out.push_str("# TYPE dstack_gateway_active_connections gauge\n");
        out.push_str(&format!(
            "dstack_gateway_active_connections {}\n",
            self.active_now()
        ));
        for (name, help, value) in extra_gauges {
            out.push_str(&format!("# HELP dstack_gateway_{name} {help}\n"));
            out.push_str(&format!("# TYPE dstack_gateway_{name} gauge\n"));
            out.push_str(&format!("dstack_gateway_{name} {value}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_render_by_reason() {
        let m = Metrics::default();
        m.refused(Refusal::MalformedSni);
        m.refused(Refusal::MalformedSni);
        m.count("connections", "proxied");
        {
            let _a = m.active();
            assert_eq!(m.active_now(), 1);
        }
        assert_eq!(m.active_now(), 0);
        assert_eq!(m.get("connections", "malformed_sni"), 2);
        let text = m.render(&[("instances", "Registered instances.", 3.0)]);
        assert!(text.contains("dstack_gateway_connections_total{outcome=\"malformed_sni\"} 2\n"));
        assert!(text.contains("dstack_gateway_connections_total{outcome=\"proxied\"} 1\n"));
        assert!(text.contains("dstack_gateway_active_connections 0\n"));
        assert!(text.contains("dstack_gateway_instances 3\n"));
        assert_eq!(
            text.matches("# TYPE dstack_gateway_connections_total")
                .count(),
            1
        );
    }
}
