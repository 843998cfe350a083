use std::process::Command;

use oci_spec::runtime::{LinuxSeccompAction, LinuxSyscall};

use super::*;
use crate::containers::hardening::DEFAULT_CAPABILITIES;

fn profile(caps: &[&str]) -> LinuxSeccomp {
    default_profile(caps.iter().copied()).unwrap()
}

fn with_sys_admin() -> Vec<&'static str> {
    DEFAULT_CAPABILITIES
        .into_iter()
        .chain(["CAP_SYS_ADMIN"])
        .collect()
}

/// The rules naming `name`.
fn rules_for<'a>(seccomp: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
    seccomp
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|s| s.names().iter().any(|n| n == name))
        .collect()
}

/// Allowed whatever its arguments.
fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
    rules_for(seccomp, name)
        .iter()
        .any(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
}

#[test]
fn default_is_eperm_for_anything_not_listed() {
    let p = profile(&DEFAULT_CAPABILITIES);
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret(), Some(1));
    assert_eq!(
        p.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
    );
    for name in [
        "read",
        "write",
        "execve",
        "openat",
        "futex",
        "arch_prctl",
        "chroot",
    ] {
        assert!(allowed(&p, name), "{name}");
    }
    // Never allowed by docker's profile, whatever the capabilities.
    let all = profile(&dstack_compose::LINUX_CAPABILITIES);
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "userfaultfd",
        "init_module",
        "swapon",
        "pivot_root",
    ] {
        assert!(rules_for(&p, name).is_empty(), "{name} in default profile");
        if !["open_by_handle_at", "init_module"].contains(&name) {
            assert!(rules_for(&all, name).is_empty(), "{name} with all caps");
        }
    }
}

#[test]
fn namespace_and_mount_syscalls_need_cap_sys_admin() {
    let default = profile(&DEFAULT_CAPABILITIES);
    let admin = profile(&with_sys_admin());
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "perf_event_open",
        "syslog",
    ] {
        assert!(!allowed(&default, name), "{name} allowed by default");
        assert!(allowed(&admin, name), "{name} refused with CAP_SYS_ADMIN");
    }
    // clone: only without namespace flags unless CAP_SYS_ADMIN.
    let clone = rules_for(&default, "clone");
    assert_eq!(clone.len(), 1);
    let args = clone[0].args().as_ref().unwrap();
    assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    // Mask in value_two, datum in value: as libcontainer reads them (see syscall()).
    assert_eq!(args[0].value_two(), Some(0x7E02_0000));
    assert_eq!(args[0].value(), 0);
    assert!(allowed(&admin, "clone"));
    assert!(
        rules_for(&admin, "clone")
            .iter()
            .all(|s| s.args().is_none())
    );
    // clone3's flags are in memory a filter cannot read: ENOSYS, so libc
    // falls back to clone.
    let clone3 = rules_for(&default, "clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3[0].errno_ret(), Some(38));
    assert!(allowed(&admin, "clone3"));
    assert_eq!(rules_for(&admin, "clone3").len(), 1);
}

#[test]
fn capability_gated_syscalls_follow_the_capability() {
    let default = profile(&DEFAULT_CAPABILITIES);
    for (cap, name) in [
        ("CAP_SYS_TIME", "settimeofday"),
        ("CAP_SYS_TIME", "clock_settime"),
        ("CAP_SYS_BOOT", "reboot"),
        ("CAP_SYS_MODULE", "init_module"),
        ("CAP_SYS_PTRACE", "kcmp"),
        ("CAP_SYS_RAWIO", "iopl"),
        ("CAP_SYS_NICE", "mbind"),
        ("CAP_SYS_PACCT", "acct"),
        ("CAP_SYS_TTY_CONFIG", "vhangup"),
        ("CAP_SYSLOG", "syslog"),
        ("CAP_BPF", "bpf"),
        ("CAP_PERFMON", "perf_event_open"),
        ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ] {
        assert!(!allowed(&default, name), "{name} allowed by default");
        let caps: Vec<&str> = DEFAULT_CAPABILITIES.into_iter().chain([cap]).collect();
        assert!(allowed(&profile(&caps), name), "{name} refused with {cap}");
    }
    // CAP_SYS_CHROOT is a default capability, so chroot is allowed by
    // default, and refused once it is dropped.
    let no_chroot: Vec<&str> = DEFAULT_CAPABILITIES
        .into_iter()
        .filter(|c| *c != "CAP_SYS_CHROOT")
        .collect();
    assert!(!allowed(&profile(&no_chroot), "chroot"));
}

