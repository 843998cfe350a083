//! The probe boot: QEMU's ACPI tables for a TD, read from stock QEMU.
//!
//! TDVF measures the three fw_cfg files QEMU builds its ACPI tables into
//! (`etc/table-loader`, `etc/acpi/rsdp`, `etc/acpi/tables`) into RTMR0, so a
//! verifier needs their bytes for every VM shape. QEMU builds them when the
//! firmware first selects one of them after a reset (`acpi_build_update`),
//! which is after the firmware programmed PCIEXBAR and assigned the PCI
//! BARs the tables describe, and never again until the next reset.
//!
//! So the probe boots the TD's machine ([`machine_argv`] with
//! [`Platform::ProbeTcg`]) with OVMF and the image's kernel and initrd, the
//! command line plus [`ACPI_TABLES_PARAM`]. The guest's PID1 sees that
//! parameter, boots nothing and prints [`ACPI_TABLES_READY`]: the firmware
//! is long done by then. The probe then stops the guest and reads the
//! directory and the three files through fw_cfg's I/O ports from QEMU's
//! human monitor ([`crate::monitor`]): the same device code a guest's port
//! I/O runs, after the same firmware ran, so the same bytes.
//!
//! Reading from the host rather than in the guest needs no port I/O in the
//! guest kernel: ours is built without `CONFIG_X86_IOPL_IOPERM` (no
//! `ioperm(2)`/`iopl(2)`), without `/dev/port` (`CONFIG_DEVPORT`, which
//! writes bytes only, and fw_cfg selects with a 16-bit write) and without
//! the `qemu_fw_cfg` driver.
//!
//! What the probe's VM has that the TD has not, and why it cannot change
//! the three blobs:
//! - TCG instead of KVM, a `qemu64` CPU instead of `host` (with the TD's
//!   1 GiB pages and address width, [`ProbeOptions::phys_bits`]), and no
//!   `tdx-guest` object or TD machine options: argued in [`machine_argv`];
//! - `dstack.probe=acpi-tables` on the kernel command line: the command
//!   line reaches the firmware through fw_cfg's kernel items, which no ACPI
//!   table describes (the probe read the same blobs with one more
//!   parameter on it);
//! - the serial console into a file instead of a socket, a scratch disk
//!   image instead of the VM's, no host forwards on the user-mode NIC:
//!   host ends only, the guest's devices are the same;
//! - [`VSOCK_STAND_IN`](crate::VSOCK_STAND_IN) where the TD has its vsock
//!   device: see there;
//! - a human monitor socket, which the guest cannot see.
//!
//! What a probe cannot show: OVMF runs its plain-VM platform code here,
//! and its TDX code in a TD (memory from the TD HOB, the TD's CPUID). Where
//! that code puts PCI resources differently, the DSDT differs. Only a real
//! TD settles it: the ACPI digests in its RTMR0 event log against a probe's
//! blobs for the same shape, QEMU and firmware.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dstack_proto::probe::{ACPI_TABLES_PARAM, ACPI_TABLES_READY};

use crate::acpi::{AcpiBlobs, BlobError};
use crate::argv::{BootFiles, Devices, Machine, Platform, Serial, Shape, Vsock, machine_argv};
use crate::fw_cfg::{self, DirectoryError, FwCfgFile};
use crate::monitor::{Hmp, MonitorError};
use dstack_firmware::AcpiTables;

/// How long a probe may take by default: a TCG boot through OVMF takes
/// 5–10 s on a quiet machine and reading the tables about 10 s more, and CI
/// machines are shared.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the scratch disk image (sparse): the guest never writes it.
const SCRATCH_DISK_BYTES: u64 = 1 << 20;
/// Lines of serial output an error shows.
const TAIL_LINES: usize = 25;
/// How often the probe looks at the serial log while the guest boots.
const POLL: Duration = Duration::from_millis(50);
/// How long QEMU may take to exit once told to quit.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// How a probe runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// The whole probe's deadline, boot and reading included; QEMU is
    /// killed when it passes.
    pub timeout: Duration,
    /// The device in the TD's vsock slot.
    pub vsock: ProbeVsock,
    /// The physical address width the TD's firmware sees
    /// ([`TD_PHYS_BITS`](crate::TD_PHYS_BITS) unless the TDX host is known
    /// to show its TDs another): it moves the DSDT's 64-bit PCI window.
    pub phys_bits: u8,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            vsock: ProbeVsock::StandIn,
            phys_bits: crate::argv::TD_PHYS_BITS,
        }
    }
}

