//! `build:` in the CVM: the service's image is built by the container
//! engine (podman's buildah: Dockerfile heredocs, multi-stage builds,
//! `COPY --from`, `ARG`...) from the recipe in the measured compose file
//! (an inline Dockerfile, built in `/dstack`) or from the shipped context
//! it measures (unpacked by [`crate::build_context`]), then exported as an
//! OCI layout on the engine's volume and unpacked like a pulled image.
//! Build output goes to the service's log. Layers stay in the engine's
//! storage on the encrypted data disk, so a reboot rebuilds from cache.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dstack_compose::{BuildSpec, ENGINE_SERVICE};
use dstack_proto::host::{LogEntry, LogStream};
use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::pull::sha256_hex;
use super::{ContainerError, ImageRoot, Inner, logs, runner, unpack};
use crate::build_context::{ENGINE_STORAGE, engine_context_dir, work_dir, work_rel};

/// The longest a build may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a build's files are, as the engine sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BuildPaths {
    /// The service's work directory (log, exported image, inline Dockerfile).
    pub(crate) work: String,
    /// The Dockerfile.
    pub(crate) dockerfile: String,
    /// The context directory.
    pub(crate) context: String,
}

/// Where service `name`'s build reads its Dockerfile and context: a
/// shipped context when the app-compose measures one (with the Dockerfile
/// in it, or an inline one beside it), else `/dstack` (as upstream) with
/// the inline Dockerfile.
pub(crate) fn build_paths(name: &str, spec: &BuildSpec) -> Result<BuildPaths, String> {
    let work = format!("{ENGINE_STORAGE}/{}", work_rel(name));
    let inline = format!("{work}/Dockerfile");
    let (dockerfile, context) = match (&spec.shipped_context, &spec.dockerfile_inline) {
        (Some(_), Some(_)) => (inline, engine_context_dir(name)),
        (Some(_), None) => {
            let context = engine_context_dir(name);
            (format!("{context}/{}", spec.dockerfile_path()), context)
        }
        (None, Some(_)) => (inline, spec.context.clone()),
        // The app-compose's parse refuses this; said again, in case.
        (None, None) => {
            return Err(format!(
                "the Dockerfile {} is in a build context the app-compose does not ship",
                spec.dockerfile_path()
            ));
        }
    };
    Ok(BuildPaths {
        work,
        dockerfile,
        context,
    })
}

/// The shell script the engine runs: build, then export as an OCI layout
/// (gzip layers, which the guest unpacks), all output into `log`.
pub(crate) fn build_script(name: &str, tag: &str, spec: &BuildSpec, paths: &BuildPaths) -> String {
    let q = |s: &str| shell_words::quote(s).into_owned();
    let work = &paths.work;
    let mut build = vec![
        "podman".to_string(),
        "build".into(),
        "--layers".into(),
        "--pull=missing".into(),
        "-t".into(),
        q(tag),
        "-f".into(),
        q(&paths.dockerfile),
    ];
    for (key, value) in &spec.args {
        build.push("--build-arg".into());
        build.push(q(&format!("{key}={value}")));
    }
    if let Some(target) = &spec.target {
        build.push("--target".into());
        build.push(q(target));
    }
    if spec.no_cache {
        build.push("--no-cache".into());
    }
    build.push(q(&paths.context));
    let log = format!("{work}/build.log");
    let out = format!("{work}/oci");
    format!(
        "set -e; rm -rf {out_q}; exec > {log_q} 2>&1; echo \"building {name}\"; {build}; podman push --compression-format gzip {tag_q} oci:{out_q}:latest",
        out_q = q(&out),
        log_q = q(&log),
        name = name,
        build = build.join(" "),
        tag_q = q(tag),
    )
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// A blob of an OCI layout, checked against the digest that names it.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let hex = sha256_hex(digest).ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
    let path = layout.join("blobs/sha256").join(hex);
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
    if hex::encode(hasher.finalize()) != hex {
        return Err(format!("{} does not match its digest", path.display()));
    }
    Ok(path)
}

