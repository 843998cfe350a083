//! The VMM with stand-ins for QEMU and vhost-device-vsock: shell scripts
//! that create the sockets the supervisor waits for and then idle. Real
//! processes, real files; no VM (the real-VM runs are in tests/ and the
//! supervisor's README).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dstack_proto::supervisor::{DeployRequest, PortMapping, VmInfo, VmState};

use super::*;
use crate::accel::Accel;
use crate::config::{StopTimeouts, default_registry_aliases};
use crate::test_util::{app_compose, write_image};
use crate::vsock::VsockDevice;

/// A QEMU stand-in: creates the QMP socket path, then idles (as a shell
/// loop, so its cmdline keeps the `-name` marker).
const FAKE_QEMU: &str = r#"#!/bin/sh
[ "$1" = -version ] && { echo "QEMU emulator version 10.0.2 (stand-in)"; exit 0; }
for arg; do
  case "$prev" in -qmp) qmp=${arg#unix:}; qmp=${qmp%%,*};; esac
  prev=$arg
done
: > "$qmp"
while :; do sleep 1; done
"#;

/// A QEMU that refuses its command line.
const BROKEN_QEMU: &str = "#!/bin/sh\n[ \"$1\" = -version ] && { echo 'QEMU emulator version 10.0.2 (stand-in)'; exit 0; }\necho 'qemu-system-x86_64: -device foo: bad option' >&2\nexit 1\n";

/// A vhost-device-vsock stand-in: creates its vhost-user socket path, then idles.
const FAKE_BACKEND: &str = r#"#!/bin/sh
sock=$(echo "$2" | sed 's/.*socket=\([^,]*\),.*/\1/')
: > "$sock"
while :; do sleep 1; done
"#;

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_image(&dir.path().join("state/images"), "img", "1.0");
        for (name, text) in [
            ("qemu", FAKE_QEMU),
            ("broken-qemu", BROKEN_QEMU),
            ("backend", FAKE_BACKEND),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self, qemu: &str, vhost_user: bool) -> Config {
        self.seed_acpi_cache(qemu);
        Config {
            state_dir: self.state(),
            accel: Accel::Tcg,
            qemu: self.dir.path().join(qemu),
            vsock: if vhost_user {
                VsockDevice::VhostUser {
                    binary: self.dir.path().join("backend"),
                }
            } else {
                VsockDevice::Kernel
            },
            registry_aliases: default_registry_aliases(),
            engine_registry: "127.0.0.1:5000".into(),
            local_key_provider: None,
            guest_pccs_url: String::new(),
            kms_urls: Vec::new(),
            gateway_urls: Vec::new(),
            acpi_cache: self.dir.path().join("acpi-cache"),
            stop_timeouts: StopTimeouts {
                guest: Duration::from_secs(1),
                acpi: Duration::from_secs(1),
                kill: Duration::from_secs(5),
            },
            log_max_bytes: 1 << 20,
        }
    }

    /// The stand-in QEMUs cannot be probed for ACPI tables: the sim TEE
    /// finds synthetic ones in its cache for the shapes these tests boot.
    fn seed_acpi_cache(&self, qemu: &str) {
        use dstack_firmware::testing::{acpi_tables, acpi_tables_blob};
        let image = self.state().join("images/img");
        let (firmware, kernel, initrd) = (
            image.join("ovmf.fd"),
            image.join("bzImage"),
            image.join("initramfs.cpio.gz"),
        );
        let files = dstack_machine::BootFiles {
            firmware: &firmware,
            kernel: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0",
        };
        let cache = dstack_machine::AcpiCache::new(self.dir.path().join("acpi-cache"));
        let options = dstack_machine::ProbeOptions::default();
        for vcpus in [1, 2] {
            let shape = dstack_machine::Shape {
                vcpus,
                memory_mb: 256,
            };
            let key = dstack_machine::AcpiCache::key(
                &self.dir.path().join(qemu),
                &files,
                shape,
                &options,
            )
            .unwrap();
            cache
                .get_or_insert_with(&key, || Ok(acpi_tables(acpi_tables_blob())))
                .unwrap();
        }
    }

    fn vm_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state().join("vms"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A deploy of an app that registers with a gateway.
fn gateway_request(name: &str) -> DeployRequest {
    let mut app: serde_json::Value = serde_json::from_str(&app_compose(name)).unwrap();
    app["gateway_enabled"] = true.into();
    let mut request = request(name);
    request.app_compose = app.to_string();
    request
}

fn request(name: &str) -> DeployRequest {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "app_compose": app_compose(name),
        "memory_mb": 256,
        "disk_gb": 1,
    }))
    .unwrap()
}

