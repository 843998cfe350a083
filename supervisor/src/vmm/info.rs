//! What `GET /v1/vms` and `GET /v1/vms/{vm}` show.

use std::time::Duration;

use dstack_compose::{app_id, compose_hash};
use dstack_proto::host::InstanceInfo;
use dstack_proto::supervisor::{VmInfo, VmState, VmSummary};

use super::vm::Vm;
use crate::guest_client::GuestClient;

/// How long `GET /v1/vms/{vm}` waits for the guest's own view.
const GUEST_INFO_TIMEOUT: Duration = Duration::from_millis(1500);

/// One line of the VM list.
pub(super) fn summary(vm: &Vm) -> VmSummary {
    let manifest = vm.manifest();
    VmSummary {
        id: manifest.id,
        name: manifest.name,
        state: vm.state(),
        phase: vm.guest().phase,
        image: manifest.image,
        ports: manifest.ports,
        created_at_ms: manifest.created_at_ms,
    }
}

/// Everything about a VM; with `ask_guest`, the guest's boot phases and
/// containers too when it is up (best effort, bounded by a short timeout).
pub(super) async fn info(vm: &Vm, ask_guest: bool) -> VmInfo {
    let summary = summary(vm);
    let manifest = vm.manifest();
    let guest = vm.guest();
    let hash = compose_hash(vm.app_compose.as_bytes());
    let instance_id = std::fs::read(vm.dir.instance_info())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<InstanceInfo>(&bytes).ok())
        .map(|info| hex::encode(info.instance_id))
        .unwrap_or_default();
    let (pid, launch_error) = {
        let run = vm.run();
        (run.qemu.as_ref().map(|q| q.pid()), run.launch_error.clone())
    };
    let mut out = VmInfo {
        vcpu: manifest.vcpu,
        memory_mb: manifest.memory_mb,
        disk_gb: manifest.disk_gb,
        cid: manifest.cid,
        compose_hash: hex::encode(hash),
        app_id: hex::encode(app_id(&hash)),
        instance_id,
        kms_urls: manifest.kms_urls,
        gateway_urls: manifest.gateway_urls,
        pid,
        events: guest.events.into_iter().collect(),
        boot_phases: Vec::new(),
        containers: Vec::new(),
        tee: String::new(),
        key_provider: String::new(),
        rtmr3_events: Vec::new(),
        data_disk: guest.data_disk,
        error: guest.error.or(launch_error),
        summary,
    };
    // Only once the guest has reported in: before that its control port is
    // not up, and a connect would just wait out the timeout.
    let up = matches!(out.summary.state, VmState::Booting | VmState::Running);
    if ask_guest && up && !out.summary.phase.is_empty() {
        let client = GuestClient::new(vm.dir.vsock(), GUEST_INFO_TIMEOUT);
        if let Ok(guest) = client.info().await {
            out.boot_phases = guest.boot_phases;
            out.containers = guest.containers;
            out.tee = guest.tee;
            out.key_provider = guest.key_provider;
            out.rtmr3_events = guest.rtmr3_events;
            if !guest.instance_id.is_empty() {
                out.instance_id = guest.instance_id;
            }
            if !guest.app_id.is_empty() {
                out.app_id = guest.app_id;
            }
        }
    }
    out
}