/// The manifest digest, config and layer files of the OCI layout at `layout`.
pub(crate) fn read_layout(
    layout: &Path,
) -> Result<(String, String, ImageConfiguration, Vec<PathBuf>), String> {
    let index: Index = serde_json::from_slice(
        &std::fs::read(layout.join("index.json")).map_err(|e| format!("index.json: {e}"))?,
    )
    .map_err(|e| format!("index.json: {e}"))?;
    let [entry] = index.manifests.as_slice() else {
        return Err("the layout must hold exactly one image".into());
    };
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(blob(layout, &entry.digest)?).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("manifest: {e}"))?;
    let config: ImageConfiguration = serde_json::from_slice(
        &std::fs::read(blob(layout, &manifest.config.digest)?).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("config: {e}"))?;
    let config_hex = sha256_hex(&manifest.config.digest)
        .unwrap_or_default()
        .to_string();
    let layers = manifest
        .layers
        .iter()
        .map(|l| blob(layout, &l.digest))
        .collect::<Result<_, _>>()?;
    Ok((entry.digest.clone(), config_hex, config, layers))
}

/// Copies new lines of the build log into the service's log.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    fn drain(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}

/// Builds service `name`'s image with the engine (which is healthy: the
/// service depends on it) and registers the unpacked root.
pub(crate) async fn build_image(inner: &Arc<Inner>, name: &str) -> Result<(), ContainerError> {
    let service = &inner.compose.services[name];
    let Some(spec) = &service.build else {
        return Ok(());
    };
    let fail = |reason: String| ContainerError::Build {
        service: name.to_string(),
        reason,
    };
    let paths = build_paths(name, spec).map_err(fail)?;
    let work = work_dir(&inner.env.data_dir, name);
    std::fs::create_dir_all(&work).map_err(|e| ContainerError::io("creating", &work, e))?;
    if let Some(text) = &spec.dockerfile_inline {
        let dockerfile = work.join("Dockerfile");
        std::fs::write(&dockerfile, text)
            .map_err(|e| ContainerError::io("writing", &dockerfile, e))?;
    }
    let _ = std::fs::remove_file(work.join("build.log"));
    let script = build_script(name, &service.image, spec, &paths);
    inner.system_log(format!("{name}: building {}", service.image));
    let guard = inner.reaping.spawn_guard().await;
    let (helper, root) = (inner.helper.clone(), inner.state_root.clone());
    let args = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let pid = tokio::task::spawn_blocking(move || {
        runner::exec(
            &helper,
            &root,
            ENGINE_SERVICE,
            &args,
            Duration::from_secs(30),
        )
    })
    .await
    .map_err(|e| fail(format!("starting the build panicked: {e}")))??;
    let mut exit = inner.reaping.register(pid);
    drop(guard);
    let mut tail = LogTail {
        path: work.join("build.log"),
        offset: 0,
        partial: String::new(),
    };
    let slot = &inner.slots[name];
    let mut last_lines: Vec<String> = Vec::new();
    let mut emit = |lines: Vec<String>| {
        for line in lines {
            last_lines.push(line.clone());
            if last_lines.len() > 5 {
                last_lines.remove(0);
            }
            let entry = LogEntry {
                ts_ms: logs::now_ms(),
                service: name.to_string(),
                stream: LogStream::Stdout,
                line: format!("[build] {line}"),
            };
            logs::record(&slot.recent, &inner.logs, entry);
        }
    };
    let deadline = tokio::time::Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        tokio::select! {
            status = &mut exit => break status,
            () = tokio::time::sleep(Duration::from_millis(500)) => emit(tail.drain()),
            () = tokio::time::sleep_until(deadline) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                return Err(fail("the build took longer than an hour".into()));
            }
        }
    };
    emit(tail.drain());
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            return Err(fail(format!(
                "the engine's build exited with {}: {}",
                super::reap::exit_code(status),
                last_lines.join(" / ")
            )));
        }
        Err(_) => return Err(fail("the build's exit was lost".into())),
    }
    let layout = work.join("oci");
    let rootfs_dir = inner.env.data_dir.join("images/rootfs");
    let image = service.image.clone();
    let root = tokio::task::spawn_blocking(move || {
        let (digest, config_hex, config, layers) = read_layout(&layout)?;
        let rootfs = unpack::unpack_image(&rootfs_dir, &config_hex, &layers, |_, _| {})
            .map_err(|(i, e)| format!("unpacking layer {}: {e}", i + 1))?;
        Ok::<_, String>(ImageRoot {
            digest,
            config,
            rootfs,
        })
    })
    .await
    .map_err(|e| fail(format!("unpacking panicked: {e}")))?
    .map_err(fail)?;
    inner.system_log(format!("{name}: built {image} ({})", root.digest));
    slot.info
        .send_modify(|i| i.image_digest = root.digest.clone());
    if let Ok(mut images) = inner.images.lock() {
        images.insert(image, root);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_builds_then_exports_quoting_every_value() {
        let spec = BuildSpec {
            context: "/dstack".into(),
            source_context: ".".into(),
            shipped_context: None,
            dockerfile: None,
            dockerfile_inline: Some("FROM x".into()),
            args: [("MSG".to_string(), "it's $HOME".to_string())].into(),
            target: Some("final".into()),
            no_cache: false,
        };
        let paths = build_paths("web", &spec).unwrap();
        let script = build_script("web", "dstack-build/web:latest", &spec, &paths);
        assert!(
            script.starts_with("set -e; rm -rf /var/lib/containers/dstack-build/web/oci;"),
            "{script}"
        );
        assert!(script.contains("podman build --layers --pull=missing -t dstack-build/web:latest -f /var/lib/containers/dstack-build/web/Dockerfile --build-arg 'MSG=it'\\''s $HOME' --target final /dstack;"), "{script}");
        assert!(script.ends_with("podman push --compression-format gzip dstack-build/web:latest oci:/var/lib/containers/dstack-build/web/oci:latest"), "{script}");
        let words = shell_words::split(&script).unwrap();
        assert!(words.contains(&"MSG=it's $HOME".to_string()));
    }

    #[test]
    fn a_shipped_context_is_what_the_engine_builds_from() {
        let mut spec = BuildSpec {
            context: "/dstack/app".into(),
            source_context: "./app".into(),
            shipped_context: Some("ab".repeat(32)),
            dockerfile: Some("docker/Dockerfile.prod".into()),
            dockerfile_inline: None,
            args: [("SOURCE_DATE_EPOCH".to_string(), "0".to_string())].into(),
            target: None,
            no_cache: false,
        };
        let context = "/var/lib/containers/dstack-build/web/context";
        assert_eq!(
            build_paths("web", &spec).unwrap(),
            BuildPaths {
                work: "/var/lib/containers/dstack-build/web".into(),
                dockerfile: format!("{context}/docker/Dockerfile.prod"),
                context: context.into(),
            }
        );
        let script = build_script("web", "x", &spec, &build_paths("web", &spec).unwrap());
        assert!(
            script.contains(&format!(
                "-f {context}/docker/Dockerfile.prod --build-arg 'SOURCE_DATE_EPOCH=0' {context};"
            )),
            "{script}"
        );
        // An inline Dockerfile with a shipped context: the text beside it.
        spec.dockerfile = None;
        spec.dockerfile_inline = Some("FROM x".into());
        let paths = build_paths("web", &spec).unwrap();
        assert_eq!(
            (paths.dockerfile.as_str(), paths.context.as_str()),
            ("/var/lib/containers/dstack-build/web/Dockerfile", context)
        );
        // Without one, /dstack (upstream's context) for an inline Dockerfile
        // only.
        spec.shipped_context = None;
        assert_eq!(build_paths("web", &spec).unwrap().context, "/dstack/app");
        spec.dockerfile_inline = None;
        assert!(
            build_paths("web", &spec)
                .unwrap_err()
                .contains("does not ship")
        );
    }

    #[test]
    fn a_layout_is_read_and_every_blob_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8]| {
            let hex = hex::encode(Sha256::digest(data));
            std::fs::write(blobs.join(&hex), data).unwrap();
            format!("sha256:{hex}")
        };
        let layer = put(b"layer bytes");
        let config = put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["x"]}}"#);
        let manifest = put(format!(r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":1}},"layers":[{{"digest":"{layer}","size":1}}]}}"#).as_bytes());
        std::fs::write(
            dir.path().join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{manifest}","size":1}}]}}"#),
        )
        .unwrap();
        let (digest, config_hex, parsed, layers) = read_layout(dir.path()).unwrap();
        assert_eq!(digest, manifest);
        assert_eq!(format!("sha256:{config_hex}"), config);
        assert_eq!(
            parsed.config().as_ref().unwrap().cmd().as_ref().unwrap(),
            &["x"]
        );
        assert_eq!(layers.len(), 1);
        // A blob that does not match its name is refused.
        std::fs::write(blobs.join(sha256_hex(&layer).unwrap()), b"tampered").unwrap();
        assert!(
            read_layout(dir.path())
                .unwrap_err()
                .contains("does not match")
        );
    }
}
