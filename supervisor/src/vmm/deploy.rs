//! `POST /v1/vms`: validate everything, then create the VM directory in one
//! rename, then boot. A refused or failed deploy leaves nothing behind.
//! `PUT /v1/blobs/sha256/{hex}`: a blob (a packed build context) uploaded
//! for a coming deploy, which links the ones its app-compose measures into
//! the VM's directory.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;

use dstack_compose::AppCompose;
use dstack_proto::supervisor::{DeployRequest, VmInfo};
use rand::Rng;

use super::Supervisor;
use super::vm::{Vm, now_ms};
use crate::error::VmmError;
use crate::state::{Desired, Manifest, VmDir, blobs, write_atomic, write_json_atomic};
use crate::validate::{self, overlaps, port_is_free};
use dstack_proto::host::InstanceInfo;

/// The deployer's app-id pin, as the instance info the guest reads (upstream
/// `app_id` rules: with a KMS a pin names the app being upgraded; without
/// one it must be the compose's own).
fn pinned_app_id(
    request: &DeployRequest,
    kms_urls: &[String],
) -> Result<Option<InstanceInfo>, VmmError> {
    if request.app_id.is_empty() {
        return Ok(None);
    }
    let app_id =
        hex::decode(&request.app_id).map_err(|_| VmmError::invalid("app_id", "must be hex"))?;
    let own = dstack_compose::app_id(&dstack_compose::compose_hash(
        request.app_compose.as_bytes(),
    ));
    if kms_urls.is_empty() && app_id != own {
        return Err(VmmError::invalid(
            "app_id",
            format!(
                "without a KMS an app's id is its compose's own ({}); pinning another needs --kms",
                hex::encode(own)
            ),
        ));
    }
    Ok(Some(InstanceInfo {
        app_id,
        ..InstanceInfo::default()
    }))
}

/// Refuses an app that registers with a gateway (`gateway_enabled`, or the
/// deprecated `tproxy-net` feature, which upstream reads the same way)
/// when there is no gateway to register with: the guest would have nowhere
/// to register, and the deployer would learn it only from the boot.
fn check_gateway(request: &DeployRequest, gateway_urls: &[String]) -> Result<(), VmmError> {
    if !gateway_urls.is_empty() {
        return Ok(());
    }
    let app = AppCompose::parse_manifest(&request.app_compose)
        .map_err(|e| VmmError::invalid("app_compose", e.to_string()))?;
    if app.uses_gateway() {
        return Err(VmmError::invalid(
            "gateway_urls",
            "the app-compose enables the gateway (gateway_enabled) but no gateway URL is \
             configured: pass --gateway-url https://HOST:PORT to `dstack vm deploy`, \
             or start the supervisor with --gateway-url",
        ));
    }
    Ok(())
}

/// Checks the app-compose before anything is created. Without an
/// encrypted env the compose is parsed whole, its `${VAR}` references
/// interpolated with no variables (as the guest will), so a compose that
/// cannot run is refused here. With one, the guest interpolates the
/// compose with the decrypted variables, which the host never sees: a
/// `${IMAGE}` or `${PORT:?required}` that is empty here may be fine there.
/// Then only what needs no variables is checked (the app-compose JSON and
/// its fields, and that the compose is YAML), and the rest is left to the
/// guest, which stops the boot with a named error.
fn check_compose(request: &DeployRequest) -> Result<(), VmmError> {
    let invalid = |e: dstack_compose::ComposeError| VmmError::invalid("app_compose", e.to_string());
    if request.encrypted_env.is_empty() {
        AppCompose::parse(&request.app_compose).map_err(invalid)?;
    } else {
        AppCompose::parse_manifest(&request.app_compose).map_err(invalid)?;
    }
    Ok(())
}

/// The blobs the VM needs, by the service they are for: the build contexts
/// its app-compose measures, each of which must have been uploaded. The
/// supervisor does not vouch for them (the guest checks each against the
/// measured hash): this only refuses early a deploy whose guest would fail.
fn needed_blobs(
    request: &DeployRequest,
    uploads: &Path,
) -> Result<Vec<(String, String)>, VmmError> {
    let app = AppCompose::parse_manifest(&request.app_compose)
        .map_err(|e| VmmError::invalid("app_compose", e.to_string()))?;
    let mut needed = Vec::new();
    for (service, sha256) in app.build_contexts {
        if blobs::find(uploads, &sha256).is_none() {
            return Err(VmmError::invalid(
                format!("app_compose: build_contexts.{service}"),
                blobs::BlobError::NotUploaded(sha256).to_string(),
            ));
        }
        needed.push((service, sha256));
    }
    Ok(needed)
}

