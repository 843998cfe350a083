//! A supervisor in a scratch state directory, the CLI pointed at it, and
//! helpers to reach published ports. Everything runs for real: QEMU (TCG),
//! vhost-device-vsock, the local registry.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::oci::ImageSpec;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    // The manifest dir cargo gives the running test, before the one compiled
    // in: a target dir shared by two checkouts can hold a build of the other.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/dstack-rs")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("target"))
}

/// Directory holding the `dstack` and `dstack-supervisor` binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSTACK_BIN_DIR") {
        return dir.into();
    }
    target_dir().join("debug")
}

/// Directory holding the static (musl) release binaries that go into
/// images, e.g. `dstack-kms` (dstack-init is built with the `guest`
/// profile, in `x86_64-unknown-linux-musl/guest`).
pub fn static_bin_dir() -> PathBuf {
    target_dir().join("x86_64-unknown-linux-musl/release")
}

/// Directory of built OS images (`make image` fills it).
pub fn images_dir() -> PathBuf {
    std::env::var_os("DSTACK_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("images"))
}

/// The newest built image's directory (by name, as `deploy` picks the
/// default); panics naming `make image` when there is none.
pub fn newest_image() -> PathBuf {
    let root = images_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("no images in {} ({e}): run `make image`", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metadata.json").is_file())
        .collect();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "no image with a metadata.json in {}: run `make image`",
            root.display()
        )
    })
}

fn require(path: &Path, how: &str) -> anyhow::Result<()> {
    if !path.exists() {
        bail!(
            "{} is missing: run `{how}` first (make e2e does it)",
            path.display()
        );
    }
    Ok(())
}

/// Build an example's image and push it to the local registry (started if needed).
pub fn push_example(name: &str) -> anyhow::Result<String> {
    push_image(&repo_root().join("examples").join(name))
}

/// Build the image whose `image.json` is in `dir` and push it to the local
/// registry (started if needed); returns its digest.
pub fn push_image(dir: &Path) -> anyhow::Result<String> {
    let status = Command::new(repo_root().join("scripts/registry"))
        .arg("start")
        .status()?;
    if !status.success() {
        bail!("the local registry did not start");
    }
    let (spec, dir) = ImageSpec::load(&dir.join("image.json"))?;
    let image = spec.build(&dir)?;
    image.push("127.0.0.1:5000", &spec.repository, &spec.tag)?;
    Ok(image.digest())
}

/// A host port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

/// A running `dstack-supervisor` with its own state directory.
#[derive(Debug)]
pub struct Supervisor {
    pub state: tempfile_dir::TempDir,
    child: Option<Child>,
    sim_pccs_port: u16,
}

/// Minimal temp dir (the e2e crate avoids extra dependencies).
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let base = std::env::temp_dir();
            for n in 0..1000u32 {
                let path = base.join(format!("{prefix}-{}-{n}", std::process::id()));
                if std::fs::create_dir(&path).is_ok() {
                    return Ok(Self(path));
                }
            }
            Err(std::io::Error::other("no free temp dir name"))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Supervisor {
    /// Start a supervisor (TCG) whose images directory is the shared built images.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        require(
            &bin_dir().join("dstack-supervisor"),
            "cargo build -p dstack-supervisor",
        )?;
        require(&images_dir(), "make image")?;
        let state = tempfile_dir::TempDir::new(&format!("dstack-e2e-{name}"))?;
        std::os::unix::fs::symlink(images_dir(), state.path().join("images"))?;
        let mut sup = Self {
            state,
            child: None,
            sim_pccs_port: free_port(),
        };
        sup.spawn()?;
        Ok(sup)
    }

    /// The sim PCCS as guests reach it (through their user-net gateway):
    /// what a KMS in a CVM fetches its callers' collateral from.
    pub fn guest_pccs_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.sim_pccs_port)
    }

    /// The sim PCCS as the host reaches it.
    pub fn host_pccs_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.sim_pccs_port)
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.state.path().join("supervisor.sock")
    }

    /// (Re)start the daemon process on the same state directory.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.path().join("supervisor.log"))?;
        let child = Command::new(bin_dir().join("dstack-supervisor"))
            .args(["run", "--accel", "tcg", "--state-dir"])
            .arg(self.state.path())
            .arg("--socket")
            .arg(self.socket())
            // Tests run supervisors side by side: each its own sim PCCS port.
            .arg("--sim-pccs-listen")
            .arg(format!("127.0.0.1:{}", self.sim_pccs_port))
            // One ACPI probe per VM shape for the whole run (and shared with
            // `dstack image measure`'s default cache), not one per test.
            .arg("--acpi-cache")
            .arg(cache_dir().join("acpi"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dstack-supervisor")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.dstack(&["vm", "ls"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("supervisor did not answer; log:\n{}", self.log())
    }

    /// SIGKILL the daemon (its VMs keep running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("supervisor.log")).unwrap_or_default()
    }

    /// Run the CLI against this supervisor.
    pub fn dstack(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("dstack"))
            .args(args)
            .env(
                "DSTACK_SUPERVISOR",
                format!("unix:{}", self.socket().display()),
            )
            .env("NO_COLOR", "1")
            .output()
            .expect("dstack runs")
    }

    /// Run the CLI and require success; returns stdout.
    pub fn dstack_ok(&self, args: &[&str]) -> String {
        let out = self.dstack(args);
        assert!(
            out.status.success(),
            "dstack {args:?} failed:\nstdout: {}\nstderr: {}\nsupervisor log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Paths of QEMU and vhost-device-vsock processes started from this state dir.
    pub fn vm_processes(&self) -> Vec<u32> {
        let needle = self.state.path().display().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if (cmdline.contains("qemu-system") || cmdline.contains("vhost-device-vsock"))
                && cmdline.contains(&needle)
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Leave nothing running: remove every VM, then stop the daemon.
        if self.child.is_some() {
            let ls = self.dstack(&["vm", "ls", "--json"]);
            if let Ok(vms) = serde_json::from_slice::<Vec<serde_json::Value>>(&ls.stdout) {
                for vm in vms {
                    if let Some(id) = vm["id"].as_str() {
                        let _ = self.dstack(&["vm", "rm", "--force", id]);
                    }
                }
            }
        }
        self.kill();
        for pid in self.vm_processes() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// GET `http://127.0.0.1:<port><path>` until it answers 200 or `timeout` passes.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut last = String::new();
    while Instant::now() < deadline {
        match ureq::get(&url).timeout(Duration::from_secs(5)).call() {
            Ok(resp) if resp.status() == 200 => return Ok(resp.into_string()?),
            Ok(resp) => last = format!("status {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{url} did not answer 200 within {timeout:?}: {last}")
}

/// The steps (after each stage's `FROM`) of a service's build in `vm logs`
/// output (`<service> | [build] ...` lines), each with whether the engine
/// took it from its layer cache (`--> Using cache` on the next line).
pub fn build_steps(logs: &str, service: &str) -> Vec<(String, bool)> {
    let prefix = format!("{service} | [build] ");
    let lines: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, text)| text))
        .collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.contains("STEP ") && !line.contains(": FROM "))
        .map(|(i, line)| {
            let cached = lines
                .get(i + 1)
                .is_some_and(|next| next.starts_with("--> Using cache"));
            (line.to_string(), cached)
        })
        .collect()
}
