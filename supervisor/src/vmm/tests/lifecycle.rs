//! Start, stop, remove, crash restarts and re-adoption with the stand-in
//! processes.

use std::time::{Duration, Instant};

use dstack_proto::supervisor::{VmInfo, VmState};
use rustix::process::Signal;

use super::*;
use crate::hostapi::GuestSink;
use crate::qemu::process::{is_ours, is_running, read_pid};
use crate::state::{Desired, VmDir};
use crate::test_util::app_compose;

#[tokio::test]
async fn deploy_stop_start_remove() {
    let host = Host::new();
    let sup = Supervisor::open(host.config("qemu", true)).await.unwrap();
    let info = deploy(&sup, request("web")).await.unwrap();
    let id = info.summary.id.clone();
    assert_eq!(info.summary.state, VmState::Booting);
    let pid = info.pid.unwrap();
    let dir = VmDir::new(&host.state().join("vms"), &id);
    assert!(is_ours(pid, &crate::qemu::argv::name_arg(&id)));
    assert_eq!(read_pid(&dir.qemu_pid()), Some(pid));
    let backend = read_pid(&dir.vsock_pid()).unwrap();
    assert!(is_running(backend));
    assert_eq!(std::fs::metadata(dir.disk()).unwrap().len(), 1 << 30);
    assert_eq!(
        std::fs::read_to_string(dir.app_compose()).unwrap(),
        app_compose("web")
    );

    // The guest reports in over its host API socket.
    let vm = sup.find("web").unwrap();
    vm.notify(dstack_proto::host::Notification {
        event: "boot.progress".into(),
        payload: "running".into(),
    })
    .unwrap();
    assert_eq!(
        get(&sup, &id).await.unwrap().summary.state,
        VmState::Running
    );

    let Reply::Vm(stopped) = sup
        .handle(Command::Stop {
            vm: "web".into(),
            force: false,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(stopped.summary.state, VmState::Stopped);
    assert_eq!(stopped.pid, None);
    assert!(!is_running(pid) && !is_running(backend));
    assert!(!dir.qemu_pid().exists() && !dir.vsock_pid().exists());
    assert_eq!(vm.manifest().desired, Desired::Stopped);

    let Reply::Vm(started) = sup
        .handle(Command::Start {
            vm: id.clone(),
            format_nonempty_disk: false,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        started.summary.state,
        VmState::Booting,
        "a new boot forgets the old phase"
    );
    let pid = started.pid.unwrap();
    assert_eq!(vm.manifest().desired, Desired::Running);

    assert!(matches!(
        sup.handle(Command::Remove {
            vm: "web".into(),
            force: false,
        })
        .await,
        Ok(Reply::Removed)
    ));
    assert!(!is_running(pid));
    assert!(host.vm_dirs().is_empty());
    assert!(matches!(get(&sup, "web").await, Err(VmmError::NotFound(_))));
    assert!(
        !std::fs::read_to_string(host.state().join("cids.json"))
            .unwrap()
            .contains(&id)
    );
}

#[tokio::test]
async fn a_crash_is_restarted_but_a_power_off_or_failed_boot_is_not() {
    let host = Host::new();
    let sup = Supervisor::open(host.config("qemu", false)).await.unwrap();
    let info = deploy(&sup, request("web")).await.unwrap();
    let first = info.pid.unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_for(&sup, "web", "crashed", |i| {
        i.summary.state == VmState::Crashed
    })
    .await;
    let restarted = wait_for(&sup, "web", "restart", |i| i.pid.is_some()).await;
    assert_ne!(restarted.pid, Some(first));
    assert_eq!(restarted.summary.state, VmState::Booting);

    // The guest announces its power-off, then QEMU exits: a clean stop.
    let vm = sup.find("web").unwrap();
    vm.notify(dstack_proto::host::Notification {
        event: "shutdown.progress".into(),
        payload: "powering off".into(),
    })
    .unwrap();
    assert_eq!(
        get(&sup, "web").await.unwrap().summary.state,
        VmState::Stopping
    );
    let pid = restarted.pid.unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_for(&sup, "web", "stopped", |i| {
        i.summary.state == VmState::Stopped
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = get(&sup, "web").await.unwrap();
    assert_eq!(
        (after.summary.state, after.pid),
        (VmState::Stopped, None),
        "not restarted"
    );
    assert_eq!(vm.manifest().desired, Desired::Stopped);

    // A failed boot: error, then power-off, then exit. Shown as failed, not restarted.
    let Reply::Vm(info) = sup
        .handle(Command::Start {
            vm: "web".into(),
            format_nonempty_disk: false,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let pid = info.pid.unwrap();
    for (event, payload) in [
        ("boot.error", "pull failed"),
        ("shutdown.progress", "powering off"),
    ] {
        vm.notify(dstack_proto::host::Notification {
            event: event.into(),
            payload: payload.into(),
        })
        .unwrap();
    }
    assert_eq!(
        get(&sup, "web").await.unwrap().summary.state,
        VmState::Failed
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_for(&sup, "web", "exit", |i| i.pid.is_none()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = get(&sup, "web").await.unwrap();
    assert_eq!((after.summary.state, after.pid), (VmState::Failed, None));
    assert_eq!(after.error.as_deref(), Some("pull failed"));
    sup.handle(Command::Remove {
        vm: "web".into(),
        force: false,
    })
    .await
    .unwrap();
}

#[test]
fn a_restarted_supervisor_readopts_and_cleans_up() {
    let host = Host::new();
    let runtime = || tokio::runtime::Runtime::new().unwrap();

    // First life: deploy two VMs, then "crash" (drop every task).
    let first = runtime();
    let (a, b, c) = first.block_on(async {
        let sup = Supervisor::open(host.config("qemu", true)).await.unwrap();
        let a = deploy(&sup, request("a")).await.unwrap();
        let b = deploy(&sup, request("b")).await.unwrap();
        let c = deploy(&sup, request("c")).await.unwrap();
        (a, b, c)
    });
    drop(first);
    // VM c was being stopped when the supervisor died: desired is stopped,
    // QEMU still runs.
    let c_manifest = VmDir::new(&host.state().join("vms"), &c.summary.id).manifest();
    let mut manifest = crate::state::Manifest::load(&c_manifest).unwrap();
    manifest.desired = Desired::Stopped;
    manifest.save(&c_manifest).unwrap();
    let c_pid = c.pid.unwrap();
    let vms = host.state().join("vms");
    let backend_of =
        |info: &VmInfo| read_pid(&VmDir::new(&vms, &info.summary.id).vsock_pid()).unwrap();
    let (a_backend, b_backend) = (backend_of(&a), backend_of(&b));
    let (a_pid, b_pid) = (a.pid.unwrap(), b.pid.unwrap());
    assert!(
        is_running(a_pid) && is_running(b_pid),
        "VMs outlive the supervisor"
    );

    // While no supervisor runs, VM b's QEMU dies.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(b_pid as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();

    // SIGKILL is delivered asynchronously: let it land, as it would have
    // long before a real supervisor came back.
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_running(b_pid) {
        assert!(Instant::now() < deadline, "SIGKILL did not land");
        std::thread::sleep(Duration::from_millis(10));
    }

    let second = runtime();
    second.block_on(async {
        let sup = Supervisor::open(host.config("qemu", true)).await.unwrap();
        let a_now = get(&sup, "a").await.unwrap();
        assert_eq!(a_now.pid, Some(a_pid), "re-adopted");
        assert_eq!(a_now.summary.state, VmState::Booting);
        assert!(is_running(a_backend));
        // b's orphaned backend is stopped and b, which should run, is restarted.
        assert!(!is_running(b_backend));
        let b_now = wait_for(&sup, "b", "b restarted", |i| i.pid.is_some()).await;
        assert_ne!(b_now.pid, Some(b_pid));

        // The re-adopted QEMU is watched: killing it is noticed.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(a_pid as i32).unwrap(),
            Signal::KILL,
        )
        .unwrap();
        wait_for(&sup, "a", "a restarted", |i| {
            i.pid.is_some_and(|p| p != a_pid)
        })
        .await;

        // The interrupted stop of c is finished.
        wait_for(&sup, "c", "c stopped", |i| {
            i.summary.state == VmState::Stopped
        })
        .await;
        assert!(!is_running(c_pid));
        sup.handle(Command::Remove {
            vm: "c".into(),
            force: false,
        })
        .await
        .unwrap();

        for vm in ["a", "b"] {
            let pid = get(&sup, vm).await.unwrap().pid.unwrap();
            sup.handle(Command::Remove {
                vm: vm.into(),
                force: true,
            })
            .await
            .unwrap();
            assert!(!is_running(pid));
        }
        assert!(!is_running(a_backend));
    });
    assert!(host.vm_dirs().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(host.state())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        5,
        "images, vms, cids.json, sim-tee.json, sim-key-provider.json: {leftovers:?}"
    );
}

#[tokio::test]
async fn the_format_opt_in_is_one_shot_and_the_disk_report_is_per_boot() {
    let host = Host::new();
    let sup = Supervisor::open(host.config("qemu", false)).await.unwrap();
    let mut req = request("web");
    req.format_nonempty_disk = true;
    let info = deploy(&sup, req).await.unwrap();
    let vm = sup.find("web").unwrap();
    let dir = VmDir::new(&host.state().join("vms"), &info.summary.id);
    let saved = || crate::state::Manifest::load(&dir.manifest()).unwrap();
    assert!(
        saved().format_nonempty_disk,
        "the deploy's opt-in is stored"
    );
    assert!(vm.config().unwrap().sys_config.format_nonempty_disk);
    assert_eq!(info.data_disk, "");

    let note = |payload: &str| dstack_proto::host::Notification {
        event: dstack_proto::host::events::DATA_DISK.into(),
        payload: payload.into(),
    };
    vm.notify(note("formatted")).unwrap();
    assert!(
        !saved().format_nonempty_disk,
        "used up by the guest's report"
    );
    assert!(!vm.config().unwrap().sys_config.format_nonempty_disk);
    for _ in 0..2 {
        assert_eq!(get(&sup, "web").await.unwrap().data_disk, "formatted");
    }

    // Asking for it while the VM runs applies to no boot: refused.
    let err = sup
        .handle(Command::Start {
            vm: "web".into(),
            format_nonempty_disk: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), axum::http::StatusCode::CONFLICT);
    assert!(!saved().format_nonempty_disk);

    let stop = || Command::Stop {
        vm: "web".into(),
        force: true,
    };
    sup.handle(stop()).await.unwrap();
    let Reply::Vm(started) = sup
        .handle(Command::Start {
            vm: "web".into(),
            format_nonempty_disk: true,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(started.data_disk, "", "a new boot forgets the last report");
    assert!(saved().format_nonempty_disk);
    assert!(vm.config().unwrap().sys_config.format_nonempty_disk);

    // A start without it withdraws a pending opt-in.
    sup.handle(stop()).await.unwrap();
    sup.handle(Command::Start {
        vm: "web".into(),
        format_nonempty_disk: false,
    })
    .await
    .unwrap();
    assert!(!saved().format_nonempty_disk);
    vm.notify(note("opened")).unwrap();
    assert_eq!(get(&sup, "web").await.unwrap().data_disk, "opened");
    sup.handle(Command::Remove {
        vm: "web".into(),
        force: true,
    })
    .await
    .unwrap();
}