/// The device the probe puts in the TD's vsock slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVsock {
    /// [`VSOCK_STAND_IN`](crate::VSOCK_STAND_IN): needs nothing on the host.
    StandIn,
    /// `vhost-user-vsock-pci` served by this vhost-device-vsock binary, for
    /// checking that the stand-in changes nothing.
    VhostUser {
        /// The vhost-device-vsock binary.
        backend: PathBuf,
    },
}

/// A probe that did not produce the tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The work directory or a file in it could not be set up.
    #[error("cannot prepare the probe's work directory {}", path.display())]
    WorkDir {
        /// What could not be created.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// QEMU or the vsock backend could not be started.
    #[error("cannot start {}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// QEMU ended before the guest was ready.
    #[error(
        "QEMU exited ({status}) before the probe guest was ready\n\
         --- QEMU said ---\n{qemu_log_tail}\n--- serial (last lines) ---\n{serial_tail}"
    )]
    Exited {
        /// How it ended.
        status: ExitStatus,
        /// The end of QEMU's stderr.
        qemu_log_tail: String,
        /// The end of the guest's console.
        serial_tail: String,
    },
    /// The deadline passed; QEMU was killed.
    #[error(
        "the ACPI probe took longer than {timeout:?} ({stage}); QEMU was killed\n\
         --- serial (last lines) ---\n{serial_tail}"
    )]
    TimedOut {
        /// The probe's timeout.
        timeout: Duration,
        /// What it was waiting for.
        stage: &'static str,
        /// The end of the guest's console.
        serial_tail: String,
    },
    /// Talking to QEMU's monitor failed.
    #[error("QEMU's monitor failed while {stage}")]
    Monitor {
        /// What the probe was doing.
        stage: &'static str,
        /// Why.
        #[source]
        source: MonitorError,
    },
    /// fw_cfg's directory could not be parsed.
    #[error("QEMU's fw_cfg file directory is malformed")]
    Directory(#[source] DirectoryError),
    /// fw_cfg has no such file.
    #[error("QEMU's fw_cfg has no file {0:?}")]
    MissingFile(&'static str),
    /// A blob does not have QEMU's shape.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// The files of a probe in its work directory.
#[derive(Debug)]
struct WorkFiles {
    dir: PathBuf,
}

impl WorkFiles {
    fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    fn monitor(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }
    fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }
    fn vhost_sock(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }
    fn vsock(&self) -> PathBuf {
        self.dir.join("vsock")
    }

    /// Creates the directory and a scratch disk; removes what an earlier
    /// probe left.
    fn prepare(&self) -> Result<(), ProbeError> {
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| ProbeError::WorkDir { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(failed(&self.dir))?;
        for stale in [
            self.serial(),
            self.qemu_log(),
            self.monitor(),
            self.vhost_sock(),
            self.vsock(),
        ] {
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(&stale)(e)),
            }
        }
        let disk = self.disk();
        File::create(&disk)
            .and_then(|f| f.set_len(SCRATCH_DISK_BYTES))
            .map_err(failed(&disk))?;
        Ok(())
    }
}

/// QEMU's arguments for probing `image` at `shape` in `work_dir`: the TD's
/// machine ([`machine_argv`]) with the probe's devices, plus the monitor.
pub fn probe_argv(
    image: &BootFiles<'_>,
    shape: Shape,
    work_dir: &Path,
    options: &ProbeOptions,
) -> Vec<String> {
    let files = WorkFiles {
        dir: work_dir.to_owned(),
    };
    let cmdline = format!("{} {ACPI_TABLES_PARAM}", image.cmdline);
    let (serial, disk, vhost_sock) = (files.serial(), files.disk(), files.vhost_sock());
    let machine = Machine {
        shape,
        boot: BootFiles {
            cmdline: &cmdline,
            ..*image
        },
        devices: Devices {
            serial: Serial::File(&serial),
            disk: &disk,
            // The probe must not take host ports a VM may be using.
            host_forwards: &[],
            vsock: match options.vsock {
                ProbeVsock::StandIn => Vsock::StandIn,
                ProbeVsock::VhostUser { .. } => Vsock::VhostUser {
                    socket: &vhost_sock,
                },
            },
        },
    };
    let platform = Platform::ProbeTcg {
        phys_bits: options.phys_bits,
    };
    let mut args = machine_argv(&machine, &platform);
    args.push("-monitor".into());
    args.push(format!(
        "unix:{},server=on,wait=off",
        files.monitor().to_string_lossy()
    ));
    args
}

