//! Builds OCI images from an `image.json` spec and pushes them to a registry
//! over the Distribution API — so examples and tests exercise the same pull
//! path users' images take, without a Docker engine or Docker Hub.
//!
//! An image is busybox-static and a few files, optionally on top of pinned
//! Debian packages and PyPI wheels (an `image.lock.json`, see [`Lock`]) and
//! npm packages (a `package-lock.json`). Every download is cached under
//! `~/.cache/dstack-rs/downloads` by its hash and verified before use; the
//! layer is deterministic (sorted entries, zero mtimes, root owner,
//! normalised modes), so the same inputs give the same digest.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

/// Where busybox-static (Debian `busybox-static`) installs its binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Applets linked into /bin in images that ask for busybox.
const APPLETS: [&str; 14] = [
    "sh", "httpd", "wget", "cat", "echo", "ls", "mkdir", "date", "sleep", "nc", "env", "id",
    "hostname", "printf",
];

/// `examples/<app>/image.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Repository in the registry, e.g. `dstack-examples/hello`.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// Include /bin/busybox and applet symlinks.
    #[serde(default)]
    pub busybox: bool,
    /// Path in the image → file relative to the spec's directory.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Path in the image → one of this workspace's binaries, built static
    /// (`cargo build --release --target x86_64-unknown-linux-musl`; `make
    /// build` does it), e.g. the KMS's own image.
    #[serde(default)]
    pub static_bins: BTreeMap<String, String>,
    /// Default command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Default environment (`KEY=value`).
    #[serde(default)]
    pub env: Vec<String>,
    /// Default working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Pinned Debian packages and wheels: a [`Lock`] file relative to the spec.
    #[serde(default)]
    pub lock: Option<String>,
    /// Where the lock's wheels are unpacked (a site-packages directory).
    #[serde(default)]
    pub site_packages: Option<String>,
    /// A `package-lock.json` (relative to the spec) whose packages are
    /// unpacked under [`Self::node_modules`] at the lock's own paths.
    #[serde(default)]
    pub npm_lock: Option<String>,
    /// Where `node_modules/...` of the npm lock goes, e.g. `/app/node_modules`.
    #[serde(default)]
    pub node_modules: Option<String>,
    /// Path prefixes dropped from the Debian packages (docs, man pages, locales).
    #[serde(default)]
    pub prune: Vec<String>,
    /// Symlinks to add: path in the image → target.
    #[serde(default)]
    pub symlinks: BTreeMap<String, String>,
    /// Byte-compile the Python sources (with the image's own interpreter,
    /// `unchecked-hash` pycs) so the guest does not compile them at every start.
    #[serde(default)]
    pub compile_python: bool,
}

/// `image.lock.json`: exact versions and hashes of everything downloaded
/// (regenerate with `tests/sdk-images/relock`).
#[derive(Debug, Deserialize)]
pub struct Lock {
    /// Debian packages, unpacked in order (no maintainer scripts run).
    #[serde(default)]
    pub debs: Vec<LockedFile>,
    /// PyPI wheels, unpacked into `site_packages`.
    #[serde(default)]
    pub wheels: Vec<LockedFile>,
    /// Source archives (.tar.gz) unpacked as they are under `dest`, e.g. an
    /// sdist whose test suite runs in the image.
    #[serde(default)]
    pub archives: Vec<LockedArchive>,
}

/// A pinned .tar.gz and where it is unpacked.
#[derive(Debug, Deserialize)]
pub struct LockedArchive {
    /// The download.
    #[serde(flatten)]
    pub file: LockedFile,
    /// Directory in the image.
    pub dest: String,
}

/// One pinned download.
#[derive(Debug, Deserialize)]
pub struct LockedFile {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Where it is fetched from.
    pub url: String,
    /// Hex sha256 of the file.
    pub sha256: String,
}

/// What one path of the layer is.
#[derive(Debug)]
enum Node {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

/// A built image: one layer, a config, a manifest.
#[derive(Debug)]
pub struct BuiltImage {
    /// gzip'd tar layer.
    pub layer: Vec<u8>,
    /// Image config JSON.
    pub config: Vec<u8>,
    /// Manifest JSON.
    pub manifest: Vec<u8>,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn add_file(
    tar: &mut tar::Builder<impl Write>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path.trim_start_matches('/'), data)?;
    Ok(())
}

fn add_dir(tar: &mut tar::Builder<impl Write>, path: &str) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    tar.append_data(
        &mut header,
        format!("{}/", path.trim_start_matches('/')),
        std::io::empty(),
    )?;
    Ok(())
}

