//! Where a connection goes, decided from its SNI alone (UPSTREAM §10.1,
//! upstream `proxy.rs` `handle_connection` + `parse_dst_info`).
//!
//! The name is split at its first `.`. If the rest is a base domain the
//! gateway holds a wildcard certificate for, the first label names the
//! target as `<id>[-<port>[s|g]]`; otherwise the whole name is a custom
//! domain, resolved through DNS TXT (see `txt`).
//!
//! App and instance ids are *not* validated here (upstream does not either):
//! whatever the label holds is looked up in the registry, and a miss is the
//! caller's "unknown app". Checking for 40 hex digits here would duplicate the
//! registry's notion of an id, and a wrong id costs one map lookup, not a
//! crash. The SNI reaching this point has already been lowercased and limited
//! to `[a-z0-9-.*_]` by `sni::normalize_host_name`.
//!
//! Deviations from upstream, each turning a doomed connection into a named
//! error before any backend is touched:
//! - `gateway`/`health` with passthrough (`-s`) are refused; upstream looks
//!   them up as app ids, which always misses. With `g` they are refused too;
//!   upstream negotiates h2 and then serves HTTP/1.1 on it.
//! - `localhost` with the debug flag off is refused; upstream looks it up as
//!   an app id, which always misses.
//! - Ports must be plain digits and non-zero (`+80` and `0` parse as `u16`).

use std::collections::BTreeSet;

/// How the gateway handles the TLS session of a routed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Terminate TLS and relay plain TCP (no suffix).
    Terminate,
    /// Relay the TLS bytes untouched; the app terminates (`s` suffix).
    Passthrough,
    /// Terminate TLS offering ALPN `h2` only, relay cleartext h2 (`g` suffix).
    H2,
}

/// The destination named by an SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An app id or instance id on a gateway base domain.
    App {
        /// The id label, looked up as an instance id, then an app id.
        id: String,
        /// The app's port to relay to.
        port: u16,
        /// How TLS is handled.
        mode: Mode,
    },
    /// `gateway.<base>`: this gateway node's own info endpoints (port 80,
    /// TLS terminated).
    Gateway,
    /// `health.<base>`: the legacy health check (port 80, TLS terminated).
    Health,
    /// `localhost[-<port>[s|g]].<base>`: 127.0.0.1 on the gateway's host, only
    /// when the insecure debug flag allows it.
    Localhost {
        /// Port on 127.0.0.1.
        port: u16,
        /// How TLS is handled.
        mode: Mode,
    },
    /// Any other name: a custom domain found through its TXT record; always
    /// TLS passthrough.
    CustomDomain(String),
}

/// Why an SNI cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The name has no `.` (upstream: "invalid sni").
    #[error("server name {0:?} has no dot")]
    NoDot(String),
    /// Nothing before the first `-` (or the first `.`).
    #[error("server name {0:?} has an empty id")]
    EmptyId(String),
    /// More than one `-` in the first label.
    #[error("subdomain {0:?} is not <id>[-<port>[s|g]]")]
    TooManyDashes(String),
    /// Both `s` and `g`: passthrough and h2 termination exclude each other.
    #[error("subdomain {0:?} asks for both passthrough (s) and h2 (g)")]
    PassthroughAndH2(String),
    /// The port is not a decimal number in 1..=65535.
    #[error("invalid port {port:?} in subdomain {subdomain:?}")]
    InvalidPort {
        /// The first label.
        subdomain: String,
        /// The text that should have been a port.
        port: String,
    },
    /// `gateway` and `health` serve plain HTTP on port 80 behind terminated TLS
    /// only.
    #[error("{id} only serves port 80 with TLS terminated, not {port} ({mode:?})")]
    ReservedId {
        /// `gateway` or `health`.
        id: &'static str,
        /// The requested port.
        port: u16,
        /// The requested mode.
        mode: Mode,
    },
    /// `localhost` was asked for but the debug flag is off.
    #[error("the localhost backend is disabled")]
    LocalhostDisabled,
}

/// The domains the gateway holds wildcard certificates for (`*.<base>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseDomains {
    domains: BTreeSet<String>,
}

impl BaseDomains {
    /// An empty set: every name is then a custom domain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a base domain; a leading `*.` and a trailing `.` are dropped and
    /// the name is lowercased, so a certificate's SAN can be passed as is.
    pub fn insert(&mut self, domain: &str) {
        let domain = domain.strip_prefix("*.").unwrap_or(domain);
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.domains.insert(domain.to_ascii_lowercase());
    }

