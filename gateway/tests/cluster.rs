#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
//! A real three-replica gateway cluster: three `dstack-gateway` processes on
//! a three-member etcd, certificates from pebble through DNS-01 on bind9,
//! and "CVMs" that are userspace WireGuard peers serving TCP on their tunnel
//! address. Clients are rustls clients on 127.0.0.1 that check the
//! certificate against pebble's issuing CA.
//!
//! One test with numbered steps: setup (processes, one issuance) is the
//! slow part, and the later steps (losing a replica, renewing) build on the
//! earlier ones' state.

use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dstack_acme::testing::{Bind9, Pebble, free_port, tools_available};
use dstack_acme::{TsigAlgorithm, TsigKey, parse_pem_certs};
use dstack_cluster_kv::testing::EtcdCluster;
use dstack_proto::gateway::RegisterCvmResponse;
use dstack_wgnet::{Peer, WgConfig, WgNet};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const BASE: &str = "apps.test";
/// bind9's zone: holds both the base domain and the custom domain.
const ZONE: &str = "test";
const TSIG_NAME: &str = "gateway-update";
const ADMIN_TOKEN: &str = "cluster-test-admin-token";
/// The cluster's app id (names its etcd namespace).
const GATEWAY_APP_ID: &str = "9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";
const APP1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const APP2: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const APP3: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
const APP4: &str = "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4";
const UNKNOWN: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
/// Upper bound for anything that converges through etcd and WireGuard
/// handshakes (a dropped first handshake is retried after 5 s).
const CONVERGE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Processes

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if !tools_available() {
        return Some("/usr/sbin/named or /usr/bin/pebble is not installed".into());
    }
    let etcd = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let found = Path::new(&etcd).is_file()
        || std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(&etcd).is_file()));
    (!found).then(|| format!("{etcd} is not installed (Debian: etcd-server)"))
}

/// One `dstack-gateway serve` process.
struct Gateway {
    id: u32,
    proxy: SocketAddr,
    rpc: SocketAddr,
    admin: SocketAddr,
    debug: SocketAddr,
    child: Option<Child>,
    config: PathBuf,
    tsig_secret: String,
    log: PathBuf,
}

