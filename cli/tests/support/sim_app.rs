//! A tiny OS image directory and a simulated TD that boots an app from it
//! the way dstack's guest measures one: shared by `dstack verify`'s unit
//! tests (`#[path]`) and its CLI tests. Real parts throughout: the image
//! directory has the files, checksums and digest `dstack image build`
//! writes, and quotes are signed by a simulated TEE authority.
#![allow(dead_code)] // each includer uses part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use dstack_attest::eventlog::{key_provider, names};
use dstack_attest::{Event, RuntimeEvent, SimAuthority, SimTdIdentity};
use sha2::{Digest, Sha256};

/// An app-compose.json as the SDKs write it (sorted keys, compact, no
/// trailing newline).
pub(crate) const COMPOSE: &str = r#"{"docker_compose_file":"services:\n  web:\n    image: nginx\n","manifest_version":2,"name":"web","runner":"docker-compose"}"#;

/// The same app with its keys from a KMS.
pub(crate) const KMS_COMPOSE: &str = r#"{"docker_compose_file":"services:\n  web:\n    image: nginx\n","kms_enabled":true,"manifest_version":2,"name":"web","runner":"docker-compose"}"#;

/// The command line the default test image boots with.
pub(crate) const CMDLINE: &str = "console=ttyS0 panic=1";

/// Writes an image directory `root/name`: firmware, kernel, initrd,
/// metadata.json, sha256sum.txt (upstream's order) and digest.txt.
pub(crate) fn write_image(root: &Path, name: &str, kernel: &[u8], cmdline: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    // Written as JSON rather than through `ImageManifest`, so fields the
    // builder adds later (with defaults) do not touch this fixture.
    let manifest = serde_json::json!({
        "name": name,
        "version": "0.1.0",
        "kernel": "bzImage",
        "initrd": "initramfs.cpio.lz4",
        "bios": "ovmf.fd",
        "cmdline": cmdline,
        "is_dev": false,
        "kernel_version": "7.2.0",
        "inputs": {
            "packages": [],
            "init": { "sha256": "00".repeat(32), "size": 0 },
        },
    });
    let mut metadata = serde_json::to_vec_pretty(&manifest).unwrap();
    metadata.push(b'\n');
    let firmware = std::fs::read(OVMF).unwrap_or_else(|e| {
        panic!("{OVMF} cannot be read ({e}): run scripts/install-deps (Debian package ovmf)")
    });
    let files: [(&str, &[u8]); 4] = [
        ("ovmf.fd", &firmware),
        ("bzImage", kernel),
        ("initramfs.cpio.lz4", b"initramfs with dstack-init"),
        ("metadata.json", &metadata),
    ];
    let mut sums = String::new();
    for (file, bytes) in files {
        std::fs::write(dir.join(file), bytes).unwrap();
        sums.push_str(&format!("{}  {file}\n", hex::encode(Sha256::digest(bytes))));
    }
    std::fs::write(dir.join("sha256sum.txt"), &sums).unwrap();
    std::fs::write(
        dir.join("digest.txt"),
        format!("{}\n", hex::encode(Sha256::digest(sums.as_bytes()))),
    )
    .unwrap();
    dir
}

/// The default kernel of test images: a minimal valid bzImage/PE.
pub(crate) fn kernel() -> Vec<u8> {
    dstack_firmware::testing::synthetic_kernel(0x6000)
}

/// A TDVF firmware for the test images: Debian's OVMF (scripts/install-deps
/// installs the `ovmf` package).
pub(crate) const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The QEMU version the test ACPI tables stand for.
pub(crate) const QEMU_VERSION: &str = "10.0.2";