async fn deploy(sup: &Supervisor, request: DeployRequest) -> Result<VmInfo, VmmError> {
    match sup.handle(Command::Deploy(request)).await? {
        Reply::Created(info) => Ok(info),
        other => panic!("{other:?}"),
    }
}

async fn get(sup: &Supervisor, vm: &str) -> Result<VmInfo, VmmError> {
    match sup.handle(Command::Get(vm.into())).await? {
        Reply::Vm(info) => Ok(info),
        other => panic!("{other:?}"),
    }
}

async fn wait_for(sup: &Supervisor, vm: &str, what: &str, ok: impl Fn(&VmInfo) -> bool) -> VmInfo {
    let started = Instant::now();
    loop {
        let info = get(sup, vm).await.unwrap();
        if ok(&info) {
            return info;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn field_of(err: VmmError) -> String {
    match err {
        VmmError::Invalid { field, .. } | VmmError::Conflict { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[tokio::test]
async fn refused_deploys_leave_nothing_behind() {
    let host = Host::new();
    let sup = Supervisor::open(host.config("qemu", false)).await.unwrap();
    let mut first = request("first");
    first.stopped = true;
    first.ports = vec![PortMapping {
        protocol: "tcp".into(),
        host_address: "127.0.0.1".into(),
        host_port: 1,
        vm_port: 80,
    }];
    let first = deploy(&sup, first).await.unwrap();
    assert_eq!(first.summary.state, VmState::Stopped);
    assert_eq!(first.cid, 3);
    let dirs = host.vm_dirs();
    assert_eq!(dirs, std::slice::from_ref(&first.summary.id));
    let cids = std::fs::read_to_string(host.state().join("cids.json")).unwrap();

    let mut bad_compose = request("a");
    bad_compose.app_compose = "{\"name\":\"a\"}".into();
    let mut bad_image = request("b");
    bad_image.image = "missing".into();
    let taken = request("first");
    let mut bad_vcpu = request("c");
    bad_vcpu.vcpu = 0;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let mut port_busy = request("d");
    port_busy.ports = vec![PortMapping {
        protocol: "tcp".into(),
        host_address: "127.0.0.1".into(),
        host_port: busy_port,
        vm_port: 80,
    }];
    let no_gateway = gateway_request("f");
    let mut bad_gateway = request("g");
    bad_gateway.gateway_urls = vec!["http://10.0.2.2:9012".into()];
    let mut port_of_first = request("e");
    port_of_first.ports = vec![PortMapping {
        protocol: "tcp".into(),
        host_address: "0.0.0.0".into(),
        host_port: 1,
        vm_port: 8080,
    }];
    let cases = [
        (bad_compose, "app_compose"),
        (bad_image, "image"),
        (taken, "name"),
        (bad_vcpu, "vcpu"),
        (port_busy, "ports[0].host_port"),
        (port_of_first, "ports[0].host_port"),
        (no_gateway, "gateway_urls"),
        (bad_gateway, "gateway_urls[0]"),
    ];
    for (req, field) in cases {
        let err = deploy(&sup, req).await.unwrap_err();
        assert!(err.status_code().is_client_error(), "{err}");
        assert_eq!(field_of(err), field);
        assert_eq!(host.vm_dirs(), dirs);
        assert_eq!(
            std::fs::read_to_string(host.state().join("cids.json")).unwrap(),
            cids
        );
    }
}

#[tokio::test]
async fn gateway_urls_come_from_the_deploy_else_the_supervisor() {
    use crate::hostapi::GuestSink;
    let host = Host::new();
    let defaults = vec!["https://10.0.2.2:9012".to_owned()];
    let mut config = host.config("qemu", false);
    config.gateway_urls = defaults.clone();
    let sup = Supervisor::open(config).await.unwrap();

    let mut by_default = gateway_request("a");
    by_default.stopped = true;
    let info = deploy(&sup, by_default).await.unwrap();
    assert_eq!(info.gateway_urls, defaults);
    let vm = sup.find(&info.summary.id).unwrap();
    // Handed as written: the guest reaches the host through the alias.
    assert_eq!(vm.config().unwrap().sys_config.gateway_urls, defaults);

    let own = vec!["https://gw.example:443/prpc".to_owned()];
    let mut by_request = gateway_request("b");
    by_request.stopped = true;
    by_request.gateway_urls = own.clone();
    let info = deploy(&sup, by_request).await.unwrap();
    assert_eq!(get(&sup, "b").await.unwrap().gateway_urls, own);
    let vm = sup.find(&info.summary.id).unwrap();
    assert_eq!(vm.config().unwrap().sys_config.gateway_urls, own);
    assert_eq!(vm.manifest().gateway_urls, own);
}

#[tokio::test]
async fn a_deploy_takes_the_uploaded_build_contexts_its_compose_measures() {
    use crate::hostapi::GuestSink;
    use sha2::Digest;
    let host = Host::new();
    let sup = Supervisor::open(host.config("qemu", false)).await.unwrap();
    let tar = b"a packed build context".to_vec();
    let sha256 = hex::encode(sha2::Sha256::digest(&tar));
    let contexts = std::collections::BTreeMap::from([("web".to_string(), sha256.clone())]);
    let app_compose = dstack_compose::app_compose_with_build_contexts(
        "web",
        "services:\n  web:\n    build: .\n",
        &contexts,
    )
    .unwrap();
    let mut with_context = request("web");
    with_context.app_compose = app_compose.clone();
    with_context.stopped = true;

    // Not uploaded: refused before anything is made.
    let err = deploy(&sup, with_context.clone()).await.unwrap_err();
    assert_eq!(err.status_code(), axum::http::StatusCode::BAD_REQUEST);
    assert!(
        err.to_string().starts_with(&format!(
            "app_compose: build_contexts.web: blob {sha256} was not uploaded"
        )),
        "{err}"
    );
    assert!(host.vm_dirs().is_empty());

    // Bytes under another name are refused; the right ones are kept.
    let put = |name: &str, bytes: &[u8]| Command::PutBlob {
        sha256: name.to_owned(),
        bytes: crate::api::BlobBytes(bytes::Bytes::copy_from_slice(bytes)),
    };
    let err = sup.handle(put(&sha256, b"tampered")).await.unwrap_err();
    assert_eq!(field_of(err), "blob");
    assert!(matches!(
        sup.handle(put(&sha256, &tar)).await.unwrap(),
        Reply::BlobStored
    ));

    let info = deploy(&sup, with_context).await.unwrap();
    let vm = sup.find(&info.summary.id).unwrap();
    let path = vm.blob(&sha256).expect("the VM has its context");
    assert_eq!(std::fs::read(&path).unwrap(), tar);
    assert!(path.starts_with(vm.dir.root()));
    assert!(vm.blob(&"00".repeat(32)).is_none());
    // The manifest names no blob and carries none of its bytes.
    let manifest = std::fs::read_to_string(vm.dir.manifest()).unwrap();
    assert!(!manifest.contains("packed"), "{manifest}");
    assert_eq!(vm.config().unwrap().app_compose, app_compose);

    sup.handle(Command::Remove {
        vm: "web".into(),
        force: true,
    })
    .await
    .unwrap();
    assert!(host.vm_dirs().is_empty(), "the VM's blobs go with it");
}

#[tokio::test]
async fn a_qemu_that_fails_to_start_undoes_the_deploy() {
    let host = Host::new();
    let sup = Supervisor::open(host.config("broken-qemu", true))
        .await
        .unwrap();
    let err = deploy(&sup, request("web")).await.unwrap_err();
    assert_eq!(
        err.status_code(),
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    );
    let text = err.to_api_error().error;
    assert!(
        text.contains("qemu exited during start-up") && text.contains("bad option"),
        "{text}"
    );
    assert!(host.vm_dirs().is_empty());
    assert!(
        std::fs::read_to_string(host.state().join("cids.json"))
            .unwrap()
            .contains("{}")
    );
    assert!(matches!(get(&sup, "web").await, Err(VmmError::NotFound(_))));
}

mod lifecycle;
