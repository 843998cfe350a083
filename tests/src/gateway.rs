//! The gateway's world for the end-to-end test and the demo: a real bind9
//! (DNS-01 by RFC 2136, custom-domain TXT records), a real ACME CA
//! (pebble), an etcd member and a KMS on the host's loopback (CVMs reach it
//! as 10.0.2.2), and the `dstack/gateway` image booted as a CVM with its
//! keys from that KMS; apps deployed with `--gateway-url` register with it
//! and are reached by name through its proxy port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

use crate::harness::{Supervisor, free_port, push_image, repo_root};
use crate::kms::{KmsProcess, app_id_and_hash, start_kms_with_gateway, supervisor_output};

/// How long a CVM may take to boot and register under TCG.
pub const BOOT: Duration = Duration::from_secs(900);
/// The gateway's admin token in these deployments.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// An app-compose with the KMS as key provider, optionally registering
/// with the gateway and declaring a port policy.
pub fn app_compose(
    name: &str,
    compose: &str,
    gateway: bool,
    policy: Option<serde_json::Value>,
) -> String {
    let mut app = serde_json::json!({
        "docker_compose_file": compose,
        "gateway_enabled": gateway,
        "kms_enabled": true,
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
    });
    if let Some(policy) = policy {
        app["port_policy"] = policy;
    }
    app.to_string()
}

/// The gateway CVM's published host ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The public proxy (TLS).
    pub proxy: u16,
    /// The RA-TLS registration RPC.
    pub rpc: u16,
    /// WireGuard (UDP).
    pub wg: u16,
    /// The admin API.
    pub admin: u16,
}

#[allow(clippy::too_many_arguments)] // one TOML, every input named
fn gateway_toml(
    ports: &Ports,
    etcd: &str,
    bind: u16,
    pebble_directory: &str,
    sim_root: &str,
    pccs: &str,
) -> String {
    format!(
        r#"
[node]
id = 1
url = "https://10.0.2.2:{rpc}"

[proxy]
listen = ["0.0.0.0:8443"]
base_domains = ["apps.test"]
app_address_dns_servers = ["10.0.2.2:{bind}"]

[rpc]
listen = "0.0.0.0:9012"

[wg]
listen = "0.0.0.0:9013"
ip = "10.8.0.1/16"
client_ip_range = "10.8.64.0/18"
reserved_net = ["10.8.0.0/24"]
endpoint = "10.0.2.2:{wg}"

[admin]
listen = "0.0.0.0:9016"

[etcd]
endpoints = ["{etcd}"]

[acme]
directory = "{pebble_directory}"
ca_root = "/etc/dstack-gateway/acme-ca.pem"

[acme.rfc2136]
server = "10.0.2.2:{bind}"
zone = "test"
tsig_name = "gateway-key"

[attestation]
quote_root_pem = '''
{sim_root}'''
pccs_url = "{pccs}"
"#,
        rpc = ports.rpc,
        wg = ports.wg,
    )
}

fn gateway_compose(toml: &str, ca_pem: &str, tsig_secret: &str) -> String {
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    format!(
        "services:\n  gateway:\n    image: 127.0.0.1:5000/dstack/gateway:latest\n    network_mode: host\n    environment:\n      DSTACK_GATEWAY_CONFIG_TOML: {toml}\n      DSTACK_GATEWAY_TSIG_SECRET: {secret}\n      DSTACK_GATEWAY_ADMIN_TOKEN: {token}\n    configs:\n      - source: acme-ca\n        target: /etc/dstack-gateway/acme-ca.pem\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n    restart: always\nconfigs:\n  acme-ca:\n    content: |\n{ca}",
        toml = serde_json::to_string(toml).unwrap(),
        secret = serde_json::to_string(tsig_secret).unwrap(),
        token = serde_json::to_string(ADMIN_TOKEN).unwrap(),
        ca = indent(ca_pem),
    )
}

/// Deploys `file` as `name` with `extra` CLI arguments; fails with the logs.
pub fn deploy(sup: &Supervisor, file: &std::path::Path, name: &str, extra: &[String]) {
    let file = file.display().to_string();
    let mut args: Vec<&str> = vec![
        "vm",
        "deploy",
        &file,
        "--name",
        name,
        "--memory",
        "1G",
        "--timeout",
        "900",
    ];
    args.extend(extra.iter().map(String::as_str));
    let out = sup.dstack(&args);
    assert!(
        out.status.success(),
        "deploy {name}: {}\n{}\nsupervisor log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sup.log()
    );
}

/// The admin API's answer to `path` (POST with `body`, else GET), or None
/// while it does not answer 200.
pub fn admin(port: u16, path: &str, body: Option<&str>) -> Option<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let (method, body) = match body {
        Some(b) => ("POST", b),
        None => ("GET", ""),
    };
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).ok()?;
    answer
        .starts_with("HTTP/1.1 200")
        .then(|| answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))
        .flatten()
}