fn add_symlink(tar: &mut tar::Builder<impl Write>, path: &str, target: &str) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Symlink);
    tar.append_link(&mut header, path.trim_start_matches('/'), target)?;
    Ok(())
}

impl ImageSpec {
    /// Read a spec file.
    pub fn load(path: &Path) -> anyhow::Result<(Self, PathBuf)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let spec: ImageSpec = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid image spec", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok((spec, dir))
    }

    /// Build the image deterministically (sorted entries, zero mtimes).
    pub fn build(&self, dir: &Path) -> anyhow::Result<BuiltImage> {
        let mut tree: BTreeMap<String, Node> = BTreeMap::new();
        if self.lock.is_some() || self.npm_lock.is_some() {
            let staging = crate::harness::tempfile_dir::TempDir::new("dstack-image")?;
            self.stage(dir, staging.path())?;
            walk(staging.path(), staging.path(), &mut tree)?;
        }
        if self.busybox {
            let busybox = std::fs::read(HOST_BUSYBOX).with_context(|| {
                format!("{HOST_BUSYBOX} is missing: install Debian's busybox-static")
            })?;
            tree.insert(
                "/bin/busybox".into(),
                Node::File {
                    data: busybox,
                    mode: 0o755,
                },
            );
            for applet in APPLETS {
                tree.entry(format!("/bin/{applet}"))
                    .or_insert_with(|| Node::Symlink("busybox".into()));
            }
        }
        tree.insert(
            "/etc/passwd".into(),
            Node::File {
                data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
                    .to_vec(),
                mode: 0o644,
            },
        );
        tree.insert(
            "/etc/group".into(),
            Node::File {
                data: b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
                mode: 0o644,
            },
        );
        for (path, src) in &self.files {
            let src = dir.join(src);
            let data =
                std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&src)?.permissions())
                    & 0o111
                    != 0;
            let mode = if executable { 0o755 } else { 0o644 };
            tree.insert(path.clone(), Node::File { data, mode });
        }
        for (path, name) in &self.static_bins {
            let src = crate::harness::static_bin_dir().join(name);
            let data = std::fs::read(&src).with_context(|| {
                format!(
                    "cannot read {} (cargo build -p {name} --release --target x86_64-unknown-linux-musl)",
                    src.display()
                )
            })?;
            tree.insert(path.clone(), Node::File { data, mode: 0o755 });
        }
        for (path, target) in &self.symlinks {
            tree.insert(path.clone(), Node::Symlink(target.clone()));
        }
        // /var/tmp as in any Linux root: podman stages an image copy within
        // its storage there, whatever TMPDIR says (tagging a build whose
        // last step came from the layer cache).
        for d in ["/bin", "/tmp", "/var/tmp", "/etc"] {
            tree.entry(d.into()).or_insert(Node::Dir);
        }
        let parents: Vec<String> = tree
            .keys()
            .flat_map(|path| {
                Path::new(path)
                    .ancestors()
                    .skip(1)
                    .filter(|d| *d != Path::new("/"))
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for d in parents {
            tree.entry(d).or_insert(Node::Dir);
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        let mut tar = tar::Builder::new(gz);
        for (path, node) in &tree {
            match node {
                Node::Dir => add_dir(&mut tar, path)?,
                Node::File { data, mode } => add_file(&mut tar, path, data, *mode)?,
                Node::Symlink(target) => add_symlink(&mut tar, path, target)?,
            }
        }
        let gz = tar.into_inner()?;
        let layer = gz.finish()?;
        let diff_id = {
            let mut decoder = flate2::read::GzDecoder::new(&layer[..]);
            let mut raw = Vec::new();
            std::io::Read::read_to_end(&mut decoder, &mut raw)?;
            sha256(&raw)
        };
        let config = canonical_json(serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Cmd": self.cmd,
                "Env": if self.env.is_empty() { vec!["PATH=/bin".to_string()] } else { self.env.clone() },
                "WorkingDir": self.workdir.as_deref().unwrap_or("/"),
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            // One entry per layer, as docker and buildah write: the
            // engine's layer cache (buildah) only reuses a step whose base
            // image's history accounts for each of its layers, so an image
            // without it would be rebuilt from scratch every time.
            "history": [{ "created_by": format!("image.json of {}", self.repository) }],
        }))?;
        let manifest = canonical_json(serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(&layer),
                "size": layer.len(),
            }],
        }))?;
        Ok(BuiltImage {
            layer,
            config,
            manifest,
        })
    }
}