    /// Whether `domain` (already lowercase) is one of the base domains.
    pub fn contains(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    /// Iterates the base domains in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().map(String::as_str)
    }
}

impl<S: AsRef<str>> FromIterator<S> for BaseDomains {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut set = Self::new();
        for domain in iter {
            set.insert(domain.as_ref());
        }
        set
    }
}

/// Decides the route for `sni`.
///
/// As upstream, only the first label is examined: `a.b.<base>` is not under
/// `<base>`'s wildcard and so is a custom domain, and so is a base domain
/// itself (`example.com` for base `example.com` splits into `example` +
/// `com`). `allow_localhost` is `core.debug.insecure_localhost_backend`.
pub fn route(
    sni: &str,
    base_domains: &BaseDomains,
    allow_localhost: bool,
) -> Result<Route, RouteError> {
    // sni.rs already lowercases; doing it again keeps this usable on its own.
    let sni = sni.to_ascii_lowercase();
    let Some((subdomain, base)) = sni.split_once('.') else {
        return Err(RouteError::NoDot(sni));
    };
    if !base_domains.contains(base) {
        return Ok(Route::CustomDomain(sni));
    }
    let (id, port, mode) = parse_subdomain(subdomain)?;
    match id {
        "gateway" | "health" => {
            let id = if id == "gateway" { "gateway" } else { "health" };
            if port != 80 || mode != Mode::Terminate {
                return Err(RouteError::ReservedId { id, port, mode });
            }
            Ok(if id == "gateway" {
                Route::Gateway
            } else {
                Route::Health
            })
        }
        "localhost" if allow_localhost => Ok(Route::Localhost { port, mode }),
        "localhost" => Err(RouteError::LocalhostDisabled),
        _ => Ok(Route::App {
            id: id.to_owned(),
            port,
            mode,
        }),
    }
}

/// Parses `<id>[-<port>[s|g]]` (upstream `parse_dst_info`): `g` is stripped
/// before `s`, so `443sg` is refused as both, while `443gs` leaves `443g` as
/// the port and is refused as a bad port. The default port is 443 with `s`,
/// otherwise 80; `<id>-`, `<id>-s` and `<id>-g` use the default.
fn parse_subdomain(subdomain: &str) -> Result<(&str, u16, Mode), RouteError> {
    let mut parts = subdomain.split('-');
    let id = parts.next().unwrap_or_default();
    let suffix = parts.next();
    if parts.next().is_some() {
        return Err(RouteError::TooManyDashes(subdomain.to_owned()));
    }
    if id.is_empty() {
        return Err(RouteError::EmptyId(subdomain.to_owned()));
    }
    let Some(suffix) = suffix else {
        return Ok((id, 80, Mode::Terminate));
    };
    let (rest, h2) = match suffix.strip_suffix('g') {
        Some(rest) => (rest, true),
        None => (suffix, false),
    };
    let (port, passthrough) = match rest.strip_suffix('s') {
        Some(port) => (port, true),
        None => (rest, false),
    };
    let mode = match (passthrough, h2) {
        (true, true) => return Err(RouteError::PassthroughAndH2(subdomain.to_owned())),
        (true, false) => Mode::Passthrough,
        (false, true) => Mode::H2,
        (false, false) => Mode::Terminate,
    };
    let port = if port.is_empty() {
        if passthrough { 443 } else { 80 }
    } else {
        parse_port(port).ok_or_else(|| RouteError::InvalidPort {
            subdomain: subdomain.to_owned(),
            port: port.to_owned(),
        })?
    };
    Ok((id, port, mode))
}