/// Boots `image` at `shape` under TCG with `qemu` and reads the ACPI
/// blobs QEMU built for it; `work_dir` holds the probe's files (its path
/// must leave room for a unix socket name, about 90 bytes at most).
pub fn probe_acpi_tables(
    qemu: &Path,
    image: &BootFiles<'_>,
    shape: Shape,
    work_dir: &Path,
    options: &ProbeOptions,
) -> Result<AcpiTables, ProbeError> {
    let deadline = Instant::now() + options.timeout;
    let files = WorkFiles {
        dir: work_dir.to_owned(),
    };
    files.prepare()?;
    let _backend = match &options.vsock {
        ProbeVsock::StandIn => None,
        ProbeVsock::VhostUser { backend } => {
            Some(start_backend(backend, &files, deadline, options.timeout)?)
        }
    };
    let qemu_log = File::create(files.qemu_log()).map_err(|source| ProbeError::WorkDir {
        path: files.qemu_log(),
        source,
    })?;
    let child = Command::new(qemu)
        .args(probe_argv(image, shape, work_dir, options))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_log)
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: qemu.to_owned(),
            source,
        })?;
    let mut qemu = Killed(child);
    let timed_out = |stage| ProbeError::TimedOut {
        timeout: options.timeout,
        stage,
        serial_tail: tail(&files.serial()),
    };
    wait_ready(&mut qemu.0, &files, deadline).map_err(|e| match e {
        Wait::TimedOut => timed_out("waiting for the guest"),
        Wait::Failed(e) => e,
    })?;
    let monitor_failed = |stage| {
        move |source| match source {
            MonitorError::TimedOut => timed_out(stage),
            source => ProbeError::Monitor { stage, source },
        }
    };
    let mut hmp = Hmp::connect(&files.monitor(), deadline).map_err(monitor_failed("connecting"))?;
    // A stopped guest cannot touch fw_cfg, and its vCPU stops competing
    // with the monitor for the host's CPU.
    hmp.command("stop", deadline)
        .map_err(monitor_failed("stopping the guest"))?;
    let tables = read_acpi(&mut hmp, deadline).map_err(|e| match e {
        Read::Monitor(e) => monitor_failed("reading fw_cfg")(e),
        Read::Probe(e) => e,
    })?;
    // Best effort: the guard kills QEMU if it does not go.
    if hmp.quit(deadline).is_ok() {
        let _ = wait_exit(&mut qemu.0, QUIT_GRACE);
    }
    tables.check()?;
    Ok(tables)
}