impl ImageSpec {
    /// Unpacks the pinned Debian packages, wheels and npm packages into `root`.
    fn stage(&self, dir: &Path, root: &Path) -> anyhow::Result<()> {
        if let Some(lock) = &self.lock {
            let path = dir.join(lock);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let lock: Lock = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid image lock", path.display()))?;
            for deb in &lock.debs {
                let file = fetch_deb(deb)?;
                let out = Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&file)
                    .arg(root)
                    .output()
                    .context("cannot run dpkg-deb (Debian's dpkg)")?;
                if !out.status.success() {
                    bail!(
                        "dpkg-deb -x {} {} failed: {}",
                        deb.name,
                        deb.version,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
            for prefix in &self.prune {
                let path = root.join(prefix.trim_start_matches('/'));
                if path.exists() {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("cannot prune {}", path.display()))?;
                }
            }
            if !lock.wheels.is_empty() {
                let site = self
                    .site_packages
                    .as_deref()
                    .context("the lock has wheels but the spec names no site_packages")?;
                let site = root.join(site.trim_start_matches('/'));
                std::fs::create_dir_all(&site)?;
                for wheel in &lock.wheels {
                    let file = fetch(&wheel.url, &Hash::Sha256(wheel.sha256.clone()))?;
                    unpack_wheel(&file, &site)
                        .with_context(|| format!("wheel {} {}", wheel.name, wheel.version))?;
                }
            }
            for archive in &lock.archives {
                let file = fetch(
                    &archive.file.url,
                    &Hash::Sha256(archive.file.sha256.clone()),
                )?;
                let dest = root.join(archive.dest.trim_start_matches('/'));
                std::fs::create_dir_all(&dest)?;
                let status = Command::new("tar")
                    .arg("-xzf")
                    .arg(&file)
                    .arg("-C")
                    .arg(&dest)
                    .args(["--no-same-owner", "--no-same-permissions"])
                    .status()
                    .context("cannot run tar")?;
                if !status.success() {
                    bail!(
                        "cannot unpack {} {}",
                        archive.file.name,
                        archive.file.version
                    );
                }
            }
        }
        if let Some(npm_lock) = &self.npm_lock {
            let modules = self
                .node_modules
                .as_deref()
                .context("the spec has an npm_lock but no node_modules")?;
            stage_npm(
                &dir.join(npm_lock),
                &root.join(modules.trim_start_matches('/')),
            )?;
        }
        if self.compile_python {
            compile_python(root)?;
        }
        Ok(())
    }
}

/// How a download is pinned.
#[derive(Debug)]
enum Hash {
    /// Hex sha256 (Debian, PyPI).
    Sha256(String),
    /// npm's `integrity` (`sha512-<base64>`).
    Sri(String),
}

impl Hash {
    fn cache_name(&self) -> String {
        match self {
            Hash::Sha256(hex) => format!("sha256-{hex}"),
            Hash::Sri(sri) => sri.replace(['/', '+'], "_"),
        }
    }

    fn matches(&self, data: &[u8]) -> bool {
        match self {
            Hash::Sha256(hex) => hex::encode(Sha256::digest(data)) == hex.to_lowercase(),
            Hash::Sri(sri) => sri
                .strip_prefix("sha512-")
                .is_some_and(|b64| base64_encode(&Sha512::digest(data)) == b64),
        }
    }
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Where downloads are cached.
pub fn downloads_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/dstack-rs/downloads")
}

/// The cached file for `url`, downloaded (with curl) if missing, and in
/// every case checked against `hash` before it is used.
fn fetch(url: &str, hash: &Hash) -> anyhow::Result<PathBuf> {
    let cache = downloads_dir();
    std::fs::create_dir_all(&cache)?;
    let path = cache.join(hash.cache_name());
    if let Ok(data) = std::fs::read(&path) {
        if hash.matches(&data) {
            return Ok(path);
        }
        std::fs::remove_file(&path)?;
    }
    let tmp = cache.join(format!(".{}.{}", hash.cache_name(), std::process::id()));
    let status = Command::new("curl")
        .args(["-fsSL", "--retry", "3", "--connect-timeout", "20", "-o"])
        .arg(&tmp)
        .arg(url)
        .status()
        .context("cannot run curl")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("downloading {url} failed (curl {status})");
    }
    let data = std::fs::read(&tmp)?;
    if !hash.matches(&data) {
        let _ = std::fs::remove_file(&tmp);
        bail!("{url} does not match its pinned hash {hash:?}: refusing it");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// This machine's Debian mirror (the archive its apt sources name for the
/// main suites), e.g. `http://deb.debian.org/debian/`: locks hold pool
/// paths only, so no mirror host is written into the repository.
fn debian_mirror() -> anyhow::Result<String> {
    let out = Command::new("apt-get")
        .args([
            "indextargets",
            "--format",
            "$(REPO_URI) $(RELEASE)",
            "Identifier: Packages",
        ])
        .output()
        .context("cannot run apt-get")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, release)| matches!(*release, "bookworm" | "trixie"))
        .map(|(uri, _)| {
            if uri.ends_with('/') {
                uri.to_string()
            } else {
                format!("{uri}/")
            }
        })
        .context("apt knows no Debian mirror for bookworm or trixie (run scripts/install-deps)")
}

