//! Custom domains: which app a name outside the gateway's base domains
//! belongs to, from its DNS TXT record (UPSTREAM §10.3, upstream
//! `proxy/tls_passthough.rs`).
//!
//! The record `<prefix>.<sni>` (prefix `_dstack-app-address` by default)
//! holds `<app-id-hex>:<port>`; with `compat` the legacy `_tapp-address.<sni>`
//! is queried in parallel, and if neither exists `<prefix>-wildcard.<parent>`
//! is tried, `<parent>` being the SNI minus its first label. One resolver is
//! shared by all connections so its TTL-aware cache works across them.
//!
//! Deviations from upstream, all narrowing what is accepted:
//! - Names are queried fully qualified (trailing dot) and built without IDNA
//!   processing, so resolv.conf search domains are never appended: a search
//!   domain with a wildcard TXT record could otherwise answer for any SNI.
//! - The app id must be non-empty hex (lowercased here), the port 1..=65535:
//!   upstream accepts any text before the colon and port 0.
//! - A transport failure (timeout, SERVFAIL) on the direct names still falls
//!   back to the wildcard, as upstream, but if that misses too the failure is
//!   reported instead of being turned into "no record".

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::lookup::TxtLookup;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{Name, ResolveError, TokioResolver};

/// Upstream's default `core.proxy.app_address_ns_prefix`.
pub const DEFAULT_PREFIX: &str = "_dstack-app-address";
/// The legacy prefix queried too when `compat` is on.
pub const LEGACY_PREFIX: &str = "_tapp-address";
/// Upstream's `dns_resolve` timeout default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries in the shared resolver's cache (upstream).
const CACHE_SIZE: usize = 256;
/// Upper bound on how long a miss is cached, so a record published right
/// after an app registers is seen soon (upstream).
const NEGATIVE_MAX_TTL: Duration = Duration::from_secs(10);

/// How to build an [`AppAddressResolver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverOptions {
    /// Record-name prefix (`core.proxy.app_address_ns_prefix`).
    pub prefix: String,
    /// Also query `_tapp-address.<sni>` (`app_address_ns_compat`).
    pub compat: bool,
    /// DNS servers, queried over UDP and TCP; empty means the system's
    /// (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Bound on one whole [`AppAddressResolver::lookup`], fallback included.
    pub timeout: Duration,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            compat: false,
            servers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Where a custom domain's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAddress {
    /// The app id (lowercase hex), looked up like an SNI id.
    pub app_id: String,
    /// The app's port.
    pub port: u16,
}

impl AppAddress {
    /// Parses a TXT value `<app-id-hex>:<port>`.
    pub fn parse(value: &[u8]) -> Result<Self, BadValue> {
        let value = std::str::from_utf8(value).map_err(|_| BadValue::NotUtf8)?;
        let (app_id, port) = value.split_once(':').ok_or(BadValue::NoColon)?;
        if app_id.is_empty() {
            return Err(BadValue::EmptyAppId);
        }
        if !app_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadValue::AppIdNotHex);
        }
        let port = Some(port)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or(BadValue::Port)?;
        Ok(Self {
            app_id: app_id.to_ascii_lowercase(),
            port,
        })
    }
}

/// Why a TXT value is not `<app-id-hex>:<port>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// The value is not UTF-8.
    #[error("value is not UTF-8")]
    NotUtf8,
    /// No `:` between app id and port.
    #[error("no ':' between app id and port")]
    NoColon,
    /// Nothing before the `:`.
    #[error("app id is empty")]
    EmptyAppId,
    /// The app id has a non-hex character.
    #[error("app id is not hex")]
    AppIdNotHex,
    /// The port is not a decimal number in 1..=65535.
    #[error("port is not a number in 1..=65535")]
    Port,
}