/// A child process that is killed (SIGKILL, by its pid) and reaped when
/// dropped, whatever ended the probe.
#[derive(Debug)]
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts vhost-device-vsock for the probe and waits for its socket.
fn start_backend(
    backend: &Path,
    files: &WorkFiles,
    deadline: Instant,
    timeout: Duration,
) -> Result<Killed, ProbeError> {
    let child = Command::new(backend)
        .arg("--vm")
        .arg(format!(
            // Any CID: the backend is the probe's own, not the host's.
            "guest-cid=3,socket={},uds-path={}",
            files.vhost_sock().to_string_lossy(),
            files.vsock().to_string_lossy()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            program: backend.to_owned(),
            source,
        })?;
    let mut backend_proc = Killed(child);
    while !files.vhost_sock().exists() {
        if let Ok(Some(status)) = backend_proc.0.try_wait() {
            return Err(ProbeError::Spawn {
                program: backend.to_owned(),
                source: io::Error::other(format!("it exited ({status})")),
            });
        }
        if Instant::now() >= deadline {
            return Err(ProbeError::TimedOut {
                timeout,
                stage: "waiting for the vsock backend",
                serial_tail: String::new(),
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(backend_proc)
}

enum Wait {
    TimedOut,
    Failed(ProbeError),
}

/// Waits until the guest's console shows [`ACPI_TABLES_READY`].
fn wait_ready(qemu: &mut Child, files: &WorkFiles, deadline: Instant) -> Result<(), Wait> {
    let ready = ACPI_TABLES_READY.as_bytes();
    loop {
        if let Ok(Some(status)) = qemu.try_wait() {
            return Err(Wait::Failed(ProbeError::Exited {
                status,
                qemu_log_tail: tail(&files.qemu_log()),
                serial_tail: tail(&files.serial()),
            }));
        }
        let serial = fs::read(files.serial()).unwrap_or_default();
        if serial.windows(ready.len()).any(|w| w == ready) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Wait::TimedOut);
        }
        std::thread::sleep(POLL);
    }
}

enum Read {
    Monitor(MonitorError),
    Probe(ProbeError),
}

impl From<MonitorError> for Read {
    fn from(e: MonitorError) -> Self {
        Read::Monitor(e)
    }
}

/// Reads the fw_cfg directory, then the three ACPI files.
fn read_acpi(hmp: &mut Hmp, deadline: Instant) -> Result<AcpiTables, Read> {
    hmp.fw_cfg_select(fw_cfg::FILE_DIR, deadline)?;
    let directory = |e| Read::Probe(ProbeError::Directory(e));
    let head = hmp.fw_cfg_read(4, deadline)?;
    let head = <[u8; 4]>::try_from(head.as_slice()).map_err(|_| {
        directory(DirectoryError::Length {
            got: head.len(),
            want: 4,
        })
    })?;
    let count = fw_cfg::file_count(head).map_err(directory)?;
    let entries = hmp.fw_cfg_read(fw_cfg::entries_len(count), deadline)?;
    let files = fw_cfg::parse_entries(count, &entries).map_err(directory)?;
    let mut read = |name: &'static str| -> Result<Vec<u8>, Read> {
        let file = find(&files, name).ok_or(Read::Probe(ProbeError::MissingFile(name)))?;
        hmp.fw_cfg_select(file.select, deadline)?;
        let len = usize::try_from(file.size).unwrap_or(usize::MAX);
        Ok(hmp.fw_cfg_read(len, deadline)?)
    };
    Ok(AcpiTables {
        loader: read(fw_cfg::TABLE_LOADER)?,
        rsdp: read(fw_cfg::RSDP)?,
        tables: read(fw_cfg::TABLES)?,
    })
}

fn find<'a>(files: &'a [FwCfgFile], name: &str) -> Option<&'a FwCfgFile> {
    files.iter().find(|f| f.name == name)
}

/// Waits up to `grace` for `child` to exit.
fn wait_exit(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(POLL);
    }
    None
}

/// The last lines of a log, without the terminal escapes OVMF draws with.
fn tail(path: &Path) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::from("(nothing)");
    };
    let text = strip_escapes(&String::from_utf8_lossy(&bytes));
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].join("\n")
}

