//! Test PID1: mount the basics, load every module in the image's
//! load-order, format and mount the first virtio disk with the image's
//! mke2fs, print "init ok", power off. Failures print "init FAILED" and
//! power off too, so QEMU always exits.

use std::ffi::CString;
use std::fs;
use std::process::Command;

fn main() {
    let failures = run();
    if failures == 0 {
        println!("init ok");
    } else {
        println!("init FAILED ({failures} failures)");
    }
    println!("[{}] power off", uptime());
    // SAFETY: sync and reboot take no pointers; powering off is the intent.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// Seconds since the kernel started, for the phase timings.
fn uptime() -> String {
    let text = fs::read_to_string("/proc/uptime").unwrap_or_default();
    text.split_whitespace().next().unwrap_or("?").to_owned()
}

/// Prints the kernel's warnings and errors so far (levels 0-4: "Unknown
/// symbol" is a warning, hidden from the console by loglevel=4).
fn print_kernel_warnings() -> usize {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        println!("error: cannot open /dev/kmsg");
        return 1;
    };
    let mut bad = 0;
    let mut buf = [0u8; 8192];
    // Each read returns one record "prio,seq,usec,flags;message"; EAGAIN ends.
    while let Ok(n) = kmsg.read(&mut buf) {
        let record = String::from_utf8_lossy(&buf[..n]);
        let Some((meta, msg)) = record.split_once(';') else {
            continue;
        };
        let level = meta
            .split(',')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(7)
            & 7;
        if level <= 4 {
            println!("kernel[{level}]: {}", msg.trim_end());
            if msg.contains("Unknown symbol") || msg.contains("disagrees about version") {
                bad += 1;
            }
        }
    }
    bad
}

fn mount(src: &str, target: &str, fstype: &str) -> bool {
    let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
    // SAFETY: all three are valid NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    report(rc, &format!("mount {fstype} on {target}"))
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in literal paths")
}

fn report(rc: i32, what: &str) -> bool {
    if rc == 0 {
        println!("ok: {what}");
        true
    } else {
        println!("error: {what}: {}", std::io::Error::last_os_error());
        false
    }
}

fn run() -> usize {
    let mut failures = 0;
    for (src, target, fstype) in [
        ("dev", "/dev", "devtmpfs"),
        ("proc", "/proc", "proc"),
        ("sys", "/sys", "sysfs"),
    ] {
        failures += usize::from(!mount(src, target, fstype));
    }
    println!("[{}] init started", uptime());
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = format!("/lib/modules/{}", release.trim());
    let order = fs::read_to_string(format!("{dir}/load-order")).unwrap_or_default();
    for rel in order.lines() {
        let path = format!("{dir}/{rel}");
        let Ok(file) = fs::File::open(&path) else {
            println!("error: open {path}");
            failures += 1;
            continue;
        };
        let empty = cstr("");
        // SAFETY: the fd is open for the duration of the call and the
        // parameter string is a valid empty C string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                empty.as_ptr(),
                0,
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc != 0 && errno == Some(libc::ENODEV) && rel.contains("tdx-guest") {
            println!("skip: {rel}: no TDX here (ENODEV)");
        } else if !report(i32::try_from(rc).unwrap_or(-1), &format!("insmod {rel}")) {
            failures += 1;
        }
    }
    println!("[{}] modules loaded", uptime());
    failures += print_kernel_warnings();
    let ca = fs::metadata("/etc/ssl/certs/ca-certificates.crt")
        .map(|m| m.len())
        .unwrap_or(0);
    println!("ca bundle: {ca} bytes");
    failures += usize::from(ca == 0);
    let nets: Vec<String> = fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    println!("net: {nets:?}");
    if fs::metadata("/dev/vda").is_ok() {
        let status = Command::new("/sbin/mke2fs")
            .args(["-q", "-F", "-t", "ext4", "/dev/vda"])
            .status();
        println!("[{}] mke2fs: {status:?}", uptime());
        let formatted = status.is_ok_and(|s| s.success());
        failures += usize::from(!formatted);
        if formatted && mount("/dev/vda", "/data", "ext4") {
            let ok = fs::write("/data/hello", b"hello").is_ok()
                && fs::read("/data/hello").is_ok_and(|d| d == b"hello");
            println!("ext4 write/read: {ok}");
            failures += usize::from(!ok);
            // SAFETY: valid C string path.
            let rc = unsafe { libc::umount(cstr("/data").as_ptr()) };
            failures += usize::from(!report(rc, "umount /data"));
        } else {
            failures += 1;
        }
    } else {
        println!("no /dev/vda: mke2fs not exercised");
    }
    failures
}