/// Polls `check` every 2 s until it answers or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<String>,
    context: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A TLS client trusting `roots` (None: any certificate, for passthrough to
/// an app's own RA-TLS certificate); returns the server's leaf and the
/// HTTP answer to `GET /`.
pub fn https_get(
    port: u16,
    sni: &str,
    roots: Option<&rustls::RootCertStore>,
) -> std::io::Result<(Vec<u8>, String)> {
    let mut config = match roots {
        Some(roots) => rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots.clone())
        .with_no_client_auth(),
        // The caller looks at the app's own certificate itself.
        None => dstack_ra_tls::unverified_client_config().map_err(std::io::Error::other)?,
    };
    // Offered as browsers and curl offer it: a gateway that advertised only
    // other protocols would refuse the handshake.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&answer).into_owned();
    if !text.starts_with("HTTP/1.") {
        return Err(std::io::Error::other(format!("no HTTP answer: {text:?}")));
    }
    Ok((leaf, text))
}

/// The value of the metric line starting with `line_prefix` (0 if absent).
pub fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Everything a gateway CVM needs on the host, and the CVM itself.
pub struct GatewayWorld {
    /// Runs the async harnesses (bind9, pebble, etcd).
    pub runtime: tokio::runtime::Runtime,
    /// DNS: zone `test` (base domain `apps.test`, custom domains `*.test`).
    pub bind: dstack_acme::testing::Bind9,
    /// The ACME CA.
    pub pebble: dstack_acme::testing::Pebble,
    /// The gateway's cluster state.
    pub etcd: dstack_cluster_kv::testing::EtcdCluster,
    /// The KMS every CVM here gets its keys from.
    pub kms: KmsProcess,
    /// The KMS as guests reach it.
    pub kms_url: String,
    /// The gateway's published ports.
    pub ports: Ports,
    /// The gateway's app id.
    pub gateway_id: String,
    /// The registration URL apps are deployed with.
    pub gateway_url: String,
    /// Pebble's issuing roots: what a client trusts the gateway's wildcard by.
    pub roots: rustls::RootCertStore,
}

impl std::fmt::Debug for GatewayWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayWorld")
            .field("ports", &self.ports)
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

/// An app to deploy behind the gateway: its name and app-compose file.
#[derive(Debug, Clone)]
pub struct App {
    /// The VM name.
    pub name: String,
    /// Its app-compose file.
    pub file: PathBuf,
    /// Its app id (hex).
    pub id: String,
    /// Its compose hash (hex).
    pub hash: String,
}

impl App {
    /// Writes `app_compose` into `dir` for VM `name`.
    pub fn write(dir: &Path, name: &str, app_compose: &str) -> anyhow::Result<Self> {
        let file = dir.join(format!("{name}-app-compose.json"));
        std::fs::write(&file, app_compose)?;
        let (id, hash) = app_id_and_hash(&file);
        Ok(Self {
            name: name.into(),
            file,
            id,
            hash,
        })
    }
}