/// Prefix of a VM directory being assembled; removed at start-up if found.
pub(super) const STAGING_PREFIX: &str = ".deploy-";

impl Supervisor {
    /// Stores an uploaded blob under its hash (checked), and sweeps
    /// uploads no deploy used.
    pub(super) async fn put_blob(
        &self,
        sha256: String,
        bytes: bytes::Bytes,
    ) -> Result<(), VmmError> {
        let uploads = self.config.uploads_dir();
        let dir = uploads.clone();
        // Hashing and writing 64 MiB blocks.
        let stored = tokio::task::spawn_blocking(move || {
            blobs::sweep(&dir, blobs::UPLOAD_TTL, std::time::SystemTime::now());
            blobs::put(&dir, &sha256, &bytes).map(|_| (sha256, bytes.len()))
        })
        .await
        .map_err(|e| VmmError::io("store a blob in", uploads)(std::io::Error::other(e)))?;
        let (sha256, len) = stored?;
        tracing::info!("stored blob {sha256} ({len} bytes)");
        Ok(())
    }

    pub(super) async fn deploy(&self, request: DeployRequest) -> Result<VmInfo, VmmError> {
        validate::check_request(&request)?;
        check_compose(&request)?;
        let blobs = needed_blobs(&request, &self.config.uploads_dir())?;
        let image = self.images.resolve(&request.image)?;
        let kms_urls = if request.kms_urls.is_empty() {
            self.config.kms_urls.clone()
        } else {
            request.kms_urls.clone()
        };
        let pinned = pinned_app_id(&request, &kms_urls)?;
        let gateway_urls = if request.gateway_urls.is_empty() {
            self.config.gateway_urls.clone()
        } else {
            request.gateway_urls.clone()
        };
        check_gateway(&request, &gateway_urls)?;

        // Held until the VM is in the map, so two deploys cannot both pass
        // the name and port checks.
        let _deploying = self.deploy_lock.lock().await;
        self.check_free(&request)?;
        let id = self.new_id();
        let cid = self.allocate_cid(&id)?;
        let manifest = Manifest {
            id: id.clone(),
            name: request.name.clone(),
            image: image.name,
            vcpu: request.vcpu,
            memory_mb: request.memory_mb,
            disk_gb: request.disk_gb,
            ports: request.ports.clone(),
            encrypted_env: request.encrypted_env.clone(),
            user_config: request.user_config.clone(),
            cid,
            created_at_ms: now_ms(),
            desired: if request.stopped {
                Desired::Stopped
            } else {
                Desired::Running
            },
            kms_urls,
            gateway_urls,
            format_nonempty_disk: request.format_nonempty_disk,
        };
        let dir = match self.create_vm_dir(&manifest, &request.app_compose, pinned.as_ref(), &blobs)
        {
            Ok(dir) => dir,
            Err(e) => {
                self.release_cid(&id);
                return Err(e);
            }
        };
        let vm = Arc::new(Vm::new(
            dir,
            manifest,
            request.app_compose,
            self.config.log_max_bytes,
            self.config.registry_aliases.clone(),
            self.config.engine_registry.clone(),
            self.config.guest_pccs_url.clone(),
        ));
        if let Err(e) = self.attach(&vm) {
            self.discard(&vm).await;
            return Err(e);
        }
        self.insert(vm.clone());
        drop(_deploying);

        tracing::info!(vm = %vm.id, name = %request.name, "deployed");
        if !request.stopped
            && let Err(e) = self.start(&vm, None).await
        {
            // All or nothing: a VM that cannot boot is not left half-made.
            self.remove(&vm, true).await?;
            return Err(e);
        }
        Ok(super::info::info(&vm, false).await)
    }

