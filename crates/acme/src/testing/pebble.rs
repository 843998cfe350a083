//! Let's Encrypt's `pebble` test CA, resolving names through a given DNS server.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;

use super::{STARTUP_TIMEOUT, check_alive, free_port, read_log, stop};

pub(super) const PEBBLE: &str = "/usr/bin/pebble";

/// A `pebble` on loopback with its own listener CA; killed on drop.
#[derive(Debug)]
pub struct Pebble {
    child: Child,
    dir: TempDir,
    listen: SocketAddr,
    management: SocketAddr,
    tls_port: u16,
    http_port: u16,
    server_root: CertificateDer<'static>,
    server_root_pem: String,
}

impl Pebble {
    /// Starts `pebble` validating through the DNS server at `dns`, and waits
    /// until its directory answers.
    ///
    /// Debian's pebble ships no test certificates: the HTTPS listener gets a
    /// certificate from a CA made here ([`Pebble::server_root_pem`]).
    pub async fn start(dns: SocketAddr) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pebble-")
            .tempdir()
            .expect("creating the pebble directory");
        let (server_root, server_root_pem, cert_pem, key_pem) = listener_pki();
        fs::write(dir.path().join("cert.pem"), cert_pem).expect("writing cert.pem");
        fs::write(dir.path().join("key.pem"), key_pem).expect("writing key.pem");
        let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listen = loopback(free_port());
        let management = loopback(free_port());
        let (http_port, tls_port) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        fs::write(dir.path().join("pebble.json"), config.to_string()).expect("writing pebble.json");
        let log = File::create(dir.path().join("pebble.log")).expect("creating pebble.log");
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .arg("-dnsserver")
            .arg(dns.to_string())
            .current_dir(dir.path())
            // No random validation delay, no spurious badNonce, a fresh
            // authorization per order (so every test solves its challenges).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {PEBBLE}: {err}"));
        let mut pebble = Self {
            child,
            dir,
            listen,
            management,
            tls_port,
            http_port,
            server_root,
            server_root_pem,
        };
        pebble.wait_ready().await;
        pebble
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        let url = self.directory_url();
        loop {
            let log = self.log_path();
            check_alive(&mut self.child, "pebble", &log);
            if let Ok((200, _)) = self.get(&url).await {
                return;
            }
            assert!(
                start.elapsed() < STARTUP_TIMEOUT,
                "pebble did not serve {url} within {STARTUP_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The root of pebble's HTTPS listener certificate, PEM: what an ACME
    /// client must trust to talk to it.
    pub fn server_root_pem(&self) -> &str {
        &self.server_root_pem
    }

    /// [`Pebble::server_root_pem`] as DER.
    pub fn server_roots(&self) -> Vec<CertificateDer<'static>> {
        vec![self.server_root.clone()]
    }

    /// The CA that signs issued certificates, PEM: its root (`/roots/0`) then
    /// its intermediate (`/intermediates/0`) from the management interface.
    /// Pebble makes them anew on every start.
    pub async fn issuer_roots_pem(&self) -> String {
        let mut pem = String::new();
        for path in ["roots/0", "intermediates/0"] {
            let url = format!("https://{}/{path}", self.management);
            match self.get(&url).await {
                Ok((200, body)) => pem.push_str(&String::from_utf8_lossy(&body)),
                other => panic!("GET {url}: {other:?}; log:\n{}", self.log()),
            }
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
        }
        pem
    }

    /// The port pebble's validator dials for TLS-ALPN-01.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The port pebble's validator dials for HTTP-01.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `pebble`'s output so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pebble.log")
    }

    async fn get(&self, url: &str) -> Result<(u16, Bytes), String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.server_root.clone())
            .map_err(|err| err.to_string())?;
        let connector = crate::client::https_connector(roots).map_err(|err| err.to_string())?;
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let uri = url.parse().map_err(|err| format!("{err}"))?;
        let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|err| err.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A CA and the listener certificate it signs for `localhost` and 127.0.0.1:
/// (root DER, root PEM, leaf PEM, leaf key PEM).
fn listener_pki() -> (CertificateDer<'static>, String, String, String) {
    let ca_key = KeyPair::generate().expect("generating the listener CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca = ca_params
        .self_signed(&ca_key)
        .expect("signing the listener CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("generating the listener key");
    let params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        // The host as a QEMU user-net guest reaches it: gateway CVMs dial pebble there.
        "10.0.2.2".to_string(),
    ])
    .expect("listener parameters");
    let leaf = params
        .signed_by(&key, &issuer)
        .expect("signing the listener certificate");
    (ca.der().clone(), ca.pem(), leaf.pem(), key.serialize_pem())
}
