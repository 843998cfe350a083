//! Real etcd clusters on 127.0.0.1 for tests (this crate's, and the
//! gateway's end-to-end tests): `n` `etcd` processes with data in a
//! temporary directory, short Raft timers, killed on drop.
//!
//! The binary is `$ETCD_BIN`, else `etcd` on the `PATH` (Debian:
//! `etcd-server`).

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Raft heartbeat, in ms: 10× faster than etcd's default, so elections and
/// failovers take well under a second.
const HEARTBEAT_MS: u32 = 50;
/// Raft election timeout, in ms. Also sets etcd's minimum lease TTL
/// (1.5 election timeouts, rounded up: 1 s here).
const ELECTION_MS: u32 = 500;
/// How long a member may take to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// How long a member may take to serve its peer port at first start.
const PEER_SERVING_WITHIN: Duration = Duration::from_secs(5);
/// Attempts with fresh ports when a member dies at start (another test
/// took one of its ports between probing and binding).
const START_ATTEMPTS: usize = 3;

/// Why a test cluster did not come up.
#[derive(Debug, thiserror::Error)]
pub enum EtcdClusterError {
    /// Files for the cluster could not be written.
    #[error("cannot prepare the cluster's directory")]
    Dir(#[source] io::Error),
    /// The etcd binary could not be run.
    #[error("cannot run {binary:?} (install Debian's etcd-server or set ETCD_BIN)")]
    Spawn {
        /// The binary.
        binary: String,
        /// The spawn error.
        #[source]
        source: io::Error,
    },
    /// A member exited or did not become healthy in time.
    #[error("etcd member {member} is not healthy after {waited:?}; its log ends with:\n{log_tail}")]
    Unhealthy {
        /// The member's index.
        member: usize,
        /// How long it was given.
        waited: Duration,
        /// The end of its log.
        log_tail: String,
    },
}

/// TLS for the members' client port (peers still talk plain HTTP).
#[derive(Clone)]
pub struct ServerTls {
    /// The members' certificate, PEM; must name 127.0.0.1.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// CA for client certificates, PEM; with it, etcd requires one.
    pub client_ca_pem: Option<String>,
    /// What the health check presents and trusts (etcd-client's settings).
    pub client: crate::TlsConfig,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_cert_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A running etcd cluster; every member is killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    binary: String,
    tls: Option<ServerTls>,
    token: String,
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// Starts an `n`-member cluster (plain HTTP) and waits until every
    /// member is healthy.
    pub async fn start(n: usize) -> Result<Self, EtcdClusterError> {
        Self::start_with(n, None).await
    }

