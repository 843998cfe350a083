//! The TDX backend: quotes through configfs-tsm, RTMR3 extension through the
//! kernel's TSM measurement sysfs, the boot event log from the CCEL ACPI table
//! and the runtime event log from a file.
//!
//! configfs-tsm is a handful of file operations, written here directly (the
//! `configfs-tsm` crate is AGPL).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::guest::{GuestPlatform, RUNTIME_LOG, TeeDevice};
use super::{PlatformError, PlatformKind, io};
use crate::eventlog::{Event, parse_ccel};
use crate::rtmr::Measurement;

/// Kernel and file locations the TDX backend uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxPaths {
    /// configfs-tsm report directory.
    pub tsm_report: PathBuf,
    /// TSM measurement sysfs directory holding `rtmr3:sha384`.
    pub rtmr_sysfs: PathBuf,
    /// The CCEL ACPI table data.
    pub ccel: PathBuf,
    /// The runtime (RTMR3) event log file.
    pub runtime_log: PathBuf,
}

impl Default for TdxPaths {
    fn default() -> Self {
        Self {
            tsm_report: "/sys/kernel/config/tsm/report".into(),
            rtmr_sysfs: "/sys/class/misc/tdx_guest/measurements".into(),
            ccel: "/sys/firmware/acpi/tables/data/CCEL".into(),
            runtime_log: RUNTIME_LOG.into(),
        }
    }
}

/// Intel TDX as the kernel exposes it: the device under [`TdxPlatform`].
#[derive(Debug)]
pub struct TdxDevice {
    paths: TdxPaths,
    next_entry: AtomicU64,
}

/// A TD on Intel TDX hardware.
pub type TdxPlatform = GuestPlatform<TdxDevice>;

impl TdxPlatform {
    /// A TDX platform using the standard kernel paths.
    pub fn tdx() -> Self {
        Self::with_paths(TdxPaths::default())
    }

    /// A TDX platform using other paths (tests, unusual mounts).
    pub fn with_paths(paths: TdxPaths) -> Self {
        let runtime_log = paths.runtime_log.clone();
        let device = TdxDevice {
            paths,
            next_entry: AtomicU64::new(0),
        };
        GuestPlatform::new(device, runtime_log)
    }
}

impl TdxDevice {
    /// Whether this machine is a TD: the firmware left a CCEL ACPI table
    /// (only TDX firmware does), or the TDX guest device exists.
    pub fn is_available() -> bool {
        Path::new("/sys/firmware/acpi/tables/CCEL").exists() || Path::new("/dev/tdx_guest").exists()
    }
}

fn read_trimmed(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn read_generation(entry: &Path) -> Result<u64, PlatformError> {
    let path = entry.join("generation");
    let text = read_trimmed(&path).map_err(io("read generation", &path))?;
    text.parse().map_err(|_| PlatformError::Io {
        operation: "parse generation",
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text),
    })
}