    /// Name and ports are not used by another VM, and the ports are free now.
    fn check_free(&self, request: &DeployRequest) -> Result<(), VmmError> {
        let others: Vec<Manifest> = self.all().iter().map(|vm| vm.manifest()).collect();
        if let Some(other) = others.iter().find(|m| m.name == request.name) {
            return Err(VmmError::conflict(
                "name",
                format!("{:?} is already used by VM {}", request.name, other.id),
            ));
        }
        for (i, port) in request.ports.iter().enumerate() {
            let field = format!("ports[{i}].host_port");
            let owner = others
                .iter()
                .find(|m| m.ports.iter().any(|p| overlaps(p, port)));
            if let Some(owner) = owner {
                return Err(VmmError::conflict(
                    field,
                    format!(
                        "{}:{} is published by VM {:?}",
                        port.host_address, port.host_port, owner.name
                    ),
                ));
            }
            if !port_is_free(port) {
                return Err(VmmError::conflict(
                    field,
                    format!(
                        "{}:{}/{} is in use on this host",
                        port.host_address, port.host_port, port.protocol
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A fresh 8-hex-digit id, unused in memory and on disk.
    fn new_id(&self) -> String {
        let vms_dir = self.config.vms_dir();
        loop {
            let id = format!("{:08x}", rand::thread_rng().r#gen::<u32>());
            let taken = self.find(&id).is_ok() || vms_dir.join(&id).exists();
            if !taken {
                return id;
            }
        }
    }

    fn allocate_cid(&self, id: &str) -> Result<u32, VmmError> {
        let mut cids = self.cids.lock().unwrap_or_else(|e| e.into_inner());
        cids.allocate(id)
            .map_err(VmmError::io("write", self.config.cids_file()))?
            .ok_or(VmmError::NoFreeCid)
    }

    pub(super) fn release_cid(&self, id: &str) {
        let mut cids = self.cids.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = cids.release(id) {
            tracing::warn!(vm = %id, "cannot free CID: {e}");
        }
    }

    /// Writes the VM's files into a staging directory and renames it into
    /// place, so the VM directory appears complete or not at all.
    fn create_vm_dir(
        &self,
        manifest: &Manifest,
        app_compose: &str,
        pinned: Option<&InstanceInfo>,
        needed: &[(String, String)],
    ) -> Result<VmDir, VmmError> {
        let vms_dir = self.config.vms_dir();
        let staging = VmDir::at(vms_dir.join(format!("{STAGING_PREFIX}{}", manifest.id)));
        let result = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(staging.root())
                .map_err(VmmError::io("create", staging.root()))?;
            write_atomic(&staging.app_compose(), app_compose.as_bytes())
                .map_err(VmmError::io("write", staging.app_compose()))?;
            create_sparse(&staging.disk(), u64::from(manifest.disk_gb) << 30)?;
            for (_, sha256) in needed {
                blobs::link(&self.config.uploads_dir(), sha256, &staging.blobs())?;
            }
            if let Some(info) = pinned {
                // The guest takes a 20-byte app_id here as the deployer's pin.
                write_json_atomic(&staging.instance_info(), info)
                    .map_err(VmmError::io("write", staging.instance_info()))?;
            }
            manifest
                .save(&staging.manifest())
                .map_err(VmmError::io("write", staging.manifest()))?;
            let dir = VmDir::new(&vms_dir, &manifest.id);
            fs::rename(staging.root(), dir.root()).map_err(VmmError::io("create", dir.root()))?;
            File::open(&vms_dir)
                .and_then(|d| d.sync_all())
                .map_err(VmmError::io("sync", &vms_dir))?;
            Ok(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(staging.root());
        }
        result
    }

    /// Undoes a deploy whose directory exists but whose VM never ran.
    async fn discard(&self, vm: &Arc<Vm>) {
        vm.removed.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(task) = vm.host_api.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let _ = fs::remove_dir_all(vm.dir.root());
        self.release_cid(&vm.id);
    }
}

/// The data disk: a sparse file of `bytes`, created once and never
/// recreated (the guest formats it on first boot and keeps data on it).
fn create_sparse(path: &Path, bytes: u64) -> Result<(), VmmError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(VmmError::io("create", path))?;
    file.set_len(bytes).map_err(VmmError::io("size", path))?;
    file.sync_all().map_err(VmmError::io("sync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(app_id: &str) -> DeployRequest {
        serde_json::from_value(serde_json::json!({
            "name": "web", "app_compose": "{\"name\":\"x\"}", "app_id": app_id,
        }))
        .unwrap()
    }

    fn compose_request(yaml: &str, encrypted_env: &str) -> DeployRequest {
        let app_compose = serde_json::json!({
            "manifest_version": 2, "name": "x", "runner": "docker-compose",
            "docker_compose_file": yaml, "kms_enabled": true, "allowed_envs": ["IMAGE"],
        })
        .to_string();
        serde_json::from_value(serde_json::json!({
            "name": "web", "app_compose": app_compose, "encrypted_env": encrypted_env,
        }))
        .unwrap()
    }

    #[test]
    fn variables_in_the_compose_wait_for_the_guest_only_with_an_encrypted_env() {
        let yaml = "services:\n  web:\n    image: ${IMAGE:?set IMAGE in the env}\n";
        let err = check_compose(&compose_request(yaml, "")).unwrap_err();
        assert!(err.to_string().starts_with("app_compose: "), "{err}");
        check_compose(&compose_request(yaml, "c0ffee")).unwrap();
        // What needs no variables is still checked.
        let err = check_compose(&compose_request("services: [", "c0ffee")).unwrap_err();
        assert!(err.to_string().starts_with("app_compose: "), "{err}");
        let mut request = compose_request(yaml, "c0ffee");
        request.app_compose = request.app_compose.replace("docker-compose\"", "podman\"");
        assert!(check_compose(&request).is_err());
    }

    #[test]
    fn any_hex_env_passes_validation_whatever_its_size() {
        let yaml = "services:\n  web:\n    image: nginx\n";
        // Over upstream's 256 KiB: refusing it is the guest's job (a named
        // boot error), never a silent cut here.
        let big = "ab".repeat(300 * 1024);
        let request = compose_request(yaml, &big);
        validate::check_request(&request).unwrap();
        check_compose(&request).unwrap();
        let err = validate::check_request(&compose_request(yaml, "not hex")).unwrap_err();
        assert_eq!(err.to_string(), "encrypted_env: must be hex");
        // The request's Debug (what a log line could show) carries no env.
        let debug = format!("{request:?}");
        assert!(
            !debug.contains("abab"),
            "{}",
            &debug[..200.min(debug.len())]
        );
        assert!(debug.contains(&format!("encrypted_env_len: {}", big.len())));
    }

    #[test]
    fn a_gateway_app_needs_a_gateway_url() {
        let yaml = "services:\n  web:\n    image: nginx\n";
        let with = |extra: serde_json::Value| {
            let mut app = serde_json::json!({
                "manifest_version": 2, "name": "x", "runner": "docker-compose",
                "docker_compose_file": yaml,
            });
            app.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let request: DeployRequest = serde_json::from_value(serde_json::json!({
                "name": "web", "app_compose": app.to_string(),
            }))
            .unwrap();
            request
        };
        let gateway = ["https://10.0.2.2:9012".to_owned()];
        for enabled in [
            serde_json::json!({"gateway_enabled": true}),
            serde_json::json!({"tproxy_enabled": true}),
            serde_json::json!({"features": ["tproxy-net"]}),
        ] {
            let request = with(enabled);
            let err = check_gateway(&request, &[]).unwrap_err();
            assert!(err.to_string().starts_with("gateway_urls: "), "{err}");
            assert!(err.to_string().contains("--gateway-url"), "{err}");
            check_gateway(&request, &gateway).unwrap();
        }
        // An app without the gateway needs none.
        check_gateway(&with(serde_json::json!({})), &[]).unwrap();
        check_gateway(&with(serde_json::json!({"gateway_enabled": false})), &[]).unwrap();
    }

    #[test]
    fn a_pinned_app_id_needs_a_kms_unless_it_is_the_composes_own() {
        assert_eq!(pinned_app_id(&request(""), &[]).unwrap(), None);
        let own = hex::encode(dstack_compose::app_id(&dstack_compose::compose_hash(
            b"{\"name\":\"x\"}",
        )));
        let info = pinned_app_id(&request(&own), &[]).unwrap().unwrap();
        assert_eq!(hex::encode(&info.app_id), own);
        assert!(info.instance_id_seed.is_empty());
        let other = "11".repeat(20);
        let err = pinned_app_id(&request(&other), &[]).unwrap_err();
        assert!(err.to_string().contains("needs --kms"), "{err}");
        let kms = ["https://10.0.2.2:8000".to_owned()];
        let info = pinned_app_id(&request(&other), &kms).unwrap().unwrap();
        assert_eq!(info.app_id, vec![0x11; 20]);
    }
}