    /// Starts an `n`-member cluster whose client port speaks TLS.
    pub async fn start_with(n: usize, tls: Option<ServerTls>) -> Result<Self, EtcdClusterError> {
        let binary = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cluster = Self::spawn(n, &binary, tls.clone()).await?;
            match cluster.wait_all_healthy().await {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < START_ATTEMPTS && cluster.any_exited() => {
                    tracing::warn!(error = %e, "etcd test cluster failed to start, retrying on other ports");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn spawn(
        n: usize,
        binary: &str,
        tls: Option<ServerTls>,
    ) -> Result<Self, EtcdClusterError> {
        // Memory, where there is some: etcd syncs its WAL on every write,
        // which on a virtual disk makes each test write take milliseconds
        // and start-up vary by seconds. (A WAL segment is 64 MiB.)
        let shm = Path::new("/dev/shm");
        let builder = tempfile::Builder::new().prefix("etcd-test-").clone();
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm).or_else(|_| builder.tempdir())
        } else {
            builder.tempdir()
        }
        .map_err(EtcdClusterError::Dir)?;
        let token = dir
            .path()
            .file_name()
            .map_or_else(|| "etcd-test".into(), |s| s.to_string_lossy().into_owned());
        if let Some(tls) = &tls {
            let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem);
            write("server.pem", &tls.cert_pem).map_err(EtcdClusterError::Dir)?;
            write("server-key.pem", &tls.key_pem).map_err(EtcdClusterError::Dir)?;
            if let Some(ca) = &tls.client_ca_pem {
                write("client-ca.pem", ca).map_err(EtcdClusterError::Dir)?;
            }
        }
        // Held until the spawn, so no two members (nor this test's and a
        // parallel test's clusters) are handed the same port.
        let listeners = (0..2 * n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()
            .map_err(EtcdClusterError::Dir)?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()
            .map_err(EtcdClusterError::Dir)?;
        drop(listeners);
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir,
            binary: binary.to_owned(),
            tls,
            token,
            members,
        };
        // One at a time: a new member first asks its peers whether the
        // cluster already exists, and a peer whose port is bound but not
        // yet served costs it a 1 s timeout each (2 s for 3 members).
        for i in 0..n {
            cluster.spawn_member(i)?;
            cluster.wait_peer_serving(i).await;
        }
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let client_url = self.client_url(i);
        let dir = self.dir.path();
        let member = &self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(EtcdClusterError::Dir)?;
        let log_err = log.try_clone().map_err(EtcdClusterError::Dir)?;
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new(&self.binary);
        // etcd reads ETCD_* variables as flags: none from the test's
        // environment may leak in.
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(dir.join(format!("{}.etcd", member.name)))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Ignored when the data directory exists (a restarted member).
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT_MS.to_string())
            .arg("--election-timeout")
            .arg(ELECTION_MS.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server-key.pem"));
            if tls.client_ca_pem.is_some() {
                command
                    .arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(dir.join("client-ca.pem"));
            }
        }
        let child = command.spawn().map_err(|source| EtcdClusterError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// How many members the cluster has (running or stopped).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, stopped members included.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// Member `i`'s client URL.
    pub fn client_url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s log (stdout and stderr, across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills member `i` (SIGKILL: a crash, no goodbye to its peers).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a stopped member `i` on its data directory (it rejoins as
    /// the member it was) and waits until it is healthy.
    pub async fn start_member(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        if self.members[i].child.is_none() {
            self.spawn_member(i)?;
        }
        self.wait_healthy(i).await
    }

    async fn wait_all_healthy(&mut self) -> Result<(), EtcdClusterError> {
        for i in 0..self.members.len() {
            self.wait_healthy(i).await?;
        }
        Ok(())
    }

    fn any_exited(&mut self) -> bool {
        self.members.iter_mut().any(|m| {
            m.child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
        })
    }

    /// Waits (briefly) until member `i` answers on its peer port.
    async fn wait_peer_serving(&mut self, i: usize) {
        let addr = format!("127.0.0.1:{}", self.members[i].peer_port);
        let started = Instant::now();
        while started.elapsed() < PEER_SERVING_WITHIN {
            let exited = self.members[i]
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || peer_version(&addr).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until member `i` knows a leader and serves a linearizable read.
    async fn wait_healthy(&mut self, i: usize) -> Result<(), EtcdClusterError> {
        let started = Instant::now();
        let url = self.client_url(i);
        let tls = self.tls.as_ref().map(|tls| tls.client.clone());
        while started.elapsed() < HEALTHY_WITHIN {
            let exited = self.members[i]
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                break;
            }
            if probe(&url, tls.clone()).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(EtcdClusterError::Unhealthy {
            member: i,
            waited: started.elapsed(),
            log_tail: log_tail(&self.log_path(i)),
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}

/// One member is healthy: it has a leader and answers a quorum read.
async fn probe(url: &str, tls: Option<crate::TlsConfig>) -> bool {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(250))
        .with_timeout(Duration::from_millis(300))
        .with_require_leader(true);
    if let Some(tls) = tls {
        options = options.with_tls(crate::client::tls_options(&tls));
    }
    let check = async {
        let mut client = etcd_client::Client::connect([url], Some(options)).await?;
        let status = client.status().await?;
        if status.leader() == 0 {
            return Ok(false);
        }
        client.get("health", None).await?;
        Ok::<_, etcd_client::Error>(true)
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), check).await,
        Ok(Ok(true))
    )
}

/// Whether the peer port at `addr` serves etcd's `/version`.
async fn peer_version(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(100), get).await,
        Ok(Ok(true))
    )
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