/// What every node's configuration shares.
struct ClusterSetup<'a> {
    dir: &'a Path,
    etcd: Vec<String>,
    bind: SocketAddr,
    pebble_directory: String,
    pebble_root: PathBuf,
    key_file: PathBuf,
    tsig_secret: String,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Gateway {
    fn spawn(setup: &ClusterSetup<'_>, id: u32) -> Self {
        let (proxy, rpc, admin, debug, wg) = (
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
        );
        let etcd = setup
            .etcd
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"
[node]
id = {id}
url = "https://{rpc}"

[proxy]
listen = ["{proxy}"]
base_domains = ["{BASE}"]
app_address_dns_servers = ["{bind}"]

[proxy.timeouts]
handshake = "2s"

[rpc]
listen = "{rpc}"

[wg]
listen = "{wg}"
ip = "10.8.0.{id}/16"
client_ip_range = "10.8.64.0/18"
reserved_net = ["10.8.0.0/24"]
endpoint = "{wg}"

[admin]
listen = "{admin}"

[etcd]
endpoints = [{etcd}]

[acme]
directory = "{directory}"
ca_root = "{ca_root}"

[acme.rfc2136]
server = "{bind}"
zone = "{ZONE}"
tsig_name = "{TSIG_NAME}"

[tee]
insecure_key_file = "{key_file}"

[debug]
insecure_debug_rpc = "{debug}"
"#,
            bind = setup.bind,
            directory = setup.pebble_directory,
            ca_root = setup.pebble_root.display(),
            key_file = setup.key_file.display(),
        );
        let config_path = setup.dir.join(format!("gateway-{id}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let mut gateway = Self {
            id,
            proxy,
            rpc,
            admin,
            debug,
            child: None,
            config: config_path,
            tsig_secret: setup.tsig_secret.clone(),
            log: setup.dir.join(format!("gateway-{id}.log")),
        };
        gateway.start();
        gateway
    }

    /// Runs the process (again: same configuration, ports and keys).
    fn start(&mut self) {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dstack-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("DSTACK_GATEWAY_TSIG_SECRET", &self.tsig_secret)
            .env("DSTACK_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting dstack-gateway");
        self.child = Some(child);
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "gateway {} exited with {status}; log:\n{}",
                self.id,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        // On failure, or on request (GATEWAY_TEST_LOGS=1), show what the node said.
        if std::thread::panicking() || std::env::var_os("GATEWAY_TEST_LOGS").is_some() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- gateway {} log (last 40 lines) ---\n{}",
                self.id,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP by hand (the admin API, the Debug RPC, the apps)

/// Reads one HTTP/1.1 response: status and body (by Content-Length, else
/// to EOF).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(u16, String), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed after {} bytes, before the headers",
                buf.len()
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf[head_end..].to_vec();
    loop {
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            // A TLS peer that hangs up without close_notify, after the body.
            Err(_) if length.is_none() => break,
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request on `stream` (`Connection: close`).
async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| format!("writing: {e}"))?;
    stream.flush().await.map_err(|e| format!("flushing: {e}"))?;
    read_response(stream).await
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let call = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        request(&mut tcp, method, &addr.to_string(), path, &headers, body).await
    };
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// An admin API call with the token; the body parsed as JSON.
async fn admin(gw: &Gateway, method: &str, body: Value) -> (u16, Value) {
    let (status, text) = http(
        gw.admin,
        "POST",
        &format!("/prpc/{method}"),
        Some(ADMIN_TOKEN),
        &body.to_string(),
    )
    .await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// `series` summed over `gateways`.
async fn metric_sum(gateways: &[&Gateway], series: &str) -> u64 {
    let mut sum = 0;
    for gw in gateways {
        sum += metric(gw, series).await;
    }
    sum
}

/// A counter or gauge from the node's `/metrics` (0 when absent).
async fn metric(gw: &Gateway, series: &str) -> u64 {
    let (status, text) = http(gw.admin, "GET", "/metrics", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "/metrics of node {}: {text}", gw.id);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn issued_series() -> &'static str {
    "dstack_gateway_certificates_total{outcome=\"issued\"}"
}

fn refused_series(reason: &str) -> String {
    format!("dstack_gateway_connections_total{{outcome=\"{reason}\"}}")
}

/// Upstream's Debug `RegisterCvm` (no attestation).
async fn debug_register(
    gw: &Gateway,
    public_key: &str,
    app_id: &str,
    instance_id: &str,
    policy: &Value,
) -> Result<RegisterCvmResponse, (u16, String)> {
    let body = json!({
        "client_public_key": public_key,
        "app_id": app_id,
        "instance_id": instance_id,
        "port_policy": policy,
    });
    let (status, text) = http(
        gw.debug,
        "POST",
        "/prpc/Debug.RegisterCvm",
        None,
        &body.to_string(),
    )
    .await;
    if status != 200 {
        return Err((status, text));
    }
    Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("RegisterCvm answer {text}: {e}")))
}

/// Retries `attempt` until it succeeds or `within` passes.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if start.elapsed() > within => {
                panic!("{what}: still failing after {within:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

// ---------------------------------------------------------------------------
// TLS clients

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(default_provider())
}