/// A decimal port in 1..=65535. Stricter than upstream's `u16::from_str`,
/// which also takes `+80` and `0`: neither can be a real destination.
fn parse_port(text: &str) -> Option<u16> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&p| p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3327603e03f5bd1f830812ca4a789277fc31f577";

    fn bases() -> BaseDomains {
        ["app.dstack.org", "*.Gw.Example.COM."]
            .into_iter()
            .collect()
    }

    fn r(sni: &str) -> Result<Route, RouteError> {
        route(sni, &bases(), false)
    }

    fn app(id: &str, port: u16, mode: Mode) -> Route {
        Route::App {
            id: id.to_owned(),
            port,
            mode,
        }
    }

    #[test]
    fn upstream_doc_examples() {
        assert_eq!(
            r(&format!("{ID}.app.dstack.org")),
            Ok(app(ID, 80, Mode::Terminate))
        );
        assert_eq!(
            r(&format!("{ID}-8080.app.dstack.org")),
            Ok(app(ID, 8080, Mode::Terminate))
        );
        assert_eq!(
            r(&format!("{ID}-443s.app.dstack.org")),
            Ok(app(ID, 443, Mode::Passthrough))
        );
        assert_eq!(
            r(&format!("{ID}-s.app.dstack.org")),
            Ok(app(ID, 443, Mode::Passthrough))
        );
        assert_eq!(
            r(&format!("{ID}-50051g.app.dstack.org")),
            Ok(app(ID, 50051, Mode::H2))
        );
    }

    #[test]
    fn suffix_defaults() {
        assert_eq!(r("abc-g.app.dstack.org"), Ok(app("abc", 80, Mode::H2)));
        assert_eq!(
            r("abc-.app.dstack.org"),
            Ok(app("abc", 80, Mode::Terminate))
        );
        assert_eq!(
            r("abc-8443s.app.dstack.org"),
            Ok(app("abc", 8443, Mode::Passthrough))
        );
        assert_eq!(
            r("abc-080.app.dstack.org"),
            Ok(app("abc", 80, Mode::Terminate))
        );
        assert_eq!(
            r("abc-65535.app.dstack.org"),
            Ok(app("abc", 65535, Mode::Terminate))
        );
        assert_eq!(r("abc-1g.app.dstack.org"), Ok(app("abc", 1, Mode::H2)));
    }

    #[test]
    fn both_suffixes_rejected() {
        assert_eq!(
            r("abc-443sg.app.dstack.org"),
            Err(RouteError::PassthroughAndH2("abc-443sg".into()))
        );
        assert_eq!(
            r("abc-sg.app.dstack.org"),
            Err(RouteError::PassthroughAndH2("abc-sg".into()))
        );
        // `g` is stripped first, so `gs` leaves a `g` in the port.
        assert_eq!(
            r("abc-443gs.app.dstack.org"),
            Err(RouteError::InvalidPort {
                subdomain: "abc-443gs".into(),
                port: "443g".into()
            })
        );
        assert!(matches!(
            r("abc-gs.app.dstack.org"),
            Err(RouteError::InvalidPort { .. })
        ));
    }

    #[test]
    fn dash_rules() {
        assert_eq!(
            r("a-b-c.app.dstack.org"),
            Err(RouteError::TooManyDashes("a-b-c".into()))
        );
        assert_eq!(
            r("a--80.app.dstack.org"),
            Err(RouteError::TooManyDashes("a--80".into()))
        );
        assert_eq!(
            r("-80.app.dstack.org"),
            Err(RouteError::EmptyId("-80".into()))
        );
        assert_eq!(
            r(".app.dstack.org"),
            Err(RouteError::EmptyId(String::new()))
        );
    }

    #[test]
    fn port_rules() {
        for bad in [
            "65536",
            "99999999999",
            "0",
            "+80",
            "8o",
            "80x",
            " 80",
            "s80",
        ] {
            let sni = format!("abc-{bad}.app.dstack.org");
            assert!(
                matches!(r(&sni), Err(RouteError::InvalidPort { port, .. }) if port == bad),
                "{bad}: {:?}",
                r(&sni)
            );
        }
        assert!(matches!(
            r("abc-65536s.app.dstack.org"),
            Err(RouteError::InvalidPort { port, .. }) if port == "65536"
        ));
    }

    #[test]
    fn reserved_ids() {
        assert_eq!(r("gateway.app.dstack.org"), Ok(Route::Gateway));
        assert_eq!(r("gateway-80.app.dstack.org"), Ok(Route::Gateway));
        assert_eq!(r("health.app.dstack.org"), Ok(Route::Health));
        assert_eq!(r("health-80.gw.example.com"), Ok(Route::Health));
        assert_eq!(
            r("gateway-8080.app.dstack.org"),
            Err(RouteError::ReservedId {
                id: "gateway",
                port: 8080,
                mode: Mode::Terminate
            })
        );
        assert_eq!(
            r("gateway-s.app.dstack.org"),
            Err(RouteError::ReservedId {
                id: "gateway",
                port: 443,
                mode: Mode::Passthrough
            })
        );
        assert_eq!(
            r("health-80g.app.dstack.org"),
            Err(RouteError::ReservedId {
                id: "health",
                port: 80,
                mode: Mode::H2
            })
        );
        assert_eq!(
            r("health-80s.app.dstack.org"),
            Err(RouteError::ReservedId {
                id: "health",
                port: 80,
                mode: Mode::Passthrough
            })
        );
    }

    #[test]
    fn localhost_needs_the_flag() {
        assert_eq!(
            r("localhost.app.dstack.org"),
            Err(RouteError::LocalhostDisabled)
        );
        assert_eq!(
            r("localhost-8080s.app.dstack.org"),
            Err(RouteError::LocalhostDisabled)
        );
        let b = bases();
        assert_eq!(
            route("localhost.app.dstack.org", &b, true),
            Ok(Route::Localhost {
                port: 80,
                mode: Mode::Terminate
            })
        );
        assert_eq!(
            route("localhost-8443s.app.dstack.org", &b, true),
            Ok(Route::Localhost {
                port: 8443,
                mode: Mode::Passthrough
            })
        );
        assert_eq!(
            route("localhost-50051g.app.dstack.org", &b, true),
            Ok(Route::Localhost {
                port: 50051,
                mode: Mode::H2
            })
        );
        // Only the whole id is reserved.
        assert_eq!(
            route("localhostx.app.dstack.org", &b, false),
            Ok(app("localhostx", 80, Mode::Terminate))
        );
        // localhost on a custom domain is just a name.
        assert_eq!(
            route("localhost.other.org", &b, false),
            Ok(Route::CustomDomain("localhost.other.org".into()))
        );
    }

    #[test]
    fn custom_domains() {
        assert_eq!(
            r("www.example.org"),
            Ok(Route::CustomDomain("www.example.org".into()))
        );
        // Two labels above a base: not covered by its wildcard.
        assert_eq!(
            r(&format!("x.{ID}.app.dstack.org")),
            Ok(Route::CustomDomain(format!("x.{ID}.app.dstack.org")))
        );
        // The base domain itself splits into `app` + `dstack.org`.
        assert_eq!(
            r("app.dstack.org"),
            Ok(Route::CustomDomain("app.dstack.org".into()))
        );
        // Suffix rules do not apply to custom domains.
        assert_eq!(
            r("a-b-c.example.org"),
            Ok(Route::CustomDomain("a-b-c.example.org".into()))
        );
        assert_eq!(r("localhost"), Err(RouteError::NoDot("localhost".into())));
        assert_eq!(r(""), Err(RouteError::NoDot(String::new())));
    }

    #[test]
    fn nested_base_domains() {
        // With both `dstack.org` and `app.dstack.org` as bases, the first
        // split decides: `app.dstack.org` routes id `app` under `dstack.org`.
        let b: BaseDomains = ["dstack.org", "app.dstack.org"].into_iter().collect();
        assert_eq!(
            route("app.dstack.org", &b, false),
            Ok(app("app", 80, Mode::Terminate))
        );
        assert_eq!(
            route("abc-s.app.dstack.org", &b, false),
            Ok(app("abc", 443, Mode::Passthrough))
        );
    }

    #[test]
    fn case_and_base_set() {
        assert_eq!(
            r(&format!("{}-443S.APP.dstack.org", ID.to_uppercase())),
            Ok(app(ID, 443, Mode::Passthrough))
        );
        let b = bases();
        assert!(b.contains("gw.example.com"));
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            ["app.dstack.org", "gw.example.com"]
        );
        assert_eq!(
            route("abc.app.dstack.org", &BaseDomains::new(), false),
            Ok(Route::CustomDomain("abc.app.dstack.org".into()))
        );
    }

    #[test]
    fn odd_ids_are_passed_through_not_rejected() {
        // Not hex, wildcard-looking, underscores: all left to the lookup.
        for id in ["zz", "*", "_x", "UPPER"] {
            let sni = format!("{id}.app.dstack.org");
            assert_eq!(
                r(&sni),
                Ok(app(&id.to_ascii_lowercase(), 80, Mode::Terminate))
            );
        }
    }
}
