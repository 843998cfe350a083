//! Runs inside a container of the hardening e2e test: makes the syscalls the
//! default seccomp profile must refuse and prints one `probe` line with what
//! the kernel answered, e.g. `probe keyctl=EPERM add_key=EPERM ...`. Built
//! by the test with plain rustc (static, musl), no crates: busybox has no
//! keyctl or add_key applet to do this with.

use std::ffi::c_long;

extern "C" {
    fn syscall(number: c_long, ...) -> c_long;
}

const SYS_ADD_KEY: c_long = 248;
const SYS_KEYCTL: c_long = 250;
const SYS_UNSHARE: c_long = 272;
const SYS_SOCKET: c_long = 41;
const KEYCTL_GET_KEYRING_ID: c_long = 0;
const KEY_SPEC_SESSION_KEYRING: c_long = -3;
const CLONE_NEWUSER: c_long = 0x1000_0000;
const AF_VSOCK: c_long = 40;
const SOCK_STREAM: c_long = 1;

/// "ok", or the errno's name (EPERM, ENOSYS...) or number.
fn outcome(ret: c_long) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        errno_name(&std::io::Error::last_os_error())
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(1) => "EPERM".into(),
        Some(2) => "ENOENT".into(),
        Some(13) => "EACCES".into(),
        Some(22) => "EINVAL".into(),
        Some(30) => "EROFS".into(),
        Some(38) => "ENOSYS".into(),
        Some(n) => format!("errno{n}"),
        None => "unknown".into(),
    }
}

fn main() {
    // SAFETY: integer arguments only.
    let keyctl = outcome(unsafe {
        syscall(
            SYS_KEYCTL,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0 as c_long,
        )
    });
    let kind = b"user\0";
    let desc = b"dstack-probe\0";
    let payload = b"x";
    // SAFETY: NUL-terminated type and description, and a payload pointer
    // with its length, all alive for the call.
    let add_key = unsafe {
        syscall(
            SYS_ADD_KEY,
            kind.as_ptr(),
            desc.as_ptr(),
            payload.as_ptr(),
            payload.len() as c_long,
            KEY_SPEC_SESSION_KEYRING,
        )
    };
    let add_key = outcome(add_key);
    // SAFETY: integer arguments only.
    let unshare = outcome(unsafe { syscall(SYS_UNSHARE, CLONE_NEWUSER) });
    // SAFETY: integer arguments only.
    let vsock = outcome(unsafe { syscall(SYS_SOCKET, AF_VSOCK, SOCK_STREAM, 0 as c_long) });
    let sysrq = match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sysrq-trigger")
    {
        Ok(_) => "ok".to_string(),
        Err(e) => errno_name(&e),
    };
    // /proc/sys is one of docker's read-only paths (and exists on every kernel).
    let procsys = match std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/domainname")
    {
        Ok(_) => "ok".to_string(),
        Err(e) => errno_name(&e),
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let nnp = status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(str::trim)
        .unwrap_or("unknown");
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .unwrap_or("unknown");
    println!(
        "probe keyctl={keyctl} add_key={add_key} unshare_user={unshare} vsock={vsock} \
         sysrq={sysrq} procsys={procsys} capeff={cap_eff} nnp={nnp} seccomp={seccomp}"
    );
}