#[test]
fn socket_refuses_af_alg_and_af_vsock_only() {
    let p = profile(&DEFAULT_CAPABILITIES);
    let tests: Vec<(LinuxSeccompOperator, u64)> = rules_for(&p, "socket")
        .iter()
        .map(|s| {
            let args = s.args().as_ref().unwrap();
            assert_eq!(args.len(), 1);
            assert_eq!(args[0].index(), 0);
            (args[0].op(), args[0].value())
        })
        .collect();
    let permits = |family: u64| {
        tests.iter().any(|(op, v)| match op {
            LinuxSeccompOperator::ScmpCmpLt => family < *v,
            LinuxSeccompOperator::ScmpCmpEq => family == *v,
            LinuxSeccompOperator::ScmpCmpGt => family > *v,
            _ => panic!("unexpected operator {op:?}"),
        })
    };
    for family in [1, 2, 10, 16, 17, 39, 41, 45] {
        assert!(permits(family), "family {family} refused");
    }
    assert!(!permits(38), "AF_ALG allowed");
    assert!(!permits(40), "AF_VSOCK allowed");
}

#[test]
fn the_profile_serialises_as_an_oci_seccomp_section() {
    let json = serde_json::to_value(profile(&DEFAULT_CAPABILITIES)).unwrap();
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(json["defaultErrnoRet"], 1);
    assert_eq!(json["architectures"][0], "SCMP_ARCH_X86_64");
    let clone3 = json["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["names"] == serde_json::json!(["clone3"]))
        .unwrap();
    assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
    assert_eq!(clone3["errnoRet"], 38);
}

/// Set in the re-executed test binary: which profile to load before probing.
const PROBE_ENV: &str = "DSTACK_SECCOMP_PROBE";

/// errno of a raw syscall with integer arguments (0 when it succeeded).
#[allow(unsafe_code)]
fn raw(nr: nix::libc::c_long, args: [nix::libc::c_long; 4]) -> i32 {
    // SAFETY: every probed call takes integers, or pointers that are NULL or
    // point to the NUL-terminated statics passed in; none writes to memory
    // we own (buffers are NULL with zero length).
    let ret = unsafe { nix::libc::syscall(nr, args[0], args[1], args[2], args[3]) };
    if ret < 0 {
        nix::errno::Errno::last_raw()
    } else {
        0
    }
}

/// Loads the profile for `mode` through libcontainer, as a container's init
/// does, then checks what the kernel answers.
fn probe(mode: &str) {
    use nix::libc::*;

    let caps = match mode {
        "default" => DEFAULT_CAPABILITIES.to_vec(),
        "sys_admin" => with_sys_admin(),
        other => panic!("unknown probe mode {other}"),
    };
    // no_new_privs first, so loading the filter needs no privilege.
    nix::sys::prctl::set_no_new_privs().unwrap();
    libcontainer::seccomp::initialize_seccomp(&profile(&caps)).unwrap();

    let user = c"user".as_ptr() as c_long;
    let desc = c"dstack-probe".as_ptr() as c_long;
    let nonexistent = c"/nonexistent-dstack-probe".as_ptr() as c_long;
    let newuser_fs = (CLONE_NEWUSER | CLONE_FS) as c_long;
    let newns_fs = (CLONE_NEWNS | CLONE_NEWUSER | CLONE_FS) as c_long;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: i32, want: i32| {
        if got != want {
            failures.push(format!("{what}: errno {got}, expected {want}"));
        }
    };
    // Never allowed.
    expect("keyctl", raw(SYS_keyctl, [0, -3, 0, 0]), EPERM);
    expect("add_key", raw(SYS_add_key, [user, desc, 0, 0]), EPERM);
    expect(
        "request_key",
        raw(SYS_request_key, [user, desc, 0, 0]),
        EPERM,
    );
    expect("kexec_load", raw(SYS_kexec_load, [0, 0, 0, 0]), EPERM);
    expect("socket(AF_VSOCK)", raw(SYS_socket, [40, 1, 0, 0]), EPERM);
    expect("socket(AF_ALG)", raw(SYS_socket, [38, 5, 0, 0]), EPERM);
    expect(
        "personality(ADDR_NO_RANDOMIZE)",
        raw(SYS_personality, [0x0040000, 0, 0, 0]),
        EPERM,
    );
    // Always allowed (an error here would come from the kernel, not the filter).
    expect("getpid", raw(SYS_getpid, [0; 4]), 0);
    expect(
        "personality(query)",
        raw(SYS_personality, [0xffff_ffff, 0, 0, 0]),
        0,
    );
    let unix = raw(SYS_socket, [AF_UNIX as c_long, SOCK_STREAM as c_long, 0, 0]);
    expect("socket(AF_UNIX)", unix, 0);
    // fork/exec through libc: clone3 (if libc tries it) gets ENOSYS and the
    // fallback to clone passes the flag test.
    let spawned = Command::new("/bin/sh").args(["-c", "exit 7"]).status();
    expect(
        "spawning /bin/sh",
        spawned.map_or(-1, |s| s.code().unwrap_or(-1)),
        7,
    );
    if mode == "default" {
        expect("unshare(0)", raw(SYS_unshare, [0; 4]), EPERM);
        expect(
            "unshare(CLONE_NEWUSER)",
            raw(SYS_unshare, [CLONE_NEWUSER as c_long, 0, 0, 0]),
            EPERM,
        );
        expect("setns", raw(SYS_setns, [-1, 0, 0, 0]), EPERM);
        expect("mount", raw(SYS_mount, [0, nonexistent, 0, 0]), EPERM);
        expect("umount2", raw(SYS_umount2, [nonexistent, 0, 0, 0]), EPERM);
        expect("bpf", raw(SYS_bpf, [0, 0, 0, 0]), EPERM);
        expect("clone3", raw(SYS_clone3, [0, 0, 0, 0]), ENOSYS);
        // CLONE_FS with CLONE_NEWUSER: the kernel refuses the pair (EINVAL)
        // if the filter lets it through, so no child is ever created here.
        expect(
            "clone(CLONE_NEWUSER)",
            raw(SYS_clone, [newuser_fs, 0, 0, 0]),
            EPERM,
        );
        expect(
            "clone(CLONE_NEWNS)",
            raw(SYS_clone, [newns_fs, 0, 0, 0]),
            EPERM,
        );
    } else {
        // Past the filter, the kernel answers.
        expect("unshare(0)", raw(SYS_unshare, [0; 4]), 0);
        expect("setns", raw(SYS_setns, [-1, 0, 0, 0]), EBADF);
        expect("clone3", raw(SYS_clone3, [0, 0, 0, 0]), EINVAL);
        expect(
            "clone(CLONE_NEWUSER)",
            raw(SYS_clone, [newuser_fs, 0, 0, 0]),
            EINVAL,
        );
        // Still refused with CAP_SYS_ADMIN.
        expect("keyctl (sys_admin)", raw(SYS_keyctl, [0, -3, 0, 0]), EPERM);
    }
    assert!(failures.is_empty(), "{mode}: {failures:#?}");
}

#[test]
fn libcontainer_enforces_the_profile() {
    if let Ok(mode) = std::env::var(PROBE_ENV) {
        return probe(&mode);
    }
    // The filter cannot be lifted once loaded: probe in a fresh copy of this
    // test binary, running only this test.
    let exe = std::env::current_exe().unwrap();
    let name = "containers::seccomp::tests::libcontainer_enforces_the_profile";
    for mode in ["default", "sys_admin"] {
        let out = Command::new(&exe)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(PROBE_ENV, mode)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode} probe failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The child really ran the probe (not zero tests).
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
