//! bind9's `named` serving one zone that accepts TSIG-signed updates.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;

use super::{STARTUP_TIMEOUT, check_alive, free_port, read_log, stop};
use crate::dns::{Rfc2136, TsigKey};

pub(super) const NAMED: &str = "/usr/sbin/named";

/// A `named` on 127.0.0.1 on a free port, primary for one zone, updatable with
/// one TSIG key, no recursion; killed on drop.
#[derive(Debug)]
pub struct Bind9 {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
    zone: String,
    tsig: TsigKey,
}

impl Bind9 {
    /// Starts `named` for `zone` (SOA, NS `ns.<zone>` at 127.0.0.1) and waits
    /// until it answers.
    pub async fn start(zone: &str, tsig: TsigKey) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bind9-")
            .tempdir()
            .expect("creating the bind9 directory");
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let zone = zone.trim_end_matches('.').to_string();
        let d = dir.path().display();
        let key = tsig.name();
        let conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{key}" {{
    algorithm {alg};
    secret "{secret}";
}};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    allow-update {{ key "{key}"; }};
}};
"#,
            alg = tsig.algorithm().as_str(),
            secret = &*tsig.secret_base64(),
        );
        let zone_file = format!(
            "$TTL 60\n\
             @ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n\
             @ IN NS ns.{zone}.\n\
             ns IN A 127.0.0.1\n"
        );
        fs::write(dir.path().join("named.conf"), conf).expect("writing named.conf");
        fs::write(dir.path().join("zone.db"), zone_file).expect("writing the zone file");
        let log = File::create(dir.path().join("named.log")).expect("creating named.log");
        // -g: foreground, logs to stderr; -n 1: one worker (CI shares two
        // cores); -4: the loopback listener is IPv4. Root in CI: no -u needed,
        // the zone's journal goes into our own directory.
        let child = Command::new(NAMED)
            .args(["-g", "-4", "-n", "1", "-c"])
            .arg(dir.path().join("named.conf"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {NAMED}: {err}"));
        let mut bind = Self {
            child,
            dir,
            addr,
            zone,
            tsig,
        };
        bind.wait_ready().await;
        bind
    }

    async fn wait_ready(&mut self) {
        let client = Rfc2136::new(self.addr, &self.zone, None).expect("valid zone name");
        let start = Instant::now();
        loop {
            let log = self.log_path();
            check_alive(&mut self.child, "named", &log);
            // The apex answers (an empty TXT set) once the zone is loaded.
            if client.query_txt(&self.zone).await.is_ok() {
                return;
            }
            assert!(
                start.elapsed() < STARTUP_TIMEOUT,
                "named did not answer on {} within {STARTUP_TIMEOUT:?}; log:\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Where `named` listens (TCP and UDP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone it serves.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The key updates are allowed with.
    pub fn tsig(&self) -> &TsigKey {
        &self.tsig
    }

    /// An RFC 2136 client for the zone with the right key.
    pub fn rfc2136(&self) -> Rfc2136 {
        Rfc2136::new(self.addr, &self.zone, Some(self.tsig.clone())).expect("valid zone name")
    }

    /// Adds an A record, through an RFC 2136 update like any other.
    pub async fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.rfc2136()
            .add_address(name, IpAddr::V4(ip))
            .await
            .unwrap_or_else(|err| panic!("adding A {name}: {err}; log:\n{}", self.log()));
    }

    /// `named`'s output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("named.log")
    }
}

impl Drop for Bind9 {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
