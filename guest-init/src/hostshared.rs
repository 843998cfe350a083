//! The config bundle's files, written where upstream's guest keeps them
//! (`/dstack/.host-shared`, UPSTREAM.md §3.2, §11.3), so tools and apps that
//! read them there find them. app-compose.json keeps its exact bytes: the
//! compose-hash is their SHA-256.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use dstack_proto::host::{ConfigBundle, InstanceInfo};

/// Upstream's directory for host-provided files.
pub const HOST_SHARED_DIR: &str = "/dstack/.host-shared";

/// Writing a host-shared file failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    dstack_fsutil::write_atomic(path, bytes, mode).map_err(|source| WriteError {
        path: path.to_owned(),
        source,
    })
}

/// Writes the bundle's files into `dir`; returns their names.
pub fn write_bundle(
    dir: &Path,
    bundle: &ConfigBundle,
    instance: &InstanceInfo,
) -> Result<Vec<&'static str>, WriteError> {
    fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_owned(),
        source,
    })?;
    let sys_config = serde_json::to_vec_pretty(&bundle.sys_config).unwrap_or_default();
    let instance = serde_json::to_vec_pretty(instance).unwrap_or_default();
    // Secrets (the encrypted env, user config) are readable by root only.
    let mut files: Vec<(&'static str, &[u8], u32)> = vec![
        ("app-compose.json", bundle.app_compose.as_bytes(), 0o644),
        (".sys-config.json", &sys_config, 0o644),
        (".instance_info", &instance, 0o644),
    ];
    if !bundle.encrypted_env.is_empty() {
        files.push((".encrypted-env", &bundle.encrypted_env, 0o600));
    }
    if !bundle.user_config.is_empty() {
        files.push((".user-config", bundle.user_config.as_bytes(), 0o600));
    }
    for (name, bytes, mode) in &files {
        write_atomic(&dir.join(name), bytes, *mode)?;
    }
    Ok(files.into_iter().map(|(name, _, _)| name).collect())
}

/// Lays out the app directory upstream's guest has (`/dstack`, the parent
/// of `.host-shared`; UPSTREAM.md §3.2) for services that bind-mount it:
/// the compose file as `docker-compose.yaml`, and `tapp` beside it, the
/// legacy name, linking to it.
pub fn lay_out_app_dir(shared_dir: &Path, compose_yaml: &str) -> Result<(), WriteError> {
    let Some(app_dir) = shared_dir.parent() else {
        return Ok(());
    };
    write_atomic(
        &app_dir.join("docker-compose.yaml"),
        compose_yaml.as_bytes(),
        0o644,
    )?;
    if let (Some(root), Some(name)) = (app_dir.parent(), app_dir.file_name()) {
        let link = root.join("tapp");
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(name, &link).map_err(|source| WriteError {
                path: link.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use dstack_proto::host::SysConfig;

    use super::*;

    #[test]
    fn the_app_dir_has_the_compose_file_and_a_tapp_link() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("dstack/.host-shared");
        fs::create_dir_all(&shared).unwrap();
        lay_out_app_dir(&shared, "services: {}\n").unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("dstack/docker-compose.yaml")).unwrap(),
            "services: {}\n"
        );
        assert_eq!(
            fs::read_link(root.path().join("tapp")).unwrap(),
            Path::new("dstack")
        );
        assert!(root.path().join("tapp/.host-shared").is_dir());
        // Again (a reboot keeps nothing, but a second call must not fail).
        lay_out_app_dir(&shared, "services: {}\n").unwrap();
    }

    #[test]
    fn writes_exact_bytes_and_protects_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("dstack/.host-shared");
        let bundle = ConfigBundle {
            app_compose: "{\"name\": \"x\" ,\n \"runner\":\"docker-compose\"}".into(),
            encrypted_env: vec![0xde, 0xad],
            user_config: String::new(),
            sys_config: SysConfig::new("1", "n"),
            instance_info: InstanceInfo::default(),
        };
        let names = write_bundle(&shared, &bundle, &InstanceInfo::default()).unwrap();
        assert_eq!(
            names,
            [
                "app-compose.json",
                ".sys-config.json",
                ".instance_info",
                ".encrypted-env"
            ]
        );
        let compose = fs::read(shared.join("app-compose.json")).unwrap();
        assert_eq!(compose, bundle.app_compose.as_bytes());
        assert_eq!(
            fs::read(shared.join(".encrypted-env")).unwrap(),
            [0xde, 0xad]
        );
        let mode = fs::metadata(shared.join(".encrypted-env"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!shared.join(".user-config").exists());
        assert!(!shared.join("app-compose.tmp").exists());
    }
}