impl TeeDevice for TdxDevice {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Tdx
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError> {
        let n = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .paths
            .tsm_report
            .join(format!("dstack-{}-{n}", std::process::id()));
        match std::fs::create_dir(&entry) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create report entry", &entry)(e)),
        }
        let result = (|| {
            let provider_path = entry.join("provider");
            let provider =
                read_trimmed(&provider_path).map_err(io("read provider", &provider_path))?;
            if provider != "tdx_guest" {
                return Err(PlatformError::WrongProvider(provider));
            }
            let before = read_generation(&entry)?;
            let inblob = entry.join("inblob");
            OpenOptions::new()
                .write(true)
                .open(&inblob)
                .and_then(|mut f| f.write_all(report_data))
                .map_err(io("write inblob", &inblob))?;
            let outblob = entry.join("outblob");
            let mut quote = Vec::new();
            File::open(&outblob)
                .and_then(|mut f| f.read_to_end(&mut quote))
                .map_err(io("read outblob", &outblob))?;
            // One write must advance the generation by exactly one; anything
            // else means another writer's inblob produced what we read.
            let after = read_generation(&entry)?;
            if after != before + 1 {
                return Err(PlatformError::ReportRace { before, after });
            }
            crate::quote::Quote::parse(&quote)?;
            Ok(quote)
        })();
        // configfs entries are removed with rmdir; the attribute files go with it.
        let _ = std::fs::remove_dir(&entry);
        result
    }

    fn extend_rtmr3(&self, digest: &Measurement) -> Result<(), PlatformError> {
        let register = self.paths.rtmr_sysfs.join("rtmr3:sha384");
        if !register.exists() {
            return Err(PlatformError::RtmrExtendUnsupported {
                sysfs: register.display().to_string(),
            });
        }
        OpenOptions::new()
            .write(true)
            .open(&register)
            .and_then(|mut f| f.write_all(digest))
            .map_err(io("extend RTMR3", &register))
    }

    fn boot_events(&self) -> Result<Vec<Event>, PlatformError> {
        let ccel = std::fs::read(&self.paths.ccel).map_err(io("read CCEL", &self.paths.ccel))?;
        Ok(parse_ccel(&ccel)?)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::thread;

    use super::*;
    use crate::Platform;
    use crate::eventlog::RuntimeEvent;
    use crate::rtmr::Rtmrs;
    use crate::testdata::read_testdata;

    fn mkfifo(path: &Path) {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }

    fn paths(root: &Path) -> TdxPaths {
        TdxPaths {
            tsm_report: root.join("tsm/report"),
            rtmr_sysfs: root.join("measurements"),
            ccel: root.join("CCEL"),
            runtime_log: root.join("log/runtime_events.log"),
        }
    }

    /// Plays the kernel for one configfs-tsm report: `inblob` and `outblob`
    /// are FIFOs, so the order of operations is the kernel's: the caller's
    /// write completes, the generation advances, then the quote is readable.
    fn fake_tsm_kernel(entry: PathBuf, provider: &str, bump: u64) -> thread::JoinHandle<Vec<u8>> {
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(entry.join("generation"), "7\n").unwrap();
        mkfifo(&entry.join("inblob"));
        mkfifo(&entry.join("outblob"));
        thread::spawn(move || {
            let mut inblob = Vec::new();
            File::open(entry.join("inblob"))
                .unwrap()
                .read_to_end(&mut inblob)
                .unwrap();
            std::fs::write(entry.join("generation"), format!("{}\n", 7 + bump)).unwrap();
            let mut quote = read_testdata("tdx_quote");
            // The fake "quotes" the caller's report data so the test can see it went through.
            let offset = crate::quote::HEADER_LEN + crate::quote::TD_REPORT10_LEN - 64;
            quote[offset..offset + 64].copy_from_slice(&inblob);
            File::options()
                .write(true)
                .open(entry.join("outblob"))
                .unwrap()
                .write_all(&quote)
                .unwrap();
            inblob
        })
    }

    #[test]
    fn quote_goes_through_configfs_tsm() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let entry = p
            .tsm_report
            .join(format!("dstack-{}-0", std::process::id()));
        let kernel = fake_tsm_kernel(entry.clone(), "tdx_guest", 1);
        let platform = TdxPlatform::with_paths(p);
        let report_data = [0xab; 64];
        let quote = platform.quote(&report_data).unwrap();
        assert_eq!(kernel.join().unwrap(), report_data.to_vec());
        let parsed = crate::quote::Quote::parse(&quote).unwrap();
        assert_eq!(parsed.report_data(), &report_data);
    }

    #[test]
    fn concurrent_writer_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let entry = p
            .tsm_report
            .join(format!("dstack-{}-0", std::process::id()));
        let kernel = fake_tsm_kernel(entry, "tdx_guest", 2);
        let err = TdxPlatform::with_paths(p).quote(&[1; 64]).unwrap_err();
        kernel.join().unwrap();
        assert!(
            matches!(
                err,
                PlatformError::ReportRace {
                    before: 7,
                    after: 9
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn non_tdx_provider_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let entry = p
            .tsm_report
            .join(format!("dstack-{}-0", std::process::id()));
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("provider"), "sev_guest\n").unwrap();
        let err = TdxPlatform::with_paths(p).quote(&[0; 64]).unwrap_err();
        assert!(matches!(err, PlatformError::WrongProvider(ref p) if p == "sev_guest"));
    }

    #[test]
    fn emit_event_extends_then_logs() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let platform = TdxPlatform::with_paths(p.clone());
        let event = RuntimeEvent {
            name: "compose-hash".into(),
            payload: vec![0x11; 32],
        };
        // Without the measurement sysfs the extension is refused and nothing is logged.
        let err = platform.emit_event(&event).unwrap_err();
        assert!(matches!(err, PlatformError::RtmrExtendUnsupported { .. }));
        assert_eq!(std::fs::read_to_string(&p.runtime_log).unwrap(), "");

        std::fs::create_dir_all(&p.rtmr_sysfs).unwrap();
        std::fs::write(p.rtmr_sysfs.join("rtmr3:sha384"), b"").unwrap();
        std::fs::write(&p.ccel, read_testdata("ccel.bin")).unwrap();
        platform.emit_event(&event).unwrap();
        assert_eq!(
            std::fs::read(p.rtmr_sysfs.join("rtmr3:sha384")).unwrap(),
            event.digest().to_vec()
        );
        let log = platform.event_log().unwrap();
        let last = log.last().unwrap();
        assert_eq!(last, &event.to_event());
        let mut rtmr3 = Rtmrs::default();
        rtmr3.extend(3, &event.digest()).unwrap();
        assert_eq!(crate::eventlog::replay(&log).unwrap().0[3], rtmr3.0[3]);
    }
}