/// Writes synthetic ACPI tables (`table-loader`, `rsdp`, `tables`, what
/// `--acpi-tables` reads) to `dir`, in place of probing a QEMU.
pub(crate) fn write_acpi_tables(dir: &Path) {
    use dstack_firmware::testing::{acpi_tables, acpi_tables_blob};
    let tables = acpi_tables(acpi_tables_blob());
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in [
        ("table-loader", &tables.loader),
        ("rsdp", &tables.rsdp),
        ("tables", &tables.tables),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The os_image_hash of an image directory.
pub(crate) fn os_image_hash(dir: &Path) -> Vec<u8> {
    hex::decode(
        std::fs::read_to_string(dir.join("digest.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

/// What the guest measures into RTMR3 at boot.
#[derive(Debug, Clone)]
pub(crate) struct GuestBoot {
    /// 20-byte app-id.
    pub(crate) app_id: Vec<u8>,
    /// SHA-256 of app-compose.json.
    pub(crate) compose_hash: [u8; 32],
    /// 20 bytes, or empty with no_instance_id.
    pub(crate) instance_id: Vec<u8>,
    /// The key-provider payload.
    pub(crate) key_provider: String,
    /// KMS mode: the os-image-hash the KMS returned.
    pub(crate) os_image_hash: Option<Vec<u8>>,
    /// Stop before system-ready (a quote taken mid-boot).
    pub(crate) unfinished: bool,
}

impl GuestBoot {
    /// An app without a key provider, with the default app-id.
    pub(crate) fn of(compose: &[u8]) -> Self {
        let compose_hash: [u8; 32] = Sha256::digest(compose).into();
        Self {
            app_id: compose_hash[..20].to_vec(),
            compose_hash,
            instance_id: vec![0x1d; 20],
            key_provider: key_provider::NONE.into(),
            os_image_hash: None,
            unfinished: false,
        }
    }

    /// The same app with keys from a KMS whose root key is `spki`.
    pub(crate) fn with_kms(mut self, spki: &[u8], os_image_hash: Vec<u8>) -> Self {
        self.key_provider = key_provider::kms(spki);
        self.os_image_hash = Some(os_image_hash);
        self
    }
}

/// A simulated TD: registers, event log, and the authority that quotes it.
#[derive(Debug)]
pub(crate) struct SimTd {
    pub(crate) authority: Arc<SimAuthority>,
    pub(crate) identity: SimTdIdentity,
    pub(crate) events: Vec<Event>,
}

impl SimTd {
    /// A TD launched with these boot registers and mr_config_id; RTMR3 zero.
    pub(crate) fn launch(
        authority: Arc<SimAuthority>,
        mr_td: [u8; 48],
        rtmr: [[u8; 48]; 3],
        mr_config_id: [u8; 48],
    ) -> Self {
        let identity = SimTdIdentity {
            mr_td,
            rtmr: [rtmr[0], rtmr[1], rtmr[2], [0; 48]],
            mr_config_id,
            ..SimTdIdentity::default()
        };
        Self {
            authority,
            identity,
            events: Vec::new(),
        }
    }

    /// Extends RTMR3 with a runtime event and logs it.
    pub(crate) fn emit(&mut self, name: &str, payload: &[u8]) {
        let event = RuntimeEvent {
            name: name.into(),
            payload: payload.to_vec(),
        };
        dstack_attest::rtmr::extend(&mut self.identity.rtmr[3], &event.digest());
        self.events.push(event.to_event());
    }

    /// The guest's boot measurements, in its order (guest-init `measure`).
    pub(crate) fn boot(&mut self, app: &GuestBoot) {
        self.emit(names::SYSTEM_PREPARING, &[]);
        self.emit(names::APP_ID, &app.app_id);
        self.emit(names::COMPOSE_HASH, &app.compose_hash);
        self.emit(names::INSTANCE_ID, &app.instance_id);
        self.emit(names::BOOT_MR_DONE, &[]);
        if let Some(hash) = &app.os_image_hash {
            self.emit(names::OS_IMAGE_HASH, hash);
        }
        self.emit(names::KEY_PROVIDER, app.key_provider.as_bytes());
        self.emit(names::STORAGE_FS, b"ext4");
        if !app.unfinished {
            self.emit(names::SYSTEM_READY, &[]);
        }
    }

    /// A signed TDX quote of the TD as it stands, binding `report_data`.
    pub(crate) fn quote(&self, report_data: &[u8; 64]) -> Vec<u8> {
        self.authority.quote(&self.identity, report_data).unwrap()
    }

    /// The authority's current collateral.
    pub(crate) fn collateral(&self) -> dstack_attest::Collateral {
        self.authority.collateral(Utc::now()).unwrap()
    }
}