/// Trusts pebble's issuing CA only, like a browser trusts Let's Encrypt.
fn client_trusting(roots_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for root in parse_pem_certs(roots_pem).unwrap() {
        roots.add(root).unwrap();
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    full_handshakes(config)
}

/// No session resumption: a resumed session presents no certificate (the
/// client reports the one of the session it resumed), and every
/// connection here is meant to show what the server serves now.
fn full_handshakes(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Accepts any server certificate (its signatures still checked): for
/// looking at which certificate a server presents, and for the RA-TLS RPC.
fn client_any_cert() -> Arc<ClientConfig> {
    full_handshakes(dstack_ra_tls::unverified_client_config().unwrap())
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to a gateway's proxy with `sni`.
async fn tls_connect(
    gw: &Gateway,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> Result<ClientTls, String> {
    let connect = async {
        let tcp = TcpStream::connect(gw.proxy)
            .await
            .map_err(|e| format!("TCP: {e}"))?;
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// What a GET through the gateway returned.
#[derive(Debug)]
struct Fetched {
    body: String,
    /// The leaf certificate the client saw.
    leaf: CertificateDer<'static>,
    /// The client's own address (what a PROXY header must name).
    client: SocketAddr,
}

/// `GET /` to `sni` through `gw`.
async fn fetch(gw: &Gateway, sni: &str, config: &Arc<ClientConfig>) -> Result<Fetched, String> {
    let mut tls = tls_connect(gw, sni, config).await?;
    let client = tls.get_ref().0.local_addr().map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone()
        .into_owned();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        request(&mut tls, "GET", sni, "/", &[], ""),
    )
    .await
    .map_err(|_| "no answer".to_owned())??;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    Ok(Fetched { body, leaf, client })
}

/// Waits until `sni` through `gw` answers `expected`; returns what was seen.
async fn reach(gw: &Gateway, sni: &str, config: &Arc<ClientConfig>, expected: &str) -> Fetched {
    eventually(
        &format!("{sni} through node {}", gw.id),
        CONVERGE,
        || async move {
            let fetched = fetch(gw, sni, config).await?;
            if fetched.body.starts_with(expected) {
                Ok(fetched)
            } else {
                Err(format!("answered {:?}, not {expected:?}", fetched.body))
            }
        },
    )
    .await
}

/// The wildcard certificate `gw` serves (through its own `gateway.<base>` page).
async fn served_cert(
    gw: &Gateway,
    config: &Arc<ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let mut tls = tls_connect(gw, &format!("gateway.{BASE}"), config).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?
        .clone()
        .into_owned();
    let (status, body) = request(&mut tls, "GET", "gateway", "/health", &[], "").await?;
    if status != 200 || body.trim() != "OK" {
        return Err(format!("/health answered {status} {body:?}"));
    }
    Ok(leaf)
}

/// Whether the server closed the connection (EOF or reset) within `within`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A hand-made ClientHello: `server_name` as given (no checks), and an
/// optional padding extension of `padding` bytes.
fn raw_client_hello(server_name: &[u8], padding: usize) -> Vec<u8> {
    let u16b = |n: usize| u16::try_from(n).unwrap().to_be_bytes();
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend([1, 0]); // null compression
    let mut list = vec![0u8]; // host_name
    list.extend(u16b(server_name.len()));
    list.extend(server_name);
    let mut sni = u16b(list.len()).to_vec();
    sni.extend(list);
    let mut extensions = vec![0, 0];
    extensions.extend(u16b(sni.len()));
    extensions.extend(sni);
    if padding > 0 {
        extensions.extend([0, 21]);
        extensions.extend(u16b(padding));
        extensions.extend(std::iter::repeat_n(0u8, padding));
    }
    body.extend(u16b(extensions.len()));
    body.extend(extensions);
    let mut handshake = vec![1];
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut out = Vec::new();
    for fragment in handshake.chunks(1 << 14) {
        out.extend([22, 3, 1]);
        out.extend(u16b(fragment.len()));
        out.extend(fragment);
    }
    out
}

// ---------------------------------------------------------------------------
// CVMs: WireGuard peers serving TCP on their tunnel address

/// A registered "CVM".
struct Cvm {
    app_id: &'static str,
    instance_id: String,
    net: WgNet,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cvm {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The policy a CVM with no `port_policy` in its app-compose reports: every port.
fn open_policy() -> Value {
    json!({ "ports": [], "restrict_mode": false })
}

/// Registers a CVM on `gw` through the Debug RPC and brings up its tunnel
/// the way the guest does: its address from the answer, every gateway as
/// a peer with an endpoint and a keepalive, so it starts the handshakes.
async fn start_cvm(gw: &Gateway, app_id: &'static str, instance_id: &str, policy: Value) -> Cvm {
    let private = dstack_wgnet::generate_private_key();
    let public = B64.encode(dstack_wgnet::public_key(&private));
    let answer = debug_register(gw, &public, app_id, instance_id, &policy)
        .await
        .unwrap_or_else(|e| panic!("registering {app_id} on node {}: {e:?}", gw.id));
    let ip: Ipv4Addr = answer.wg.client_ip.parse().unwrap();
    assert!(
        ip.octets()[..2] == [10, 8] && ip.octets()[2] >= 64,
        "{ip} is in the client range"
    );
    let net = WgNet::start(WgConfig::new(private, loopback(0), ip))
        .await
        .unwrap();
    assert!(!answer.gateways.is_empty());
    for server in &answer.wg.servers {
        let key: [u8; 32] = B64.decode(&server.pk).unwrap().try_into().unwrap();
        let gw_ip = server.ip.split('/').next().unwrap().parse().unwrap();
        net.set_peer(Peer {
            public_key: key,
            allowed_ip: gw_ip,
            endpoint: Some(server.endpoint.parse().unwrap()),
            // A kernel interface brought up with PersistentKeepalive sends
            // its first keepalive at once; boringtun's comes one interval
            // after start, so a short one starts the handshakes as promptly.
            keepalive: Some(1),
        })
        .unwrap();
    }
    Cvm {
        app_id,
        instance_id: instance_id.to_owned(),
        net,
        tasks: Vec::new(),
    }
}

/// Reads an HTTP request head from `stream`.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, body: &str) {
    let text = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

impl Cvm {
    /// Plain HTTP on `port`, answering `label`.
    async fn serve_http(&mut self, port: u16, label: String) {
        let listener = self.net.listen(port).await.unwrap();
        self.tasks.push(tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let label = label.clone();
                tokio::spawn(async move {
                    if read_request(&mut stream).await.is_some() {
                        respond(&mut stream, &label).await;
                    }
                });
            }
        }));
    }

    /// Echoes whatever arrives on `port`.
    async fn serve_echo(&mut self, port: u16) {
        let listener = self.net.listen(port).await.unwrap();
        self.tasks.push(tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }

    /// TLS (its own certificate) then HTTP on `port`.
    async fn serve_tls(&mut self, port: u16, acceptor: TlsAcceptor, label: String) {
        let listener = self.net.listen(port).await.unwrap();
        self.tasks.push(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, label) = (acceptor.clone(), label.clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(stream).await
                        && read_request(&mut tls).await.is_some()
                    {
                        respond(&mut tls, &label).await;
                    }
                });
            }
        }));
    }

    /// Expects a PROXY header, then HTTP; answers `label` and the client
    /// address the header names (or what went wrong).
    async fn serve_pp_http(&mut self, port: u16, label: String) {
        let listener = self.net.listen(port).await.unwrap();
        self.tasks.push(tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let label = label.clone();
                tokio::spawn(async move {
                    let header =
                        dstack_gateway::pp::read_proxy_header(&mut stream, Duration::from_secs(5))
                            .await;
                    let (header, leftover) = match header {
                        Ok(read) => read,
                        Err(e) => {
                            return respond(&mut stream, &format!("no PROXY header: {e}")).await;
                        }
                    };
                    let mut rest = dstack_gateway::relay::Rewind::new(leftover, stream);
                    let mut first = [0u8; 4];
                    if rest.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    let plain = &first == b"GET ";
                    if read_request(&mut rest).await.is_some() {
                        let source = header.source().map(|s| s.to_string()).unwrap_or_default();
                        let answer = if plain {
                            format!("{label} from {source}")
                        } else {
                            format!("after the header came {first:?}, not plain HTTP")
                        };
                        respond(&mut rest, &answer).await;
                    }
                });
            }
        }));
    }
}

