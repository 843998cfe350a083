//! `manifest.json`: what a VM is (the deploy request) and whether it should run.

use std::io;
use std::path::Path;

use dstack_proto::supervisor::PortMapping;
use serde::{Deserialize, Serialize};

use super::write_json_atomic;

/// Whether the operator wants a VM running. The supervisor restarts a VM
/// whose desired state is running when QEMU exits unexpectedly, and boots it
/// again after its own restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Keep it running.
    Running,
    /// Leave it stopped.
    Stopped,
}

/// A VM's definition: the fields of the deploy request (app-compose.json is
/// a separate file, byte for byte) plus what the supervisor assigned.
/// Fields added later have serde defaults, so older manifests still load.
/// `Debug` shows `encrypted_env`'s length only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Short random hex id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// OS image name (resolved at deploy: never empty here).
    pub image: String,
    /// Virtual CPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Data disk in GiB.
    pub disk_gb: u32,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Encrypted environment, hex.
    #[serde(default)]
    pub encrypted_env: String,
    /// Opaque user configuration.
    #[serde(default)]
    pub user_config: String,
    /// vsock CID.
    pub cid: u32,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Desired state.
    pub desired: Desired,
    /// KMS URLs handed to the guest (`SysConfig.kms_urls`).
    #[serde(default)]
    pub kms_urls: Vec<String>,
    /// Gateway URLs handed to the guest (`SysConfig.gateway_urls`), as it
    /// reaches them: the deploy's, else the supervisor's defaults then.
    #[serde(default)]
    pub gateway_urls: Vec<String>,
    /// The operator's one-shot opt-in (`SysConfig.format_nonempty_disk`):
    /// the next boot may format a data disk that holds something other
    /// than zeros or a LUKS header. Set by a deploy or a start that asks
    /// for it; cleared when the guest reports what it did with the disk
    /// (`data-disk`), and by a start that does not ask for it.
    #[serde(default)]
    pub format_nonempty_disk: bool,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("vcpu", &self.vcpu)
            .field("memory_mb", &self.memory_mb)
            .field("disk_gb", &self.disk_gb)
            .field("ports", &self.ports)
            .field("encrypted_env_len", &self.encrypted_env.len())
            .field("user_config_len", &self.user_config.len())
            .field("cid", &self.cid)
            .field("created_at_ms", &self.created_at_ms)
            .field("desired", &self.desired)
            .field("kms_urls", &self.kms_urls)
            .field("gateway_urls", &self.gateway_urls)
            .field("format_nonempty_disk", &self.format_nonempty_disk)
            .finish()
    }
}

impl Manifest {
    /// Reads a manifest.
    pub fn load(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        write_json_atomic(path, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let mut manifest = Manifest {
            id: "0a1b2c3d".into(),
            name: "web".into(),
            image: "dstack-dev-0.1.0".into(),
            vcpu: 2,
            memory_mb: 512,
            disk_gb: 4,
            ports: vec![PortMapping {
                protocol: "tcp".into(),
                host_address: "127.0.0.1".into(),
                host_port: 8080,
                vm_port: 80,
            }],
            encrypted_env: String::new(),
            user_config: "{}".into(),
            cid: 3,
            created_at_ms: 1,
            desired: Desired::Running,
            kms_urls: vec!["https://10.0.2.2:8000".into()],
            gateway_urls: vec![
                "https://10.0.2.2:9012".into(),
                "https://gw.example:443/prpc".into(),
            ],
            format_nonempty_disk: true,
        };
        manifest.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), manifest);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("https://10.0.2.2:9012"), "{text}");
        manifest.desired = Desired::Stopped;
        manifest.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"desired\": \"stopped\""), "{text}");
        assert_eq!(Manifest::load(&path).unwrap(), manifest);
    }

    #[test]
    fn older_manifests_load_and_debug_hides_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        // As written before format_nonempty_disk, kms_urls and gateway_urls existed.
        std::fs::write(
            &path,
            r#"{"id":"0a1b2c3d","name":"web","image":"img","vcpu":1,"memory_mb":256,
                "disk_gb":1,"encrypted_env":"c0ffee","cid":3,"created_at_ms":1,
                "desired":"running"}"#,
        )
        .unwrap();
        let manifest = Manifest::load(&path).unwrap();
        assert!(!manifest.format_nonempty_disk);
        assert!(manifest.kms_urls.is_empty());
        assert!(manifest.gateway_urls.is_empty());
        assert_eq!(manifest.encrypted_env, "c0ffee");
        let debug = format!("{manifest:?}");
        assert!(!debug.contains("c0ffee"), "{debug}");
        assert!(debug.contains("encrypted_env_len: 6"), "{debug}");
    }

    #[test]
    fn garbage_is_invalid_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(
            Manifest::load(&path).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