impl GatewayWorld {
    /// Starts DNS, the CA, etcd and a KMS allowing the gateway and `apps`,
    /// then boots the gateway CVM and waits for its wildcard certificate.
    /// `progress` hears each step.
    pub fn start(sup: &Supervisor, apps: &[App], progress: impl Fn(&str)) -> anyhow::Result<Self> {
        for tool in ["/usr/bin/etcd", "/usr/sbin/named", "/usr/bin/pebble"] {
            if !Path::new(tool).exists() {
                bail!(
                    "{tool} is missing: scripts/install-deps installs etcd-server, bind9 and pebble"
                );
            }
        }
        let runtime = tokio::runtime::Runtime::new()?;
        progress("DNS (bind9, RFC 2136 with TSIG), the ACME CA (pebble) and etcd on the host");
        let secret: [u8; 32] = rand::random();
        let tsig = dstack_acme::TsigKey::new(
            "gateway-key",
            dstack_acme::TsigAlgorithm::HmacSha256,
            secret.to_vec(),
        );
        let bind = runtime.block_on(dstack_acme::testing::Bind9::start("test", tsig));
        let pebble = runtime.block_on(dstack_acme::testing::Pebble::start(bind.addr()));
        let etcd = runtime
            .block_on(dstack_cluster_kv::testing::EtcdCluster::start(1))
            .context("etcd did not start")?;
        let etcd_port = etcd.client_urls()[0]
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        let pebble_directory = pebble.directory_url().replace("127.0.0.1", "10.0.2.2");

        progress("the dstack/gateway image, into the local registry");
        push_image(&repo_root().join("gateway"))?;

        let ports = Ports {
            proxy: free_port(),
            rpc: free_port(),
            wg: free_port(),
            admin: free_port(),
        };
        let sim_root = String::from_utf8(supervisor_output(sup, "sim-root"))?;
        let toml = gateway_toml(
            &ports,
            &format!("http://10.0.2.2:{etcd_port}"),
            bind.addr().port(),
            &pebble_directory,
            &sim_root,
            &sup.guest_pccs_url(),
        );
        let gateway = App::write(
            sup.state.path(),
            "gateway",
            &app_compose(
                "gateway",
                &gateway_compose(
                    &toml,
                    pebble.server_root_pem(),
                    &base64::engine::general_purpose::STANDARD.encode(secret),
                ),
                false,
                None,
            ),
        )?;

        progress("the KMS, allowing the gateway and the apps, naming the gateway's app id");
        let mut allowed: Vec<(&str, Vec<&str>)> =
            vec![(gateway.id.as_str(), vec![gateway.hash.as_str()])];
        for app in apps {
            allowed.push((app.id.as_str(), vec![app.hash.as_str()]));
        }
        let allowed: Vec<(&str, &[&str])> =
            allowed.iter().map(|(id, h)| (*id, h.as_slice())).collect();
        let (kms, kms_port) = start_kms_with_gateway(sup, &allowed, &gateway.id);
        let kms_url = format!("https://10.0.2.2:{kms_port}");

        progress("the gateway CVM (keys from the KMS, state in etcd, certificate from pebble)");
        deploy(
            sup,
            &gateway.file,
            "gateway",
            &[
                "--kms".into(),
                kms_url.clone(),
                "--port".into(),
                format!("127.0.0.1:{}:8443", ports.proxy),
                "--port".into(),
                format!("127.0.0.1:{}:9012", ports.rpc),
                "--port".into(),
                format!("127.0.0.1:{}:9013/udp", ports.wg),
                "--port".into(),
                format!("127.0.0.1:{}:9016", ports.admin),
            ],
        );
        wait_for(
            "the gateway's wildcard certificate",
            BOOT,
            || {
                admin(ports.admin, "/metrics", None)
                    .filter(|m| metric(m, "dstack_gateway_certificates ") == 1)
            },
            || sup.dstack_ok(&["vm", "logs", "-n", "100", "gateway"]),
        );
        let mut roots = rustls::RootCertStore::empty();
        let issuer = runtime.block_on(pebble.issuer_roots_pem());
        for cert in dstack_acme::parse_pem_certs(&issuer)? {
            roots.add(cert)?;
        }
        Ok(Self {
            runtime,
            bind,
            pebble,
            etcd,
            kms,
            kms_url,
            gateway_id: gateway.id,
            gateway_url: format!("https://10.0.2.2:{}", ports.rpc),
            ports,
            roots,
        })
    }

    /// Deploys `app` with its keys from the KMS, registering with the gateway.
    pub fn deploy(&self, sup: &Supervisor, app: &App) {
        deploy(
            sup,
            &app.file,
            &app.name,
            &[
                "--kms".into(),
                self.kms_url.clone(),
                "--gateway-url".into(),
                self.gateway_url.clone(),
            ],
        );
    }

    /// Waits until every app in `ids` has an instance registered with a
    /// WireGuard handshake; returns the admin API's Status.
    pub fn wait_registered(&self, sup: &Supervisor, apps: &[&App]) -> String {
        wait_for(
            "the apps registered with a WireGuard handshake",
            BOOT,
            || {
                let status: serde_json::Value =
                    serde_json::from_str(&admin(self.ports.admin, "/prpc/Status", Some("{}"))?)
                        .ok()?;
                let hosts = status["hosts"].as_array()?;
                apps.iter()
                    .all(|app| {
                        hosts.iter().any(|h| {
                            h["app_id"] == app.id.as_str()
                                && h["latest_handshake"].as_u64() > Some(0)
                        })
                    })
                    .then(|| status.to_string())
            },
            || {
                let mut logs = sup.dstack_ok(&["vm", "logs", "-n", "100", "gateway"]);
                for app in apps {
                    logs.push_str(&format!("\n{}:\n", app.name));
                    logs.push_str(
                        &sup.dstack_ok(&["vm", "logs", "-n", "60", "--serial", &app.name]),
                    );
                }
                logs
            },
        )
    }

    /// `GET /` through the gateway with SNI `sni`, retried for up to two
    /// minutes (a route appears once the watch delivers it); `verify`
    /// checks the gateway's wildcard against pebble's roots.
    pub fn get(&self, sni: &str, verify: bool) -> anyhow::Result<(Vec<u8>, String)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let roots = verify.then_some(&self.roots);
            match https_get(self.ports.proxy, sni, roots) {
                Ok(answer) => return Ok(answer),
                Err(e) if Instant::now() >= deadline => return Err(e).context(sni.to_owned()),
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }
}