/// Why a custom domain could not be resolved to an app.
#[derive(Debug, thiserror::Error)]
pub enum TxtError {
    /// The resolver could not be built (unreadable system DNS config).
    #[error("failed to set up the DNS resolver")]
    Setup(#[source] ResolveError),
    /// A record name built from the SNI is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name")]
    InvalidName {
        /// The name that failed.
        name: String,
        /// Why.
        #[source]
        source: ProtoError,
    },
    /// None of the names has a TXT record.
    #[error("no app address TXT record for {sni}")]
    NoRecord {
        /// The SNI looked up.
        sni: String,
    },
    /// A TXT record exists but its value is unusable.
    #[error("bad app address {value:?} in the TXT record {name}")]
    BadValue {
        /// The record name.
        name: String,
        /// The first TXT string, lossily decoded.
        value: String,
        /// What is wrong with it.
        #[source]
        reason: BadValue,
    },
    /// The DNS query failed (timeout, refused, SERVFAIL) and no other name
    /// answered.
    #[error("DNS TXT lookup of {name} failed")]
    Resolve {
        /// The record name.
        name: String,
        /// The resolver's error.
        #[source]
        source: ResolveError,
    },
    /// The whole lookup took longer than the configured timeout.
    #[error("DNS TXT lookup for {sni} timed out after {timeout:?}")]
    Timeout {
        /// The SNI looked up.
        sni: String,
        /// The limit.
        timeout: Duration,
    },
}

/// Resolves custom domains to apps through one shared, caching resolver.
pub struct AppAddressResolver {
    prefix: String,
    compat: bool,
    timeout: Duration,
    resolver: TokioResolver,
}

impl fmt::Debug for AppAddressResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // hickory's resolver has no Debug; its config is what matters.
        f.debug_struct("AppAddressResolver")
            .field("prefix", &self.prefix)
            .field("compat", &self.compat)
            .field("timeout", &self.timeout)
            .field("servers", &self.resolver.config().name_servers())
            .finish()
    }
}

