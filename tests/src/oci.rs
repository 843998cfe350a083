//! Builds small OCI images from an `image.json` spec (busybox-static plus a
//! few files) and pushes them to a registry over the Distribution API — so
//! examples and tests exercise the same pull path users' images take, without
//! a Docker engine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
    /// Default command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Default environment (`KEY=value`).
    #[serde(default)]
    pub env: Vec<String>,
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
        let mut entries: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
        if self.busybox {
            let busybox = std::fs::read(HOST_BUSYBOX).with_context(|| {
                format!("{HOST_BUSYBOX} is missing: install Debian's busybox-static")
            })?;
            entries.insert("/bin/busybox".into(), (busybox, 0o755));
        }
        for (path, src) in &self.files {
            let src = dir.join(src);
            let data =
                std::fs::read(&src).with_context(|| format!("cannot read {}", src.display()))?;
            let executable =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&src)?.permissions())
                    & 0o111
                    != 0;
            entries.insert(path.clone(), (data, if executable { 0o755 } else { 0o644 }));
        }
        let mut dirs: std::collections::BTreeSet<String> = ["/bin", "/tmp", "/etc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for path in entries.keys() {
            let mut p = Path::new(path).parent();
            while let Some(d) = p {
                if d != Path::new("/") {
                    dirs.insert(d.display().to_string());
                }
                p = d.parent();
            }
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        let mut tar = tar::Builder::new(gz);
        for d in &dirs {
            add_dir(&mut tar, d)?;
        }
        add_file(
            &mut tar,
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        )?;
        add_file(
            &mut tar,
            "/etc/group",
            b"root:x:0:\nnogroup:x:65534:\n",
            0o644,
        )?;
        for (path, (data, mode)) in &entries {
            add_file(&mut tar, path, data, *mode)?;
        }
        if self.busybox {
            for applet in APPLETS {
                add_symlink(&mut tar, &format!("/bin/{applet}"), "busybox")?;
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
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Cmd": self.cmd,
                "Env": if self.env.is_empty() { vec!["PATH=/bin".to_string()] } else { self.env.clone() },
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }))?;
        let manifest = serde_json::to_vec(&serde_json::json!({
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
