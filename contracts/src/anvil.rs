//! A throwaway local chain for tests: the anvil binary pinned in
//! `contracts/package-lock.json`, on a free port, killed on drop.
//!
//! Public so that other crates' end-to-end tests (the KMS's) can use the same
//! chain setup.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Overrides where the anvil binary is looked for.
pub const ANVIL_ENV: &str = "DSTACK_ANVIL";

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a local chain could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AnvilError {
    /// The binary is not installed.
    #[error(
        "anvil not found at {path}: run contracts/build --install (npm ci of the pinned @foundry-rs/anvil)"
    )]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The binary could not be started.
    #[error("starting {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// anvil exited or printed no listening address in time.
    #[error("anvil did not start listening within {timeout:?} (output so far: {output})")]
    NotListening {
        /// How long it was given.
        timeout: Duration,
        /// What it printed, for the reason.
        output: String,
    },
}

/// A running anvil, killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    url: String,
    keys: Vec<String>,
}

/// This checkout's `contracts/`. Under cargo (tests of any workspace crate)
/// it is found from the running crate's manifest dir, before the one
/// compiled in: a target dir shared by two checkouts can hold a build of
/// the other.
fn contracts_dir() -> PathBuf {
    let compiled = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(running) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return compiled;
    };
    running
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map_or(compiled, |root| root.join("contracts"))
}

impl Anvil {
    /// Where the pinned binary is: `$DSTACK_ANVIL`, else the platform package
    /// npm installs into `contracts/node_modules`.
    pub fn binary() -> PathBuf {
        if let Some(p) = std::env::var_os(ANVIL_ENV) {
            return PathBuf::from(p);
        }
        let platform = match std::env::consts::ARCH {
            "aarch64" => "linux-arm64",
            _ => "linux-amd64",
        };
        contracts_dir()
            .join("node_modules/@foundry-rs")
            .join(format!("anvil-{platform}"))
            .join("bin/anvil")
    }

    /// Starts anvil on a free localhost port and waits until it accepts
    /// connections. Its accounts are anvil's default dev accounts, each with
    /// 10000 ETH.
    pub fn start() -> Result<Self, AnvilError> {
        let path = Self::binary();
        if !path.is_file() {
            return Err(AnvilError::Missing { path });
        }
        // Port 0: the OS picks a free port and anvil prints it, so parallel
        // tests never race for one.
        let mut child = Command::new(&path)
            .args(["--host", "127.0.0.1", "--port", "0", "--accounts", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| AnvilError::Spawn {
                path: path.clone(),
                source,
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| AnvilError::NotListening {
                timeout: START_TIMEOUT,
                output: "no stdout".into(),
            })?;
        let (tx, rx) = mpsc::channel::<String>();
        // The reader keeps draining after start-up: anvil logs every call, and
        // a full pipe would block it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                    continue;
                }
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        let mut output = String::new();
        let mut keys = Vec::new();
        let mut in_keys = false;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AnvilError::NotListening {
                    timeout: START_TIMEOUT,
                    output,
                });
            };
            output.push_str(&line);
            output.push('\n');
            let trimmed = line.trim();
            if trimmed == "Private Keys" {
                in_keys = true;
            } else if in_keys && trimmed.starts_with('(') {
                if let Some(key) = trimmed.split_whitespace().nth(1) {
                    keys.push(key.to_owned());
                }
            } else if in_keys && !trimmed.is_empty() && !trimmed.starts_with('=') {
                in_keys = false;
            }
            if let Some(addr) = trimmed.strip_prefix("Listening on ") {
                break addr.to_owned();
            }
        };
        drop(rx);
        wait_for_port(&addr, deadline).map_err(|()| AnvilError::NotListening {
            timeout: START_TIMEOUT,
            output,
        })?;
        Ok(Self {
            child,
            url: format!("http://{addr}"),
            keys,
        })
    }

    /// The JSON-RPC URL (`http://127.0.0.1:PORT`).
    pub fn rpc_url(&self) -> &str {
        &self.url
    }

    /// The first funded dev account's private key (hex with `0x`).
    pub fn dev_key(&self) -> &str {
        self.dev_key_at(0)
    }

    /// The `i`-th funded dev account's private key (anvil starts 3 here).
    ///
    /// # Panics
    /// If `i` is 3 or more (a test-setup bug).
    pub fn dev_key_at(&self, i: usize) -> &str {
        &self.keys[i]
    }
}

fn wait_for_port(addr: &str, deadline: Instant) -> Result<(), ()> {
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(())
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
