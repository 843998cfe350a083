//! The guest side: PID1 of the benchmark VM.
//!
//! Mounts devtmpfs, proc and sysfs; finds the two disks by their virtio
//! serial (`encrypted`, `plain`); formats the first with
//! [`dstack_luks2::format`] and maps it with dm-crypt as dstack-init's
//! `DmMapper` does (same target, name, uuid convention and secure flag;
//! repeated here rather than linking all of dstack-init); then runs the
//! workloads with O_DIRECT on the mapping and on the plain disk, prints the
//! lines of [`crate::report`], and powers off.
//!
//! Fairness between the two sides:
//! - the plain disk is used from the same 16 MiB offset the LUKS2 payload
//!   starts at, so both sides touch the same offsets of their backing files;
//! - before anything is timed, the whole region of both devices is written
//!   once (the backing files are sparse: the first write to a block costs
//!   the host an allocation, and reading a hole costs nothing);
//! - the two sides' runs of a workload are adjacent, and which goes first
//!   alternates by round and by workload ([`Config::encrypted_first`]);
//! - everything is O_DIRECT (QEMU opens the files with `cache=none`, so
//!   the host page cache is bypassed too), and the page cache is dropped
//!   before each run anyway;
//! - the random offsets come from the same seed on both sides.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::reboot::{RebootMode, reboot};
use rand_core::RngCore;

use crate::config::{Config, RAND_BLOCK, RAND_BLOCK_LEN, SEQ_BLOCK, SEQ_BLOCK_LEN};
use crate::report::{Run, Side, SideResult, Workload};
use crate::rng::{SplitMix64, workload_seed};
use crate::sysinfo;

/// The virtio serial of the disk that gets LUKS2 (`-drive ...,serial=`).
pub const ENCRYPTED_SERIAL: &str = "encrypted";
/// The virtio serial of the plain disk.
pub const PLAIN_SERIAL: &str = "plain";
/// The device-mapper name, the guest's (`dstack_init::disk::MAPPED_NAME`).
pub const MAPPED_NAME: &str = "dstack_data_disk";

/// A failure, with what was being done.
#[derive(Debug)]
pub struct Failure(String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{}: {e}", what())))
    }
}

/// Runs the benchmark, prints `DONE` or `FAILED <why>`, and powers off.
/// Returns only if powering off fails (PID1 exiting then panics the
/// kernel, which also ends the VM under `-no-reboot`).
pub fn main_as_pid1() -> ExitCode {
    let outcome = run();
    match &outcome {
        Ok(()) => println!("DONE"),
        Err(e) => println!("FAILED {e}"),
    }
    nix::unistd::sync();
    let e = reboot(RebootMode::RB_POWER_OFF).unwrap_err();
    eprintln!("disk-bench: power off failed: {e}");
    ExitCode::FAILURE
}

fn mount(fstype: &str, target: &str) -> Result<(), Failure> {
    std::fs::create_dir_all(target).context(|| format!("mkdir {target}"))?;
    match nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID,
        None::<&str>,
    ) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(Failure(format!("mount {fstype} at {target}: {e}"))),
    }
}