/// JSON with every object's keys sorted, whatever serde_json's features: a
/// crate elsewhere in a test binary's build (dcap-qvl) turns on
/// `preserve_order`, and an image's digest must not depend on what a test
/// links.
fn canonical_json(value: serde_json::Value) -> serde_json::Result<Vec<u8>> {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    serde_json::to_vec(&sorted(value))
}

/// A pinned .deb; when Debian no longer serves that version (a point release
/// or security update superseded it), the current one from the host's apt
/// (verified by apt against the signed index), with a warning: the image
/// then differs from the locked one, but the tests can still run.
fn fetch_deb(deb: &LockedFile) -> anyhow::Result<PathBuf> {
    let url = if deb.url.contains("://") {
        deb.url.clone()
    } else {
        format!("{}{}", debian_mirror()?, deb.url)
    };
    let pinned = match fetch(&url, &Hash::Sha256(deb.sha256.clone())) {
        Ok(path) => return Ok(path),
        Err(e) => e,
    };
    let work = tempfile::tempdir()?;
    let status = Command::new("apt-get")
        .args(["-q", "download", &deb.name])
        .current_dir(work.path())
        .status()
        .context("cannot run apt-get")?;
    let file = std::fs::read_dir(work.path())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let (true, Some(file)) = (status.success(), file) else {
        return Err(pinned.context(format!(
            "{} {} is gone and apt-get download {} failed too",
            deb.name, deb.version, deb.name
        )));
    };
    let data = std::fs::read(&file)?;
    let hash = hex::encode(Sha256::digest(&data));
    eprintln!(
        "warning: {} {} is no longer served by Debian; using {} (sha256 {hash}); run tests/sdk-images/relock",
        deb.name,
        deb.version,
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    let dest = downloads_dir().join(format!("sha256-{hash}"));
    std::fs::copy(&file, &dest)?;
    Ok(dest)
}

/// Installs a wheel the way pip does for pure and platform libraries: its
/// tree into `site`, `*.data/{purelib,platlib}` merged into `site`, other
/// `.data` parts (scripts, headers) dropped.
fn unpack_wheel(file: &Path, site: &Path) -> anyhow::Result<()> {
    let out = Command::new("unzip")
        .args(["-q", "-o", "-X"])
        .arg(file)
        .arg("-d")
        .arg(site)
        .output()
        .context("cannot run unzip (Debian's unzip)")?;
    if !out.status.success() {
        bail!(
            "unzip failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for entry in std::fs::read_dir(site)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".data") {
            continue;
        }
        for lib in ["purelib", "platlib"] {
            let from = entry.path().join(lib);
            if from.is_dir() {
                let status = Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", from.display()))
                    .arg(site)
                    .status()?;
                if !status.success() {
                    bail!("cannot merge {}", from.display());
                }
            }
        }
        std::fs::remove_dir_all(entry.path())?;
    }
    Ok(())
}

/// Unpacks every package of a `package-lock.json` (v2/v3) at its own path
/// under `modules` (the lock's keys are `node_modules/...` install paths).
fn stage_npm(lock_path: &Path, modules: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let lock: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", lock_path.display()))?;
    let packages = lock["packages"]
        .as_object()
        .context("package-lock.json has no `packages` (lockfileVersion 2 or 3 needed)")?;
    for (key, pkg) in packages {
        let Some(rel) = key.strip_prefix("node_modules/") else {
            continue;
        };
        if pkg["hasInstallScript"].as_bool() == Some(true) {
            bail!("npm package {key} has install scripts, which this builder does not run");
        }
        let url = pkg["resolved"].as_str().with_context(|| {
            format!(
                "{key} has no `resolved` URL: lock with --omit-lockfile-registry-resolved=false"
            )
        })?;
        let integrity = pkg["integrity"]
            .as_str()
            .with_context(|| format!("{key} has no integrity"))?;
        let tgz = fetch(url, &Hash::Sri(integrity.to_string()))?;
        let dest = modules.join(rel);
        std::fs::create_dir_all(&dest)?;
        let status = Command::new("tar")
            .args(["-xzf"])
            .arg(&tgz)
            .arg("-C")
            .arg(&dest)
            .args([
                "--strip-components=1",
                "--no-same-owner",
                "--no-same-permissions",
            ])
            .status()
            .context("cannot run tar")?;
        if !status.success() {
            bail!("cannot unpack {key}");
        }
    }
    Ok(())
}

/// Byte-compiles every `.py` under `root` with the image's own Python
/// (through the staged dynamic loader), as `unchecked-hash` pycs that carry
/// no timestamps and the guest's paths.
fn compile_python(root: &Path) -> anyhow::Result<()> {
    let python = std::fs::read_dir(root.join("usr/bin"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("python3.") && !n.contains('-'))
        .max()
        .context("compile_python: no /usr/bin/python3.X in the image")?;
    let libs = format!(
        "{0}/lib/x86_64-linux-gnu:{0}/usr/lib/x86_64-linux-gnu",
        root.display()
    );
    let out = Command::new(root.join("lib64/ld-linux-x86-64.so.2"))
        .arg("--library-path")
        .arg(&libs)
        .arg(root.join("usr/bin").join(&python))
        .args([
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j",
            "1",
            "--invalidation-mode",
            "unchecked-hash",
        ])
        .arg("-s")
        .arg(root)
        .args([
            "-p",
            "/",
            "-x",
            r"(/test/|/tests/|lib2to3|idlelib|/site-packages/pip/)",
        ])
        .arg(root.join("usr/lib"))
        .arg(root.join("usr/local/lib"))
        .env_clear()
        .env("PYTHONHOME", root.join("usr"))
        .env("PYTHONHASHSEED", "0")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .context("cannot run the image's python to compile")?;
    if !out.status.success() {
        bail!(
            "compileall failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Adds everything under `dir` to `tree` (paths relative to `root`), with
/// normalised modes: 0755 if any execute bit is set, else 0644.
fn walk(root: &Path, dir: &Path, tree: &mut BTreeMap<String, Node>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let rel = format!(
            "/{}",
            path.strip_prefix(root)?
                .to_str()
                .with_context(|| format!("{} is not UTF-8", path.display()))?
        );
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            tree.insert(rel, Node::Symlink(target.display().to_string()));
        } else if meta.is_dir() {
            tree.insert(rel, Node::Dir);
            walk(root, &path, tree)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let data = std::fs::read(&path)?;
            tree.insert(rel, Node::File { data, mode });
        }
    }
    Ok(())
}

impl BuiltImage {
    /// The manifest digest (what `image@sha256:...` pins).
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// Push to `registry` (host:port, plain HTTP) as `repository:tag`.
    pub fn push(&self, registry: &str, repository: &str, tag: &str) -> anyhow::Result<()> {
        let base = format!("http://{registry}/v2/{repository}");
        for blob in [&self.layer, &self.config] {
            let digest = sha256(blob);
            let exists = ureq::head(&format!("{base}/blobs/{digest}")).call().is_ok();
            if exists {
                continue;
            }
            let start = ureq::post(&format!("{base}/blobs/uploads/"))
                .call()
                .with_context(|| format!("registry {registry} refused an upload"))?;
            let location = start
                .header("Location")
                .context("upload has no Location")?
                .to_string();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("http://{registry}{location}")
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            ureq::put(&format!("{location}{sep}digest={digest}"))
                .set("Content-Type", "application/octet-stream")
                .send_bytes(blob)
                .with_context(|| format!("uploading {digest}"))?;
        }
        let response = ureq::put(&format!("{base}/manifests/{tag}"))
            .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .send_bytes(&self.manifest)
            .context("pushing the manifest")?;
        if response.status() != 201 {
            bail!(
                "registry answered {} to the manifest push",
                response.status()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the network and the host's apt lists.
    #[test]
    #[ignore = "downloads from Debian"]
    fn a_superseded_deb_falls_back_to_the_current_one() {
        let gone = LockedFile {
            name: "gcc-12-base".into(),
            version: "0.0-gone".into(),
            url: "http://deb.debian.org/debian/pool/main/g/gcc-12/gcc-12-base_0.0-gone_amd64.deb"
                .into(),
            sha256: "00".repeat(32),
        };
        let path = fetch_deb(&gone).unwrap();
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            format!("sha256-{}", hex::encode(Sha256::digest(&data)))
        );
    }
}