/// `text` without ANSI escape sequences (ESC, `[`, parameters, a final
/// letter) and other control characters except newlines.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::argv::VSOCK_STAND_IN;

    fn image() -> BootFiles<'static> {
        BootFiles {
            firmware: Path::new("/img/ovmf.fd"),
            kernel: Path::new("/img/bzImage"),
            initrd: Path::new("/img/initramfs.cpio.lz4"),
            cmdline: "console=ttyS0 panic=-1",
        }
    }

    const SHAPE: Shape = Shape {
        vcpus: 2,
        memory_mb: 2048,
    };

    /// Every argument of the TD's argv and the probe's, side by side: the
    /// probe differs exactly where the module docs say.
    #[test]
    fn the_probe_is_the_td_with_the_documented_substitutions() {
        let sock = Path::new("/vm/vhost.sock");
        let forwards = ["tcp:127.0.0.1:8080-:80".to_owned()];
        let td = machine_argv(
            &Machine {
                shape: SHAPE,
                boot: image(),
                devices: Devices {
                    serial: Serial::Socket(Path::new("/vm/serial.sock")),
                    disk: Path::new("/vm/disk.img"),
                    host_forwards: &forwards,
                    vsock: Vsock::VhostUser { socket: sock },
                },
            },
            &Platform::Tdx {
                mr_config_id: [0; 48],
            },
        );
        let probe = probe_argv(&image(), SHAPE, Path::new("/w"), &ProbeOptions::default());
        let mut td: Vec<&str> = td.iter().map(String::as_str).collect();
        let mut probe: Vec<&str> = probe.iter().map(String::as_str).collect();
        // The TD object is the TD's alone.
        let object = td.iter().position(|a| a.starts_with("tdx-guest,")).unwrap();
        assert_eq!(td.drain(object - 1..=object).next(), Some("-object"));
        // The vsock slot: the TD's vhost-user chardev and device, the
        // probe's stand-in device.
        let td_vsock: Vec<&str> = td.drain(td.len() - 4..).collect();
        assert_eq!(
            td_vsock,
            [
                "-chardev",
                "socket,id=vc,path=/vm/vhost.sock",
                "-device",
                "vhost-user-vsock-pci,chardev=vc"
            ]
        );
        let monitor: Vec<&str> = probe.drain(probe.len() - 2..).collect();
        assert_eq!(
            monitor,
            ["-monitor", "unix:/w/monitor.sock,server=on,wait=off"]
        );
        let probe_vsock: Vec<&str> = probe.drain(probe.len() - 2..).collect();
        assert_eq!(probe_vsock, ["-device", VSOCK_STAND_IN]);
        // Everything else pairs up, argument for argument.
        assert_eq!(td.len(), probe.len(), "{td:?}\n{probe:?}");
        let differences: Vec<(&str, &str)> = td
            .iter()
            .zip(&probe)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (*a, *b))
            .collect();
        assert_eq!(
            differences,
            [
                ("kvm", "tcg"),
                ("host", "qemu64,+rdrand,+pdpe1gb,phys-bits=46"),
                (
                    "q35,confidential-guest-support=tdx,kernel-irqchip=split,\
                     memory-backend=mem,hpet=off,smm=off,pic=off",
                    "q35,memory-backend=mem,hpet=off,smm=off,pic=off"
                ),
                (
                    "console=ttyS0 panic=-1",
                    "console=ttyS0 panic=-1 dstack.probe=acpi-tables"
                ),
                (
                    "socket,id=ser0,path=/vm/serial.sock,server=on,wait=off",
                    "file,id=ser0,path=/w/serial.log"
                ),
                (
                    "file=/vm/disk.img,if=virtio,format=raw,cache=writeback",
                    "file=/w/disk.img,if=virtio,format=raw,cache=writeback"
                ),
                (
                    "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80",
                    "user,id=net0"
                ),
            ]
        );
    }

    #[test]
    fn a_vhost_user_probe_serves_vsock_from_the_work_dir() {
        let probe = probe_argv(
            &image(),
            SHAPE,
            Path::new("/w"),
            &ProbeOptions {
                vsock: ProbeVsock::VhostUser {
                    backend: "/bin/vhost-device-vsock".into(),
                },
                ..ProbeOptions::default()
            },
        );
        let at = probe
            .iter()
            .position(|a| a == "vhost-user-vsock-pci,chardev=vc");
        assert!(at.is_some(), "{probe:?}");
        assert!(probe.contains(&"socket,id=vc,path=/w/vhost.sock".to_owned()));
    }

    #[test]
    fn escapes_are_stripped_from_tails() {
        assert_eq!(
            strip_escapes("\u{1b}[2J\u{1b}[01;01HBdsDxe: loading\r\n[  1 ms] ok\n"),
            "BdsDxe: loading\n[  1 ms] ok\n"
        );
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        let mut f = File::create(&log).unwrap();
        for n in 0..40 {
            writeln!(f, "line {n}").unwrap();
        }
        let tail = tail(&log);
        assert!(tail.starts_with("line 15\n"), "{tail}");
        assert!(tail.ends_with("line 39"), "{tail}");
        assert_eq!(super::tail(&dir.path().join("missing")), "(nothing)");
    }

    /// An executable shell script standing in for QEMU.
    fn fake_qemu(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("qemu");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_qemu_that_exits_is_a_named_error_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_qemu(dir.path(), "echo 'qemu: bad option' >&2\nexit 1");
        let err = probe_acpi_tables(
            &fake,
            &image(),
            SHAPE,
            &dir.path().join("work"),
            &ProbeOptions::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ProbeError::Exited { .. }), "{text}");
        assert!(text.contains("qemu: bad option"), "{text}");
    }

    #[test]
    fn a_guest_that_never_gets_ready_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        // Writes a console line to the serial file its argv names, then hangs.
        let fake = fake_qemu(
            dir.path(),
            "for a in \"$@\"; do case $a in file,id=ser0,path=*) \
             echo 'Booting' > \"${a#file,id=ser0,path=}\";; esac; done\nexec sleep 60",
        );
        let started = Instant::now();
        let err = probe_acpi_tables(
            &fake,
            &image(),
            SHAPE,
            &dir.path().join("work"),
            &ProbeOptions {
                timeout: Duration::from_millis(600),
                ..ProbeOptions::default()
            },
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(
            matches!(
                err,
                ProbeError::TimedOut {
                    stage: "waiting for the guest",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("Booting"), "{text}");
        assert!(text.contains("QEMU was killed"), "{text}");
    }
}