/// Points stdout and stderr at `/dev/console` (the kernel gives PID1 no
/// console when the initramfs has no `/dev/console`).
fn attach_console() -> Result<(), Failure> {
    let console = OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .context(|| "open /dev/console".into())?;
    for fd in [1, 2] {
        nix::unistd::dup2(console.as_raw_fd(), fd).context(|| format!("dup2 onto {fd}"))?;
    }
    Ok(())
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The `/dev/vdX` whose virtio serial is `serial`, waiting up to 5 s for
/// the driver to probe it.
fn disk_with_serial(serial: &str) -> Result<PathBuf, Failure> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("vd")
                    && read_trimmed(entry.path().join("serial")).as_deref() == Some(serial)
                {
                    let node = PathBuf::from("/dev").join(&name);
                    if node.exists() {
                        return Ok(node);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(Failure(format!(
                "no virtio disk with serial {serial:?} (QEMU needs -drive ...,if=virtio,serial={serial})"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn size_of(device: &Path) -> Result<u64, Failure> {
    File::open(device)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .context(|| format!("size of {}", device.display()))
}

fn wait_for(node: &Path) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node.exists() {
        if Instant::now() >= deadline {
            return Err(Failure(format!("{} did not appear", node.display())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Formats `device` with a fresh LUKS2 header under a random passphrase
/// (the guest's is the hex of a 32-byte disk key) and maps its payload
/// as dstack-init's `DmMapper::map` does. Returns the mapping's node.
fn format_and_map(device: &Path) -> Result<PathBuf, Failure> {
    let mut key = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut key);
    let passphrase: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .context(|| format!("open {}", device.display()))?;
    let volume = dstack_luks2::format(&mut file, passphrase.as_bytes(), &mut rand_core::OsRng)
        .context(|| format!("LUKS2 format of {}", device.display()))?;
    file.sync_all()
        .context(|| format!("sync {}", device.display()))?;
    drop(file);

    let size = size_of(device)?;
    let segment = volume.segment();
    let payload = dstack_devmapper::LuksPayload {
        luks_uuid: volume.uuid(),
        cipher: segment.cipher,
        key: volume.key(),
        offset: segment.offset,
        sector_size: segment.sector_size,
    };
    let number = dstack_devmapper::map_luks(MAPPED_NAME, device, size, &payload)
        .context(|| format!("dm-crypt mapping of {}", device.display()))?;
    let node = number.node();
    wait_for(&node)?;
    println!(
        "INFO luks2 cipher={} key_bits={} sector_size={} payload_offset={}",
        segment.cipher,
        volume.key().len() * 8,
        segment.sector_size,
        segment.offset
    );
    Ok(node)
}

/// A buffer whose start is 4 KiB-aligned, as O_DIRECT wants; carved out of
/// a larger `Vec` so no unsafe allocation is needed.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        const ALIGN: usize = 4096;
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "a u8 pointer can always be aligned");
        Self {
            storage,
            start,
            len,
        }
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.storage[self.start..self.start + len.min(self.len)]
    }

    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len.min(self.len)]
    }
}

/// One device under test.
struct Device {
    side: Side,
    path: PathBuf,
    file: File,
    /// Where the region starts on `file`.
    base: u64,
}

impl Device {
    fn open(side: Side, path: &Path, base: u64) -> Result<Self, Failure> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
            .context(|| format!("open {} with O_DIRECT", path.display()))?;
        Ok(Self {
            side,
            path: path.to_owned(),
            file,
            base,
        })
    }

    fn io_error(&self, what: &str, offset: u64, e: std::io::Error) -> Failure {
        Failure(format!(
            "{what} at {offset} on {} ({}): {e}",
            self.path.display(),
            self.side.name()
        ))
    }

    /// Writes `bytes` from the region's start in 1 MiB blocks, then
    /// `fdatasync`.
    fn seq_write(&self, bytes: u64, buf: &AlignedBuf) -> Result<u64, Failure> {
        let block = buf.bytes(SEQ_BLOCK_LEN);
        let mut ops = 0;
        for offset in (0..bytes).step_by(SEQ_BLOCK_LEN) {
            let at = self.base + offset;
            self.file
                .write_all_at(block, at)
                .map_err(|e| self.io_error("write", at, e))?;
            ops += 1;
        }
        self.file
            .sync_data()
            .map_err(|e| self.io_error("fdatasync", 0, e))?;
        Ok(ops)
    }

    /// Reads `bytes` from the region's start in 1 MiB blocks.
    fn seq_read(&self, bytes: u64, buf: &mut AlignedBuf) -> Result<u64, Failure> {
        let mut ops = 0;
        for offset in (0..bytes).step_by(SEQ_BLOCK_LEN) {
            let at = self.base + offset;
            self.file
                .read_exact_at(buf.bytes_mut(SEQ_BLOCK_LEN), at)
                .map_err(|e| self.io_error("read", at, e))?;
            ops += 1;
        }
        Ok(ops)
    }

    /// `ops` 4 KiB writes or reads at random 4 KiB slots of the region;
    /// writes end with `fdatasync`.
    fn random(
        &self,
        write: bool,
        ops: u64,
        slots: u64,
        seed: u64,
        buf: &mut AlignedBuf,
    ) -> Result<u64, Failure> {
        let mut rng = SplitMix64::new(seed);
        for _ in 0..ops {
            let at = self.base + rng.below(slots) * RAND_BLOCK;
            let result = if write {
                self.file.write_all_at(buf.bytes(RAND_BLOCK_LEN), at)
            } else {
                self.file.read_exact_at(buf.bytes_mut(RAND_BLOCK_LEN), at)
            };
            result.map_err(|e| self.io_error(if write { "write" } else { "read" }, at, e))?;
        }
        if write {
            self.file
                .sync_data()
                .map_err(|e| self.io_error("fdatasync", 0, e))?;
        }
        Ok(ops)
    }

    fn measure(
        &self,
        workload: Workload,
        round: u32,
        config: &Config,
        buf: &mut AlignedBuf,
    ) -> Result<Run, Failure> {
        let index = Workload::ALL
            .iter()
            .position(|w| *w == workload)
            .unwrap_or_default();
        let seed = workload_seed(config.seed, index);
        let started = Instant::now();
        let ops = match workload {
            Workload::SeqWrite => self.seq_write(config.seq, buf)?,
            Workload::SeqRead => self.seq_read(config.seq, buf)?,
            Workload::RandWrite => self.random(true, config.ops, config.rand_slots(), seed, buf)?,
            Workload::RandRead => self.random(false, config.ops, config.rand_slots(), seed, buf)?,
        };
        let secs = started.elapsed().as_secs_f64();
        let block = if workload.is_random() {
            RAND_BLOCK
        } else {
            SEQ_BLOCK
        };
        Ok(Run {
            round,
            side: self.side,
            workload,
            bytes: ops * block,
            ops,
            secs: secs.max(1e-9),
        })
    }
}

/// Empties the page cache (O_DIRECT bypasses it; this is belt and braces).
fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn info_lines(config: &Config) {
    let kernel = read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    println!(
        "INFO kernel={kernel} cpus={cpus} cpu_aes={} cpu_avx2={} cpu_vaes={} cpu_vpclmulqdq={}",
        sysinfo::cpu_has_flag(&cpuinfo, "aes"),
        sysinfo::cpu_has_flag(&cpuinfo, "avx2"),
        sysinfo::cpu_has_flag(&cpuinfo, "vaes"),
        sysinfo::cpu_has_flag(&cpuinfo, "vpclmulqdq"),
    );
    println!("INFO config {}", config.to_cmdline());
}

fn run() -> Result<(), Failure> {
    mount("devtmpfs", "/dev")?;
    // Output before this goes nowhere; the console is the only channel.
    attach_console()?;
    mount("proc", "/proc")?;
    mount("sysfs", "/sys")?;
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").context(|| "read /proc/cmdline".into())?;
    let config = Config::from_cmdline(&cmdline).context(|| "kernel command line".into())?;
    info_lines(&config);

    let encrypted_disk = disk_with_serial(ENCRYPTED_SERIAL)?;
    let plain_disk = disk_with_serial(PLAIN_SERIAL)?;
    let (enc_size, plain_size) = (size_of(&encrypted_disk)?, size_of(&plain_disk)?);
    if enc_size != plain_size {
        return Err(Failure(format!(
            "the disks differ in size ({} is {enc_size} bytes, {} is {plain_size}): give QEMU two equal disks",
            encrypted_disk.display(),
            plain_disk.display()
        )));
    }
    let payload = enc_size.saturating_sub(dstack_luks2::DATA_OFFSET);
    config
        .validate(payload)
        .context(|| "configuration".into())?;
    println!(
        "INFO disks encrypted={} plain={} size={enc_size} payload={payload}",
        encrypted_disk.display(),
        plain_disk.display()
    );

    let mapped = format_and_map(&encrypted_disk)?;
    let proc_crypto = std::fs::read_to_string("/proc/crypto").unwrap_or_default();
    match sysinfo::crypto_driver(&proc_crypto, "xts(aes)") {
        Some((driver, priority)) => {
            println!("INFO xts_aes_driver={driver} priority={priority}");
        }
        None => println!("INFO xts_aes_driver=unknown"),
    }
    let devices = [
        Device::open(Side::Encrypted, &mapped, 0)?,
        // The same offsets of the backing file as the LUKS2 payload.
        Device::open(Side::Plain, &plain_disk, dstack_luks2::DATA_OFFSET)?,
    ];

    let mut buf = AlignedBuf::new(SEQ_BLOCK_LEN);
    SplitMix64::new(config.seed).fill(buf.bytes_mut(SEQ_BLOCK_LEN));

    // Prefill: the whole region once on both sides, timed but not part
    // of the result (first writes to a sparse file pay for allocation).
    for device in &devices {
        drop_caches();
        let started = Instant::now();
        device.seq_write(config.region, &buf)?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        println!(
            "INFO prefill side={} bytes={} secs={secs:.3} mib_s={:.2}",
            device.side.name(),
            config.region,
            config.region as f64 / 1_048_576.0 / secs
        );
    }

    let mut runs = Vec::new();
    for round in 0..config.rounds {
        for (index, workload) in Workload::ALL.into_iter().enumerate() {
            let order = if Config::encrypted_first(round, index) {
                [&devices[0], &devices[1]]
            } else {
                [&devices[1], &devices[0]]
            };
            for device in order {
                drop_caches();
                let run = device.measure(workload, round + 1, &config, &mut buf)?;
                println!("{}", run.line());
                runs.push(run);
            }
        }
    }
    for side in Side::ALL {
        let result = SideResult::summarize(side, &runs)
            .ok_or_else(|| Failure(format!("no runs for the {} side", side.name())))?;
        println!("{}", result.line());
    }
    drop(devices);
    let _ = dstack_devmapper::Control::open().and_then(|control| control.remove(MAPPED_NAME));
    Ok(())
}
