//! The host API as one VM serves it: config bundle, notifications, logs.

use std::io;

use dstack_proto::host::{
    ConfigBundle, InstanceInfo, LogBatch, LogStream, Notification, SysConfig, events,
};
use dstack_proto::supervisor::{LogLine, VmEvent};

use super::{Vm, lock, now_ms};
use crate::hostapi::GuestSink;
use crate::state::write_json_atomic;

impl GuestSink for Vm {
    fn config(&self) -> Result<ConfigBundle, String> {
        let manifest = self.manifest();
        let encrypted_env = hex::decode(&manifest.encrypted_env)
            .map_err(|e| format!("stored encrypted_env is not hex: {e}"))?;
        let instance_info: InstanceInfo = match std::fs::read(self.dir.instance_info()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("instance-info.json is invalid: {e}"))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => InstanceInfo::default(),
            Err(e) => return Err(format!("cannot read instance-info.json: {e}")),
        };
        // Upstream's VmConfig fields the SDKs and verifiers read.
        let vm_config = serde_json::json!({
            "spec_version": 1,
            "os_image_hash": self.os_image_hash(),
            "cpu_count": manifest.vcpu,
            "memory_size": u64::from(manifest.memory_mb) << 20,
            "image": manifest.image,
        })
        .to_string();
        Ok(ConfigBundle {
            app_compose: self.app_compose.clone(),
            encrypted_env,
            user_config: manifest.user_config,
            sys_config: SysConfig {
                registry_aliases: self.registry_aliases.clone(),
                insecure_registries: self.insecure_registries.clone(),
                engine_registry: self.engine_registry.clone(),
                pccs_url: self.pccs_url.clone(),
                kms_urls: manifest.kms_urls.clone(),
                // As the deployer wrote them: the guest reaches a gateway
                // on this host through the same alias (10.0.2.2) it is
                // written with, so nothing is rewritten.
                gateway_urls: manifest.gateway_urls.clone(),
                vm_config,
                format_nonempty_disk: manifest.format_nonempty_disk,
                ..SysConfig::new(manifest.id, manifest.name)
            },
            instance_info,
        })
    }

    fn notify(&self, notification: Notification) -> Result<(), String> {
        if notification.event == events::INSTANCE_INFO {
            let info: InstanceInfo = serde_json::from_str(&notification.payload)
                .map_err(|e| format!("payload: not InstanceInfo JSON: {e}"))?;
            write_json_atomic(&self.dir.instance_info(), &info)
                .map_err(|e| format!("cannot store instance info: {e}"))?;
        }
        let Notification { event, payload } = notification;
        tracing::info!(vm = %self.id, "guest: {event} {payload}");
        if event == events::DATA_DISK {
            // The guest has decided about the disk: a one-shot opt-in to
            // format a non-empty one is used up, whatever it decided.
            if let Err(e) = self.set_format_nonempty_disk(false) {
                tracing::warn!(vm = %self.id, "cannot clear format_nonempty_disk: {e}");
            }
        }
        self.update_guest(|guest| {
            match event.as_str() {
                events::BOOT_PROGRESS => guest.phase = payload.clone(),
                events::BOOT_ERROR => guest.error = Some(payload.clone()),
                events::SHUTDOWN_PROGRESS if payload == "powering off" => guest.powering_off = true,
                events::DATA_DISK => guest.data_disk = payload.clone(),
                _ => {}
            }
            guest.push(VmEvent {
                ts_ms: now_ms(),
                event,
                payload,
            });
        });
        Ok(())
    }

    fn append_logs(&self, batch: LogBatch) -> io::Result<()> {
        let mut text = Vec::new();
        for entry in batch.entries {
            let line = LogLine {
                ts_ms: entry.ts_ms,
                service: entry.service,
                stream: match entry.stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                    LogStream::System => "system",
                }
                .into(),
                line: entry.line,
            };
            serde_json::to_writer(&mut text, &line).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        lock(&self.app_log).append(&text)
    }

    fn sim_td(&self) -> Option<std::sync::Arc<crate::sim_tee::SimTd>> {
        Vm::sim_td(self)
    }

    fn key_provider(&self) -> Option<std::sync::Arc<crate::key_provider::KeyProvider>> {
        Vm::key_provider(self)
    }

    fn blob(&self, sha256: &str) -> Option<std::path::PathBuf> {
        crate::state::blobs::find(&self.dir.blobs(), sha256)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use dstack_proto::host::LogEntry;

    use super::*;
    use dstack_proto::supervisor::VmState;

    use crate::state::{Desired, GuestStatus, Manifest, VmDir};

    pub(in crate::vmm::vm) fn vm(dir: &std::path::Path) -> Vm {
        let manifest = Manifest {
            id: "0a1b2c3d".into(),
            name: "web".into(),
            image: "img".into(),
            vcpu: 1,
            memory_mb: 256,
            disk_gb: 1,
            ports: vec![],
            encrypted_env: "abcd".into(),
            user_config: "u".into(),
            cid: 3,
            created_at_ms: 0,
            desired: Desired::Running,
            kms_urls: vec!["https://10.0.2.2:8000".into()],
            gateway_urls: vec![
                "https://10.0.2.2:9012".into(),
                "https://gw.example:443/prpc".into(),
            ],
            format_nonempty_disk: false,
        };
        manifest.save(&dir.join("manifest.json")).unwrap();
        Vm::new(
            VmDir::at(dir.to_owned()),
            manifest,
            "{\"a\":1}".into(),
            1 << 20,
            crate::config::default_registry_aliases(),
            "127.0.0.1:5000".into(),
            "http://10.0.2.2:8083".into(),
        )
    }

    fn note(event: &str, payload: &str) -> Notification {
        Notification {
            event: event.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn config_bundle_carries_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        let bundle = vm.config().unwrap();
        assert_eq!(bundle.app_compose, "{\"a\":1}");
        assert_eq!(bundle.encrypted_env, vec![0xab, 0xcd]);
        assert_eq!(bundle.sys_config.vm_id, "0a1b2c3d");
        assert_eq!(bundle.sys_config.vm_name, "web");
        assert_eq!(bundle.sys_config.insecure_registries, ["10.0.2.2:5000"]);
        assert_eq!(bundle.sys_config.registry_aliases.len(), 2);
        assert_eq!(bundle.sys_config.pccs_url, "http://10.0.2.2:8083");
        assert_eq!(bundle.sys_config.kms_urls, ["https://10.0.2.2:8000"]);
        assert_eq!(
            bundle.sys_config.gateway_urls,
            ["https://10.0.2.2:9012", "https://gw.example:443/prpc"]
        );
        assert!(
            bundle
                .sys_config
                .vm_config
                .contains("\"memory_size\":268435456")
        );
        assert_eq!(bundle.instance_info, InstanceInfo::default());
    }

    #[test]
    fn notifications_drive_phase_error_and_instance_info() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        vm.notify(note("boot.progress", "pulling")).unwrap();
        assert_eq!(vm.guest().phase, "pulling");
        vm.notify(note("boot.progress", "running")).unwrap();
        assert_eq!(vm.guest().phase, "running");

        let info = r#"{"instance_id_seed":"01","instance_id":"02","app_id":"03"}"#;
        vm.notify(note("instance.info", info)).unwrap();
        assert_eq!(vm.config().unwrap().instance_info.instance_id, vec![2]);
        assert!(vm.notify(note("instance.info", "nope")).is_err());

        vm.notify(note("shutdown.progress", "stopping services"))
            .unwrap();
        assert!(!vm.guest().powering_off);
        vm.notify(note("shutdown.progress", "powering off"))
            .unwrap();
        assert!(vm.guest().powering_off);
        vm.notify(note("boot.error", "pull failed")).unwrap();
        // Persisted for a restarted supervisor.
        let saved = GuestStatus::load(&vm.dir.events());
        assert_eq!(saved.error.as_deref(), Some("pull failed"));
        assert_eq!(saved.events.len(), 6);
        assert_eq!(vm.state(), VmState::Stopped, "no QEMU: not running");
    }

    #[test]
    fn the_format_opt_in_reaches_the_bundle_until_the_guest_reports_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        assert!(!vm.config().unwrap().sys_config.format_nonempty_disk);
        vm.set_format_nonempty_disk(true).unwrap();
        assert!(vm.config().unwrap().sys_config.format_nonempty_disk);
        // Persisted, atomically, with the rest of the manifest.
        assert!(
            Manifest::load(&vm.dir.manifest())
                .unwrap()
                .format_nonempty_disk
        );
        // Other events leave it (a crash before the disk step keeps it for the retry).
        vm.notify(note("boot.progress", "preparing data disk"))
            .unwrap();
        assert!(vm.config().unwrap().sys_config.format_nonempty_disk);

        vm.notify(note(events::DATA_DISK, "formatted")).unwrap();
        assert!(!vm.config().unwrap().sys_config.format_nonempty_disk);
        assert!(
            !Manifest::load(&vm.dir.manifest())
                .unwrap()
                .format_nonempty_disk
        );
        assert_eq!(vm.guest().data_disk, "formatted");
        // Kept for later reads (and a restarted supervisor) ...
        assert_eq!(GuestStatus::load(&vm.dir.events()).data_disk, "formatted");
        vm.notify(note(
            events::DATA_DISK,
            "refused: not a LUKS2 disk and not empty",
        ))
        .unwrap();
        assert_eq!(
            vm.guest().data_disk,
            "refused: not a LUKS2 disk and not empty"
        );
        // ... until the next boot.
        vm.update_guest(GuestStatus::new_boot);
        assert_eq!(vm.guest().data_disk, "");
    }

    #[test]
    fn a_large_encrypted_env_reaches_the_guest_whole() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        // Over upstream's 256 KiB: the guest, not the host, refuses it.
        let blob: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        vm.change_manifest(|m| m.encrypted_env = hex::encode(&blob))
            .unwrap();
        assert_eq!(vm.config().unwrap().encrypted_env, blob);
    }

    #[test]
    fn logs_become_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm(dir.path());
        let entry = |line: &str| LogEntry {
            ts_ms: 5,
            service: "web".into(),
            stream: LogStream::System,
            line: line.into(),
        };
        vm.append_logs(LogBatch {
            entries: vec![entry("a"), entry("b")],
        })
        .unwrap();
        let text = std::fs::read_to_string(vm.dir.app_log()).unwrap();
        let lines: Vec<LogLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].stream, "system");
        assert_eq!(lines[1].line, "b");
    }
}