impl AppAddressResolver {
    /// Builds the resolver; reads `/etc/resolv.conf` when no servers are given.
    pub fn new(options: ResolverOptions) -> Result<Self, TxtError> {
        let mut builder = if options.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(TxtError::Setup)?
        } else {
            let mut group = NameServerConfigGroup::with_capacity(2 * options.servers.len());
            for &server in &options.servers {
                group.push(NameServerConfig::new(server, Protocol::Udp));
                group.push(NameServerConfig::new(server, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.cache_size = CACHE_SIZE;
        // Positive answers live for their TTL; misses for at most 10 s.
        opts.negative_min_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(NEGATIVE_MAX_TTL);
        // Per query; the whole lookup is bounded by `timeout` as well.
        opts.timeout = options.timeout;
        Ok(Self {
            prefix: options.prefix,
            compat: options.compat,
            timeout: options.timeout,
            resolver: builder.build(),
        })
    }

    /// Finds the app for custom domain `sni` (lowercase, no trailing dot).
    pub async fn lookup(&self, sni: &str) -> Result<AppAddress, TxtError> {
        tokio::time::timeout(self.timeout, self.lookup_untimed(sni))
            .await
            .map_err(|_| TxtError::Timeout {
                sni: sni.to_owned(),
                timeout: self.timeout,
            })?
    }

    async fn lookup_untimed(&self, sni: &str) -> Result<AppAddress, TxtError> {
        // The first transport failure, reported if nothing answers.
        let mut failure = None;
        let direct = format!("{}.{sni}", self.prefix);
        let answers = if self.compat && self.prefix != LEGACY_PREFIX {
            let legacy = format!("{LEGACY_PREFIX}.{sni}");
            let (a, b) = tokio::join!(self.query(&direct), self.query(&legacy));
            vec![(direct, a?), (legacy, b?)]
        } else {
            let a = self.query(&direct).await?;
            vec![(direct, a)]
        };
        // In order of preference: a bad value on the preferred name is an
        // error even if the legacy name would have answered (upstream).
        for (name, answer) in answers {
            if let Some(found) = take_answer(&name, answer, &mut failure)? {
                return Ok(found);
            }
        }
        if let Some((_, parent)) = sni.split_once('.') {
            let name = format!("{}-wildcard.{parent}", self.prefix);
            let answer = self.query(&name).await?;
            if let Some(found) = take_answer(&name, answer, &mut failure)? {
                return Ok(found);
            }
        }
        Err(failure.unwrap_or_else(|| TxtError::NoRecord {
            sni: sni.to_owned(),
        }))
    }

    /// Queries the TXT records of `name`, fully qualified.
    async fn query(&self, name: &str) -> Result<Result<TxtLookup, ResolveError>, TxtError> {
        let fqdn =
            Name::from_ascii(format!("{name}.")).map_err(|source| TxtError::InvalidName {
                name: name.to_owned(),
                source,
            })?;
        Ok(self.resolver.txt_lookup(fqdn).await)
    }
}

/// Whether a failed query means "no such record" (NXDOMAIN, or NOERROR
/// with no TXT). hickory reports SERVFAIL and REFUSED as "no records found"
/// too, but those say nothing about the record and count as failures.
fn is_miss(e: &ResolveError) -> bool {
    match e.proto().map(ProtoError::kind) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(
                response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            )
        }
        _ => false,
    }
}

/// Turns one query's outcome into an address, a miss (`None`), or an error;
/// transport failures are parked in `failure` so the next name can be tried.
fn take_answer(
    name: &str,
    answer: Result<TxtLookup, ResolveError>,
    failure: &mut Option<TxtError>,
) -> Result<Option<AppAddress>, TxtError> {
    let lookup = match answer {
        Ok(lookup) => lookup,
        Err(e) if is_miss(&e) => return Ok(None),
        Err(source) => {
            failure.get_or_insert(TxtError::Resolve {
                name: name.to_owned(),
                source,
            });
            return Ok(None);
        }
    };
    // Only the first string of the first TXT record that has one is used.
    let Some(value) = lookup.iter().find_map(|txt| txt.txt_data().first()) else {
        return Ok(None);
    };
    AppAddress::parse(value)
        .map(Some)
        .map_err(|reason| TxtError::BadValue {
            name: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;

    const NAMED: &str = "/usr/sbin/named";
    const ZONE: &str = "example.test";
    const ID: &str = "3327603e03f5bd1f830812ca4a789277fc31f577";

    /// A private BIND 9 serving one test zone on 127.0.0.1:<port>; killed
    /// when dropped.
    struct Named {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    }

    impl Drop for Named {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A port free for both UDP and TCP on 127.0.0.1 (a race, retried by the
    /// caller if named then fails to bind it).
    fn free_port() -> u16 {
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("udp bind");
            let port = udp.local_addr().unwrap().port();
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    fn write_config(dir: &Path, port: u16, records: &str) {
        let d = dir.display();
        let conf = format!(
            r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  allow-query {{ any; }};
}};
controls {{ }};
zone "{ZONE}" {{ type primary; file "{d}/zone"; check-names ignore; }};
"#
        );
        std::fs::write(dir.join("named.conf"), conf).unwrap();
        // SOA minimum 1 s: negative answers are barely cached.
        let zone = format!(
            "$TTL 60\n@ IN SOA ns.{ZONE}. admin.{ZONE}. 1 3600 600 86400 1\n\
             @ IN NS ns.{ZONE}.\nns IN A 127.0.0.1\n{records}"
        );
        std::fs::write(dir.join("zone"), zone).unwrap();
    }

    /// Starts named with `records` in zone `example.test`, or `None` when BIND
    /// is not installed. As root it runs without `-u`: it needs no privilege
    /// for an unprivileged port and its own directory.
    fn start_named(records: &str) -> Option<Named> {
        if !Path::new(NAMED).exists() {
            eprintln!("{NAMED} not installed; skipping the DNS test");
            return None;
        }
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            write_config(dir.path(), port, records);
            let mut child = Command::new(NAMED)
                .args(["-g", "-4", "-n", "1", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn named");
            // named -g logs to stderr; "running" means zones are loaded and
            // the sockets are bound.
            let stderr = child.stderr.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut log = String::new();
            let mut running = false;
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(line) => {
                        assert!(
                            !line.contains("not loaded due to errors"),
                            "test zone rejected by named:\n{log}{line}"
                        );
                        running |= line.ends_with(" running");
                        log.push_str(&line);
                        log.push('\n');
                        if running {
                            break;
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            let named = Named {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
            };
            if running && TcpStream::connect(named.addr).is_ok() {
                return Some(named);
            }
            last_log = log;
        }
        panic!("named did not start:\n{last_log}");
    }

    fn resolver(named: &Named, prefix: &str, compat: bool) -> AppAddressResolver {
        AppAddressResolver::new(ResolverOptions {
            prefix: prefix.to_owned(),
            compat,
            servers: vec![named.addr],
            timeout: Duration::from_secs(5),
        })
        .expect("resolver")
    }

    fn addr(app_id: &str, port: u16) -> AppAddress {
        AppAddress {
            app_id: app_id.to_owned(),
            port,
        }
    }

    fn sni(label: &str) -> String {
        format!("{label}.{ZONE}")
    }

    const RECORDS: &str = r#"
_dstack-app-address.direct IN TXT "3327603e03f5bd1f830812ca4a789277fc31f577:443"
_tapp-address.legacy IN TXT "aaaa:8080"
_dstack-app-address.both IN TXT "bbbb:1"
_tapp-address.both IN TXT "cccc:2"
_dstack-app-address-wildcard.wild IN TXT "dddd:8443"
_dstack-app-address.exact.wild IN TXT "eeee:9000"
_dstack-app-address.multi IN TXT "ABCD:443" "ffff:1"
_dstack-app-address.alias IN CNAME _dstack-app-address.direct
_my-prefix.custom IN TXT "1234:5678"
_dstack-app-address.badport IN TXT "abcd:99999"
_dstack-app-address.zeroport IN TXT "abcd:0"
_dstack-app-address.nocolon IN TXT "abcd"
_dstack-app-address.nothex IN TXT "xyz:80"
_dstack-app-address.noid IN TXT ":80"
_dstack-app-address.space IN TXT "abcd:443 "
_dstack-app-address.empty IN TXT ""
_dstack-app-address.badfirst IN TXT "oops"
_tapp-address.badfirst IN TXT "abcd:443"
_dstack-app-address-wildcard.badwild IN TXT "nope"
_dstack-app-address.onlya IN A 10.0.0.1
"#;

    #[tokio::test]
    async fn lookups_against_bind() {
        let Some(named) = start_named(RECORDS) else {
            return;
        };
        let r = resolver(&named, DEFAULT_PREFIX, false);
        assert_eq!(r.lookup(&sni("direct")).await.unwrap(), addr(ID, 443));
        // Via CNAME, and the first string of a multi-string record (the id
        // lowercased).
        assert_eq!(r.lookup(&sni("alias")).await.unwrap(), addr(ID, 443));
        assert_eq!(r.lookup(&sni("multi")).await.unwrap(), addr("abcd", 443));
        // Wildcard fallback: `<prefix>-wildcard.<parent>`, but a direct
        // record under the same parent wins.
        assert_eq!(
            r.lookup(&format!("anything.{}", sni("wild")))
                .await
                .unwrap(),
            addr("dddd", 8443)
        );
        assert_eq!(
            r.lookup(&format!("exact.{}", sni("wild"))).await.unwrap(),
            addr("eeee", 9000)
        );
        // The legacy name is not asked without compat.
        assert!(matches!(
            r.lookup(&sni("legacy")).await,
            Err(TxtError::NoRecord { sni: s }) if s == sni("legacy")
        ));
        // Same answer again, from the cache.
        assert_eq!(r.lookup(&sni("direct")).await.unwrap(), addr(ID, 443));

        let compat = resolver(&named, DEFAULT_PREFIX, true);
        assert_eq!(
            compat.lookup(&sni("legacy")).await.unwrap(),
            addr("aaaa", 8080)
        );
        assert_eq!(compat.lookup(&sni("both")).await.unwrap(), addr("bbbb", 1));
        assert_eq!(compat.lookup(&sni("direct")).await.unwrap(), addr(ID, 443));
        // The prefix's record is preferred even when it is bad (upstream).
        assert!(matches!(
            compat.lookup(&sni("badfirst")).await,
            Err(TxtError::BadValue {
                reason: BadValue::NoColon,
                ..
            })
        ));

        // A legacy prefix with compat queries it once.
        let legacy = resolver(&named, LEGACY_PREFIX, true);
        assert_eq!(
            legacy.lookup(&sni("legacy")).await.unwrap(),
            addr("aaaa", 8080)
        );

        let custom = resolver(&named, "_my-prefix", false);
        assert_eq!(
            custom.lookup(&sni("custom")).await.unwrap(),
            addr("1234", 5678)
        );
        assert!(matches!(
            custom.lookup(&sni("direct")).await,
            Err(TxtError::NoRecord { .. })
        ));
    }

    #[tokio::test]
    async fn misses_and_bad_values_against_bind() {
        let Some(named) = start_named(RECORDS) else {
            return;
        };
        let r = resolver(&named, DEFAULT_PREFIX, true);
        for missing in [
            sni("missing"),
            sni("onlya"),
            format!("deep.er.{}", sni("missing")),
        ] {
            match r.lookup(&missing).await {
                Err(TxtError::NoRecord { sni: s }) => assert_eq!(s, missing),
                other => panic!("{missing}: {other:?}"),
            }
        }
        for (label, want) in [
            ("badport", BadValue::Port),
            ("zeroport", BadValue::Port),
            ("space", BadValue::Port),
            ("nocolon", BadValue::NoColon),
            ("nothex", BadValue::AppIdNotHex),
            ("noid", BadValue::EmptyAppId),
            ("empty", BadValue::NoColon),
        ] {
            match r.lookup(&sni(label)).await {
                Err(TxtError::BadValue { name, reason, .. }) => {
                    assert_eq!(reason, want, "{label}");
                    assert_eq!(name, format!("{DEFAULT_PREFIX}.{}", sni(label)));
                }
                other => panic!("{label}: {other:?}"),
            }
        }
        // A bad wildcard value is an error, not a miss.
        match r.lookup(&format!("x.{}", sni("badwild"))).await {
            Err(TxtError::BadValue {
                name,
                value,
                reason,
            }) => {
                assert_eq!(
                    name,
                    format!("{DEFAULT_PREFIX}-wildcard.{}", sni("badwild"))
                );
                assert_eq!(value, "nope");
                assert_eq!(reason, BadValue::NoColon);
            }
            other => panic!("{other:?}"),
        }
        // A zone the server does not serve: REFUSED is a failure, not a
        // miss; the first failing name is reported. A one-label name has no
        // parent, so no wildcard is tried; the top of the zone has parent
        // `test`, which this server does not serve either.
        for (query, failing) in [
            (
                "app.elsewhere.test",
                format!("{DEFAULT_PREFIX}.app.elsewhere.test"),
            ),
            ("nodots", format!("{DEFAULT_PREFIX}.nodots")),
            (ZONE, format!("{DEFAULT_PREFIX}-wildcard.test")),
        ] {
            match r.lookup(query).await {
                Err(TxtError::Resolve { name, .. }) => assert_eq!(name, failing, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
        // Not a DNS name at all.
        assert!(matches!(
            r.lookup("a..b").await,
            Err(TxtError::InvalidName { .. })
        ));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Takes UDP and TCP on one port and never answers.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = udp.local_addr().unwrap();
        let _tcp = TcpListener::bind(server).unwrap();
        let timeout = Duration::from_millis(300);
        let r = AppAddressResolver::new(ResolverOptions {
            servers: vec![server],
            timeout,
            ..ResolverOptions::default()
        })
        .unwrap();
        let started = Instant::now();
        match r.lookup("a.example.test").await {
            Err(TxtError::Timeout { sni, timeout: t }) => {
                assert_eq!(sni, "a.example.test");
                assert_eq!(t, timeout);
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn resolver_options() {
        let servers = vec![
            SocketAddr::from(([127, 0, 0, 1], 5353)),
            SocketAddr::from(([10, 0, 0, 1], 53)),
        ];
        let r = AppAddressResolver::new(ResolverOptions {
            servers: servers.clone(),
            ..ResolverOptions::default()
        })
        .unwrap();
        let opts = r.resolver.options();
        assert_eq!(opts.cache_size, 256);
        assert_eq!(opts.negative_max_ttl, Some(Duration::from_secs(10)));
        assert_eq!(opts.timeout, DEFAULT_TIMEOUT);
        let used: Vec<_> = r
            .resolver
            .config()
            .name_servers()
            .iter()
            .map(|ns| (ns.socket_addr, ns.protocol))
            .collect();
        assert_eq!(
            used,
            [
                (servers[0], Protocol::Udp),
                (servers[0], Protocol::Tcp),
                (servers[1], Protocol::Udp),
                (servers[1], Protocol::Tcp),
            ]
        );
        assert!(format!("{r:?}").contains("_dstack-app-address"));
    }

    #[test]
    fn parse_values() {
        assert_eq!(
            AppAddress::parse(format!("{ID}:443").as_bytes()),
            Ok(addr(ID, 443))
        );
        assert_eq!(
            AppAddress::parse(b"ABCdef:65535"),
            Ok(addr("abcdef", 65535))
        );
        assert_eq!(AppAddress::parse(b"ab:cd:80"), Err(BadValue::Port));
        assert_eq!(AppAddress::parse(b"abcd:"), Err(BadValue::Port));
        assert_eq!(AppAddress::parse(b"abcd:+80"), Err(BadValue::Port));
        assert_eq!(AppAddress::parse(b"abcd:65536"), Err(BadValue::Port));
        assert_eq!(AppAddress::parse(b"abcd:0"), Err(BadValue::Port));
        assert_eq!(AppAddress::parse(b" abcd:80"), Err(BadValue::AppIdNotHex));
        assert_eq!(AppAddress::parse(b"abcd"), Err(BadValue::NoColon));
        assert_eq!(AppAddress::parse(b":80"), Err(BadValue::EmptyAppId));
        assert_eq!(AppAddress::parse(b"\xff:80"), Err(BadValue::NotUtf8));
    }
}
