//! Which accelerator QEMU runs guests with, and probing what the host offers.
//!
//! `kvm-ioctls` is used only here, to ask the kernel whether KVM really works
//! before we pick it (DESIGN §7): a `/dev/kvm` node alone proves nothing — on
//! this development machine it exists, but the CPU has no vmx/svm and a KVM
//! guest hangs after "Booting from ROM" (DESIGN §6).

use std::fmt;
use std::fs;
use std::str::FromStr;

use kvm_ioctls::{Cap, Kvm};

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// QEMU's software emulation (no TEE, works everywhere; the tests' choice).
    Tcg,
    /// Hardware virtualisation without a TEE.
    Kvm,
    /// Intel TDX confidential guests (boot through TDVF, `-bios`).
    Tdx,
}

impl Accel {
    /// The name used on the command line and in `GET /v1/version`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Tdx => "tdx",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator asked for with `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// The best the host supports: TDX, else KVM, else TCG.
    Auto,
    /// Exactly this accelerator; refused at start-up if the host lacks it.
    Exactly(Accel),
}

impl FromStr for AccelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "tcg" => Ok(AccelChoice::Exactly(Accel::Tcg)),
            "kvm" => Ok(AccelChoice::Exactly(Accel::Kvm)),
            "tdx" => Ok(AccelChoice::Exactly(Accel::Tdx)),
            other => Err(format!(
                "unknown accelerator {other:?} (tcg, kvm, tdx or auto)"
            )),
        }
    }
}

/// What the host offers, as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    /// `Ok` when KVM can create VMs; otherwise why not.
    pub kvm: Result<(), String>,
    /// Whether the KVM module has TDX enabled.
    pub tdx: bool,
}

/// Why the requested accelerator cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    /// KVM (or TDX, which needs KVM) was asked for but does not work here.
    #[error("--accel {wanted} needs KVM, which this host cannot use: {reason}")]
    NoKvm {
        /// The accelerator asked for.
        wanted: Accel,
        /// What the probe found.
        reason: String,
    },
    /// TDX was asked for but the KVM module has it off.
    #[error("--accel tdx needs /sys/module/kvm_intel/parameters/tdx = Y")]
    NoTdx,
}

/// Turns the operator's choice into an accelerator this host supports.
pub fn resolve(choice: AccelChoice, host: &HostSupport) -> Result<Accel, AccelError> {
    match choice {
        AccelChoice::Auto => Ok(match (&host.kvm, host.tdx) {
            (Ok(()), true) => Accel::Tdx,
            (Ok(()), false) => Accel::Kvm,
            (Err(_), _) => Accel::Tcg,
        }),
        AccelChoice::Exactly(Accel::Tcg) => Ok(Accel::Tcg),
        AccelChoice::Exactly(wanted) => {
            if let Err(reason) = &host.kvm {
                return Err(AccelError::NoKvm {
                    wanted,
                    reason: reason.clone(),
                });
            }
            if wanted == Accel::Tdx && !host.tdx {
                return Err(AccelError::NoTdx);
            }
            Ok(wanted)
        }
    }
}

/// Probes this host's KVM and TDX support.
pub fn probe_host() -> HostSupport {
    let kvm = probe_kvm();
    let tdx = kvm.is_ok()
        && fs::read_to_string("/sys/module/kvm_intel/parameters/tdx")
            .is_ok_and(|v| matches!(v.trim(), "Y" | "y" | "1"));
    HostSupport { kvm, tdx }
}

fn probe_kvm() -> Result<(), String> {
    // Checked first because a nested or emulated /dev/kvm can open and even
    // create VMs on a CPU without vmx/svm, yet never run a vCPU (DESIGN §6).
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu_has_virtualisation(&cpuinfo) {
        return Err("the CPU has no vmx or svm flag".into());
    }
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // KVM_GET_API_VERSION has been 12 since Linux 2.6.22; anything else is not
    // the KVM that QEMU expects.
    if kvm.get_api_version() != 12 {
        return Err(format!(
            "unexpected KVM API version {}",
            kvm.get_api_version()
        ));
    }
    if !kvm.check_extension(Cap::UserMemory) {
        return Err("KVM lacks KVM_CAP_USER_MEMORY".into());
    }
    kvm.create_vm()
        .map(drop)
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))
}

/// Whether a `/proc/cpuinfo` text lists the vmx (Intel) or svm (AMD) flag.
fn cpu_has_virtualisation(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(kvm: bool, tdx: bool) -> HostSupport {
        HostSupport {
            kvm: if kvm { Ok(()) } else { Err("no vmx".into()) },
            tdx,
        }
    }

    #[test]
    fn auto_picks_the_best_available() {
        assert_eq!(
            resolve(AccelChoice::Auto, &host(false, false)),
            Ok(Accel::Tcg)
        );
        assert_eq!(
            resolve(AccelChoice::Auto, &host(true, false)),
            Ok(Accel::Kvm)
        );
        assert_eq!(
            resolve(AccelChoice::Auto, &host(true, true)),
            Ok(Accel::Tdx)
        );
    }

    #[test]
    fn explicit_choices_are_checked() {
        let tcg = AccelChoice::Exactly(Accel::Tcg);
        assert_eq!(resolve(tcg, &host(false, false)), Ok(Accel::Tcg));
        let kvm = AccelChoice::Exactly(Accel::Kvm);
        assert!(matches!(
            resolve(kvm, &host(false, false)),
            Err(AccelError::NoKvm { .. })
        ));
        let tdx = AccelChoice::Exactly(Accel::Tdx);
        assert_eq!(resolve(tdx, &host(true, false)), Err(AccelError::NoTdx));
        assert_eq!(resolve(tdx, &host(true, true)), Ok(Accel::Tdx));
    }

    #[test]
    fn parses_choices() {
        assert_eq!("auto".parse(), Ok(AccelChoice::Auto));
        assert_eq!("kvm".parse(), Ok(AccelChoice::Exactly(Accel::Kvm)));
        assert!("hvf".parse::<AccelChoice>().is_err());
    }

    #[test]
    fn reads_cpu_flags() {
        assert!(cpu_has_virtualisation("flags\t\t: fpu vme vmx sse\n"));
        assert!(cpu_has_virtualisation("flags\t\t: fpu svm\n"));
        assert!(!cpu_has_virtualisation("flags\t\t: fpu vme sse vmxon\n"));
    }

    #[test]
    fn this_host_without_vmx_resolves_to_tcg() {
        // DESIGN §6: this machine's CPU has no vmx/svm. On a host that has
        // them the probe may legitimately say otherwise, so only check the
        // direction that must hold everywhere.
        let support = probe_host();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if !cpu_has_virtualisation(&cpuinfo) {
            assert!(support.kvm.is_err());
            assert_eq!(resolve(AccelChoice::Auto, &support), Ok(Accel::Tcg));
        }
    }
}