/// A self-signed certificate for an app that terminates TLS itself.
fn app_tls(names: &[&str]) -> (TlsAcceptor, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), der)
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(cert.as_ref())[..8])
}

fn step(n: u32, what: &str) {
    eprintln!("=== step {n}: {what}");
}

// ---------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_route_issue_survive_and_renew() {
    if let Some(reason) = missing_tools() {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("gateway-cluster-")
        .tempdir()
        .unwrap();

    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let tsig_secret: [u8; 32] = rand::random();
    let bind = Bind9::start(
        ZONE,
        TsigKey::new(TSIG_NAME, TsigAlgorithm::HmacSha256, tsig_secret.to_vec()),
    )
    .await;
    let pebble = Pebble::start(bind.addr()).await;
    let pebble_root = dir.path().join("pebble-root.pem");
    std::fs::write(&pebble_root, pebble.server_root_pem()).unwrap();
    let key_file = dir.path().join("keys.json");
    {
        let keys = json!({
            "wg_private_key": B64.encode(rand::random::<[u8; 32]>()),
            "seal_secret": hex::encode(rand::random::<[u8; 32]>()),
            "app_id": GATEWAY_APP_ID,
        });
        let mut file = std::fs::File::create(&key_file).unwrap();
        file.write_all(keys.to_string().as_bytes()).unwrap();
    }
    let setup = ClusterSetup {
        dir: dir.path(),
        etcd: etcd.client_urls(),
        bind: bind.addr(),
        pebble_directory: pebble.directory_url(),
        pebble_root,
        key_file,
        tsig_secret: B64.encode(tsig_secret),
    };
    let mut gateways: Vec<Gateway> = (1..=3).map(|id| Gateway::spawn(&setup, id)).collect();
    eprintln!("setup: processes started after {:?}", started.elapsed());

    // -----------------------------------------------------------------
    step(
        1,
        "one wildcard certificate for the cluster, served by all three",
    );
    let trusted = client_trusting(&pebble.issuer_roots_pem().await);
    let mut first_cert = None;
    for gw in &mut gateways {
        gw.assert_running();
    }
    for gw in &gateways {
        let leaf = eventually(
            &format!("node {} serving the wildcard", gw.id),
            Duration::from_secs(90),
            || served_cert(gw, &trusted),
        )
        .await;
        match &first_cert {
            None => first_cert = Some(leaf),
            Some(first) => assert_eq!(
                fingerprint(first),
                fingerprint(&leaf),
                "node {} serves another certificate",
                gw.id
            ),
        }
    }
    let first_cert = first_cert.unwrap();
    let mut issued = 0;
    for gw in &gateways {
        issued += metric(gw, issued_series()).await;
    }
    assert_eq!(issued, 1, "the cluster issued exactly one certificate");
    eprintln!("step 1 done after {:?}", started.elapsed());

    // -----------------------------------------------------------------
    step(
        2,
        "two apps registered on node 1, reached through every node",
    );
    let mut app1 = start_cvm(&gateways[0], APP1, &format!("{APP1}01"), open_policy()).await;
    app1.serve_http(80, "app1:80".into()).await;
    app1.serve_http(8080, "app1:8080".into()).await;
    app1.serve_echo(7000).await;
    let mut app2 = start_cvm(&gateways[0], APP2, &format!("{APP2}01"), open_policy()).await;
    let (app2_tls, app2_cert) = app_tls(&["custom.test", &format!("{APP2}-443s.{BASE}")]);
    app2.serve_tls(443, app2_tls, "app2:443".into()).await;
    let any_cert = client_any_cert();
    for gw in &gateways {
        let seen = reach(gw, &format!("{APP1}.{BASE}"), &trusted, "app1:80").await;
        assert_eq!(
            seen.leaf, first_cert,
            "terminated by the gateway's certificate"
        );
        reach(gw, &format!("{APP1}-8080.{BASE}"), &trusted, "app1:8080").await;
        let seen = reach(gw, &format!("{APP2}-443s.{BASE}"), &any_cert, "app2:443").await;
        assert_eq!(
            seen.leaf, app2_cert,
            "passthrough: the app's own certificate"
        );
    }
    // An instance id routes too.
    reach(
        &gateways[1],
        &format!("{}.{BASE}", app1.instance_id),
        &trusted,
        "app1:80",
    )
    .await;
    eprintln!("step 2 done after {:?}", started.elapsed());

    // -----------------------------------------------------------------
    step(
        3,
        "no route for an unknown app; no registration without a client certificate",
    );
    let unknown_before = metric(&gateways[0], &refused_series("unknown_app")).await;
    let err = tls_connect(&gateways[0], &format!("{UNKNOWN}.{BASE}"), &trusted)
        .await
        .expect_err("an unknown app gets no TLS session");
    assert!(err.starts_with("TLS"), "closed during the handshake: {err}");
    assert_eq!(
        metric(&gateways[0], &refused_series("unknown_app")).await,
        unknown_before + 1
    );
    {
        let tcp = TcpStream::connect(gateways[0].rpc).await.unwrap();
        let mut tls = TlsConnector::from(client_any_cert())
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("the RPC speaks TLS without a client certificate");
        let body = json!({ "client_public_key": B64.encode([9u8; 32]) }).to_string();
        let (status, text) = request(&mut tls, "POST", "gateway", "/prpc/RegisterCvm", &[], &body)
            .await
            .unwrap();
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("no attestation provided"), "{text}");
    }

    // -----------------------------------------------------------------
    step(
        4,
        "port policy: unlisted port refused, PROXY header where asked",
    );
    let mut app3 = start_cvm(
        &gateways[0],
        APP3,
        &format!("{APP3}01"),
        json!({ "restrict_mode": true, "ports": [{"port": 80, "pp": false}, {"port": 8080, "pp": true}] }),
    )
    .await;
    app3.serve_http(80, "app3:80".into()).await;
    app3.serve_pp_http(8080, "app3:8080".into()).await;
    app3.serve_http(9000, "app3:9000".into()).await;
    reach(&gateways[0], &format!("{APP3}.{BASE}"), &trusted, "app3:80").await;
    let seen = reach(
        &gateways[0],
        &format!("{APP3}-8080.{BASE}"),
        &trusted,
        "app3:8080 from",
    )
    .await;
    assert_eq!(
        seen.body,
        format!("app3:8080 from {}", seen.client),
        "the PROXY header names the client"
    );
    let policy_before = metric(&gateways[0], &refused_series("port_policy")).await;
    let err = tls_connect(&gateways[0], &format!("{APP3}-9000.{BASE}"), &trusted)
        .await
        .expect_err("port 9000 is not in the restricted policy");
    assert!(err.starts_with("TLS"), "{err}");
    assert_eq!(
        metric(&gateways[0], &refused_series("port_policy")).await,
        policy_before + 1
    );

    // -----------------------------------------------------------------
    step(5, "a custom domain through its TXT record, passed through");
    bind.rfc2136()
        .add_txt("_dstack-app-address.custom.test", &format!("{APP2}:443"))
        .await
        .unwrap();
    for gw in &gateways {
        let seen = reach(gw, "custom.test", &any_cert, "app2:443").await;
        assert_eq!(seen.leaf, app2_cert, "the app's own certificate");
    }

    // -----------------------------------------------------------------
    step(
        6,
        "malformed, oversized, garbage and slow clients refused; a good one served meanwhile",
    );
    let gw = &gateways[2];
    let reasons = [
        "malformed_sni",
        "oversized_client_hello",
        "malformed_client_hello",
        "handshake_timeout",
    ];
    let mut before = Vec::new();
    for reason in reasons {
        before.push(metric(gw, &refused_series(reason)).await);
    }
    let mut slow = TcpStream::connect(gw.proxy).await.unwrap();
    slow.write_all(&[22]).await.unwrap();
    let slow_since = Instant::now();
    let bad_clients = async {
        let mut outcomes = Vec::new();
        for bytes in [
            raw_client_hello(format!("bad_name!.{BASE}").as_bytes(), 0),
            raw_client_hello(format!("{APP1}.{BASE}").as_bytes(), 6000),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ] {
            let mut tcp = TcpStream::connect(gw.proxy).await.unwrap();
            // The gateway may hang up before everything is written.
            let _ = tcp.write_all(&bytes).await;
            outcomes.push(closed_within(&mut tcp, Duration::from_secs(5)).await);
        }
        outcomes
    };
    let good_sni = format!("{APP1}.{BASE}");
    let good = fetch(gw, &good_sni, &trusted);
    let (outcomes, good) = tokio::join!(bad_clients, good);
    assert_eq!(
        outcomes,
        [true, true, true],
        "each bad client is hung up on"
    );
    let good = good.expect("a good client is served while the others misbehave");
    assert_eq!(good.body, "app1:80");
    assert!(
        slow_since.elapsed() < Duration::from_secs(2),
        "the good client did not wait for the slow one"
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "the slow client is hung up on"
    );
    let waited = slow_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after the 2 s handshake timeout, not at once ({waited:?})"
    );
    for (reason, before) in reasons.iter().zip(before) {
        assert_eq!(
            metric(gw, &refused_series(reason)).await,
            before + 1,
            "one refusal counted as {reason}"
        );
    }

    // -----------------------------------------------------------------
    step(7, "losing gateway 2 and an etcd member");
    gateways[1].kill();
    // The leader: the harder loss (an election, and every gateway's
    // requests through it fail over).
    let leader = {
        let kv = dstack_cluster_kv::ClusterKv::connect(
            &etcd.client_urls(),
            "/status-probe/",
            dstack_cluster_kv::SealKey::from_bytes([0; 32]),
            dstack_cluster_kv::ConnectOptions::default(),
        )
        .await
        .unwrap();
        let status = kv.status().await.unwrap();
        let url = &status.leader_member().expect("a leader").client_urls[0];
        etcd.client_urls().iter().position(|u| u == url).unwrap()
    };
    etcd.stop_member(leader);
    let live = [&gateways[0], &gateways[2]];
    for gw in live {
        reach(gw, &format!("{APP1}.{BASE}"), &trusted, "app1:80").await;
        let seen = reach(gw, &format!("{APP2}-443s.{BASE}"), &any_cert, "app2:443").await;
        assert_eq!(seen.leaf, app2_cert);
        let cert = served_cert(gw, &trusted).await.unwrap();
        assert_eq!(
            cert, first_cert,
            "node {} still serves the certificate",
            gw.id
        );
    }
    let mut app4 = start_cvm(&gateways[2], APP4, &format!("{APP4}01"), open_policy()).await;
    app4.serve_http(80, "app4:80".into()).await;
    reach(&gateways[0], &format!("{APP4}.{BASE}"), &trusted, "app4:80").await;
    eprintln!("step 7 done after {:?}", started.elapsed());

    // -----------------------------------------------------------------
    step(8, "RenewCert on two replicas at once renews once");
    let issued_before = metric_sum(&live, issued_series()).await;
    let failed_before = metric_sum(
        &live,
        "dstack_gateway_certificates_total{outcome=\"failed\"}",
    )
    .await;
    let mut open = tls_connect(live[0], &format!("{APP1}-7000.{BASE}"), &trusted)
        .await
        .unwrap();
    let mut echo = [0u8; 7];
    open.write_all(b"before\n").await.unwrap();
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"before\n");
    let (a, b) = tokio::join!(
        admin(live[0], "RenewCert", json!({})),
        admin(live[1], "RenewCert", json!({}))
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let mut renewed = Vec::new();
    let (trusted_ref, first_ref) = (&trusted, &first_cert);
    for gw in live {
        let leaf = eventually(
            &format!("node {} serving the renewed certificate", gw.id),
            Duration::from_secs(60),
            || async move {
                let leaf = served_cert(gw, trusted_ref).await?;
                if leaf == *first_ref {
                    Err("still the first certificate".into())
                } else {
                    Ok(leaf)
                }
            },
        )
        .await;
        renewed.push(leaf);
    }
    assert_eq!(
        fingerprint(&renewed[0]),
        fingerprint(&renewed[1]),
        "both serve the same new certificate"
    );
    // Give a second (wrong) issuance time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let issued_after = metric_sum(&live, issued_series()).await;
    assert_eq!(
        issued_after,
        issued_before + 1,
        "exactly one replica renewed"
    );
    let failed_after = metric_sum(
        &live,
        "dstack_gateway_certificates_total{outcome=\"failed\"}",
    )
    .await;
    assert_eq!(failed_after, failed_before, "no renewal failed");
    open.write_all(b"after!\n").await.unwrap();
    open.read_exact(&mut echo).await.unwrap();
    assert_eq!(
        &echo, b"after!\n",
        "a connection opened before the renewal still works"
    );
    eprintln!("step 8 done after {:?}", started.elapsed());

    // -----------------------------------------------------------------
    step(9, "the admin API");
    let (status, _) = http(live[0].admin, "POST", "/prpc/Status", None, "{}").await;
    assert_eq!(status, 401, "no token");
    let (status, _) = http(live[0].admin, "POST", "/prpc/Status", Some("wrong"), "{}").await;
    assert_eq!(status, 401, "wrong token");
    let (status, st) = admin(live[0], "Status", json!({})).await;
    assert_eq!(status, 200, "{st}");
    let hosts: Vec<&str> = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["instance_id"].as_str())
        .collect();
    for cvm in [&app1, &app2, &app3, &app4] {
        assert!(
            hosts.contains(&cvm.instance_id.as_str()),
            "{} listed in {st}",
            cvm.app_id
        );
    }
    assert_eq!(st["id"], 1);
    assert_eq!(st["status"], "up");

    let (status, answer) = admin(live[0], "SetNodeStatus", json!({ "status": "down" })).await;
    assert_eq!(status, 200, "{answer}");
    let key = B64.encode(dstack_wgnet::public_key(
        &dstack_wgnet::generate_private_key(),
    ));
    let (status, text) = debug_register(live[0], &key, APP4, &format!("{APP4}02"), &open_policy())
        .await
        .expect_err("a down node takes no registrations");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("this gateway node is down"), "{text}");
    eventually("node 3 seeing node 1 down", CONVERGE, || async move {
        let (_, got) = admin(live[1], "GetNodeStatuses", json!({})).await;
        let down = got["statuses"]
            .as_array()
            .is_some_and(|s| s.iter().any(|n| n["node_id"] == 1 && n["status"] == "down"));
        down.then_some(()).ok_or(got.to_string())
    })
    .await;
    let taken = debug_register(live[1], &key, APP4, &format!("{APP4}02"), &open_policy())
        .await
        .expect("node 3 still takes registrations");
    let servers: Vec<&str> = taken.wg.servers.iter().map(|s| s.ip.as_str()).collect();
    assert!(
        !servers.iter().any(|ip| ip.starts_with("10.8.0.1/")),
        "a down node is not handed to CVMs: {servers:?}"
    );
    let (status, _) = admin(live[0], "SetNodeStatus", json!({ "status": "up" })).await;
    assert_eq!(status, 200);

    let instance = json!({ "instance_id": app3.instance_id });
    let (status, got) = admin(live[0], "GetInstancePortPolicy", instance.clone()).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["source"], "instance");
    let policy = json!({ "restrict_mode": true, "ports": [{"port": 9000, "pp": false}] });
    let (status, answer) = admin(
        live[0],
        "SetInstancePortPolicy",
        json!({ "instance_id": app3.instance_id, "policy": policy }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, got) = admin(live[0], "GetInstancePortPolicy", instance.clone()).await;
    assert_eq!(got["source"], "admin", "{got}");
    assert_eq!(got["policy"], policy);
    // The override reaches the other replica, and is what the proxy applies.
    let instance_ref = &instance;
    eventually("the override on node 3", CONVERGE, || async move {
        let (_, got) = admin(live[1], "GetInstancePortPolicy", instance_ref.clone()).await;
        (got["source"] == "admin")
            .then_some(())
            .ok_or(got.to_string())
    })
    .await;
    reach(
        live[1],
        &format!("{APP3}-9000.{BASE}"),
        &trusted,
        "app3:9000",
    )
    .await;
    let err = tls_connect(live[1], &format!("{APP3}.{BASE}"), &trusted)
        .await
        .expect_err("port 80 is not in the override");
    assert!(err.starts_with("TLS"), "{err}");

    // -----------------------------------------------------------------
    step(
        10,
        "a rebooted CVM: same instance, new WireGuard key, same address",
    );
    let address = app1.net.address();
    // The guest keeps no key across boots: the old tunnel is gone.
    drop(app1);
    let mut app1 = start_cvm(live[1], APP1, &format!("{APP1}01"), open_policy()).await;
    assert_eq!(
        app1.net.address(),
        address,
        "re-registration keeps the address"
    );
    app1.serve_http(80, "app1 rebooted".into()).await;
    for gw in live {
        reach(gw, &format!("{APP1}.{BASE}"), &trusted, "app1 rebooted").await;
    }

    // -----------------------------------------------------------------
    step(11, "gateway 2 restarts: its state comes back from etcd");
    gateways[1].start();
    let restarted = &gateways[1];
    let renewed_ref = &renewed[0];
    let cert = eventually("node 2 serving again", CONVERGE, || async move {
        let leaf = served_cert(restarted, trusted_ref).await?;
        (leaf == *renewed_ref)
            .then_some(leaf)
            .ok_or_else(|| "not the renewed certificate".to_owned())
    })
    .await;
    assert_eq!(fingerprint(&cert), fingerprint(&renewed[0]));
    reach(
        restarted,
        &format!("{APP1}.{BASE}"),
        &trusted,
        "app1 rebooted",
    )
    .await;
    reach(restarted, &format!("{APP4}.{BASE}"), &trusted, "app4:80").await;
    // CVMs that still hold a session with the node that died: it opens new
    // sessions to them itself.
    let seen = reach(
        restarted,
        &format!("{APP2}-443s.{BASE}"),
        &any_cert,
        "app2:443",
    )
    .await;
    assert_eq!(seen.leaf, app2_cert);
    let seen = reach(
        restarted,
        &format!("{APP3}-9000.{BASE}"),
        &trusted,
        "app3:9000",
    )
    .await;
    assert!(
        seen.body.starts_with("app3:9000"),
        "the admin override holds there too"
    );
    assert_eq!(
        metric(restarted, issued_series()).await,
        0,
        "a restarted node does not issue what the cluster holds"
    );

    drop((app1, app2, app3, app4));
    eprintln!("cluster test passed in {:?}", started.elapsed());
}
