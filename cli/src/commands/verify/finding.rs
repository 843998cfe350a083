//! What `dstack verify` can find wrong, as data: each finding names the
//! register or event, the expected and actual values, the input that most
//! likely differs, and what to compare next. `Display` is the one place
//! those words live.

use std::fmt;

use dstack_attest::VerifyError;
use dstack_attest::eventlog::names;

use super::checks::CheckKind;
use crate::commands::error_chain;

/// A boot-time register the image predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootRegister {
    /// The firmware measurement.
    Mrtd,
    /// Firmware configuration: TD HOB, ACPI tables.
    Rtmr0,
    /// The kernel.
    Rtmr1,
    /// The kernel command line and the initrd.
    Rtmr2,
}

impl BootRegister {
    /// All four, in check order.
    pub(crate) const ALL: [Self; 4] = [Self::Mrtd, Self::Rtmr0, Self::Rtmr1, Self::Rtmr2];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Mrtd => "MRTD",
            Self::Rtmr0 => "RTMR0",
            Self::Rtmr1 => "RTMR1",
            Self::Rtmr2 => "RTMR2",
        }
    }

    pub(crate) fn check(self) -> CheckKind {
        match self {
            Self::Mrtd => CheckKind::Mrtd,
            Self::Rtmr0 => CheckKind::Rtmr0,
            Self::Rtmr1 => CheckKind::Rtmr1,
            Self::Rtmr2 => CheckKind::Rtmr2,
        }
    }

    /// The input that most likely differs when this register does.
    fn cause(self) -> &'static str {
        match self {
            Self::Mrtd => {
                "the firmware differs from the image's ovmf.fd (or the TDX module's page-add order: the QEMU version)"
            }
            Self::Rtmr0 => {
                "the VM shape (vCPUs/memory) or the QEMU version/machine differs (ACPI tables)"
            }
            Self::Rtmr1 => {
                "the kernel differs (or the memory size / initrd size QEMU patched into its header)"
            }
            Self::Rtmr2 => "the kernel command line or the initrd differs",
        }
    }

    /// What to compare next.
    fn next(self) -> &'static str {
        match self {
            Self::Mrtd => {
                "compare the host's firmware file with the image's ovmf.fd (sha256sum.txt), then the host's QEMU version"
            }
            Self::Rtmr0 => {
                "check the VM's vCPUs and memory (`dstack vm info`) against --vcpu and --memory, then the host's QEMU version and machine type"
            }
            Self::Rtmr1 => {
                "compare the kernel the host boots with the image's bzImage (sha256sum.txt), then --memory"
            }
            Self::Rtmr2 => {
                "compare the VM's kernel command line with metadata.json's cmdline, and its initrd with the image's (sha256sum.txt)"
            }
        }
    }
}

/// Where the report_data a quote must bind comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingSource {
    /// The RA-TLS certificate's key: SHA-512("ratls-cert:" ‖ SPKI).
    Certificate,
    /// `--report-data`: the verifier's own nonce or key hash.
    Given,
}

/// How a measured instance-id disagrees with the inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InstanceIdProblem {
    /// Not 20 bytes (and not empty).
    Length,
    /// Empty, but the compose file does not set `no_instance_id`.
    Missing,
    /// Present, but the compose file sets `no_instance_id`.
    Unexpected,
    /// Not the `--instance-id` given.
    Differs {
        /// The pinned instance-id.
        expected: [u8; 20],
    },
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// The quote's signature, certificate chain, collateral or TCB was refused.
    QuoteNotTrusted(VerifyError),
    /// The quote binds other report_data than the certificate key (or nonce).
    ReportData {
        /// What the binding requires.
        expected: [u8; 64],
        /// What the quote carries.
        actual: [u8; 64],
        /// Where `expected` comes from.
        source: BindingSource,
    },
    /// A boot register differs from the image's prediction.
    Register {
        /// Which one.
        register: BootRegister,
        /// The prediction.
        expected: [u8; 48],
        /// The quote's value.
        actual: [u8; 48],
    },
    /// A runtime event's digest does not match its name and payload.
    EventAltered {
        /// Its index in the event log.
        index: usize,
        /// Its name.
        name: String,
    },
    /// The event log cannot be replayed at all.
    EventLogInvalid {
        /// Why.
        reason: String,
    },
    /// The RTMR3 events replay to another value than the quote's RTMR3.
    Rtmr3Replay {
        /// The quote's RTMR3.
        quoted: [u8; 48],
        /// What the log replays to.
        replayed: [u8; 48],
        /// How many RTMR3 events were replayed.
        events: usize,
    },
    /// The boot-time RTMR3 events are not in dstack's order.
    EventOrder {
        /// Index in the event log of the event found (or the log's length).
        index: usize,
        /// The event dstack measures there.
        expected: &'static str,
        /// The event found there (`None`: the log ends).
        found: Option<String>,
    },
    /// The measured compose-hash is not the compose file's.
    ComposeHash {
        /// SHA-256 of the compose file given.
        file_sha256: [u8; 32],
        /// The `compose-hash` payload.
        measured: Vec<u8>,
    },
    /// The measured app-id is not the expected one.
    AppId {
        /// `--app-id`, or the compose file's default.
        expected: [u8; 20],
        /// The `app-id` payload.
        measured: Vec<u8>,
        /// Whether `expected` came from `--app-id`.
        pinned: bool,
    },
    /// The measured instance-id disagrees with the compose file or `--instance-id`.
    InstanceId {
        /// The `instance-id` payload.
        measured: Vec<u8>,
        /// How.
        problem: InstanceIdProblem,
    },
    /// The measured key provider is not the one the compose file asks for.
    KeyProvider {
        /// What the compose file asks for, in words.
        expected: String,
        /// The `key-provider` payload (text).
        measured: String,
    },
    /// The KMS vouched for another OS image than the one given.
    OsImageHash {
        /// The image's os_image_hash (hex).
        expected: String,
        /// The `os-image-hash` payload.
        measured: Vec<u8>,
    },
    /// The TD's mr_config_id does not name this app.
    MrConfigId {
        /// What this compose file gives for the quote's version (`None`:
        /// the version is unknown).
        expected: Option<[u8; 48]>,
        /// The quote's mr_config_id.
        actual: [u8; 48],
    },
}

const SAME_QUOTE: &str = "the event log does not belong to this quote (an event was added, removed or changed). Next: take the quote and its event log from one answer (one /GetQuote response, or the app's RA-TLS certificate with --url)";

fn measured_hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "nothing".into()
    } else {
        hex::encode(bytes)
    }
}

impl Finding {
    /// The check that found it.
    pub(crate) fn check(&self) -> CheckKind {
        match self {
            Self::QuoteNotTrusted(_) => CheckKind::Quote,
            Self::ReportData { .. } => CheckKind::ReportData,
            Self::Register { register, .. } => register.check(),
            Self::EventAltered { .. } | Self::EventLogInvalid { .. } | Self::Rtmr3Replay { .. } => {
                CheckKind::Rtmr3
            }
            Self::EventOrder { .. } => CheckKind::EventOrder,
            Self::ComposeHash { .. } => CheckKind::ComposeHash,
            Self::AppId { .. } => CheckKind::AppId,
            Self::InstanceId { .. } => CheckKind::InstanceId,
            Self::KeyProvider { .. } => CheckKind::KeyProvider,
            Self::OsImageHash { .. } => CheckKind::OsImageHash,
            Self::MrConfigId { .. } => CheckKind::MrConfigId,
        }
    }

    /// A stable name for scripts (`--json`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::QuoteNotTrusted(_) => "quote-not-trusted",
            Self::ReportData { .. } => "report-data-mismatch",
            Self::Register { register, .. } => match register {
                BootRegister::Mrtd => "mrtd-mismatch",
                BootRegister::Rtmr0 => "rtmr0-mismatch",
                BootRegister::Rtmr1 => "rtmr1-mismatch",
                BootRegister::Rtmr2 => "rtmr2-mismatch",
            },
            Self::EventAltered { .. } => "event-altered",
            Self::EventLogInvalid { .. } => "event-log-invalid",
            Self::Rtmr3Replay { .. } => "rtmr3-replay-mismatch",
            Self::EventOrder { .. } => "event-order",
            Self::ComposeHash { .. } => "compose-hash-mismatch",
            Self::AppId { .. } => "app-id-mismatch",
            Self::InstanceId { .. } => "instance-id-mismatch",
            Self::KeyProvider { .. } => "key-provider-mismatch",
            Self::OsImageHash { .. } => "os-image-hash-mismatch",
            Self::MrConfigId { .. } => "mr-config-id-mismatch",
        }
    }
}

/// Why a quote was not trusted, and what would help.
fn quote_hint(err: &VerifyError) -> &'static str {
    match err {
        VerifyError::UntrustedChain(_) => {
            "The quote is not signed by a trusted TDX root (or it is a simulated-TEE quote and the sim root was not given: --sim-root FILE)"
        }
        VerifyError::QuoteSignatureInvalid
        | VerifyError::QeReportSignatureInvalid
        | VerifyError::QeReportBindingInvalid => {
            "The quote was changed after it was signed: its registers cannot be believed"
        }
        VerifyError::CollateralExpired { .. } | VerifyError::CollateralNotYetValid { .. } => {
            "Fetch fresh collateral (--pccs URL) or verify at a time inside its window (--at)"
        }
        VerifyError::CollateralSignatureInvalid(_)
        | VerifyError::CollateralMalformed(_)
        | VerifyError::QeIdentityMismatch(_) => {
            "The collateral does not belong to this quote's root or platform (e.g. another host's sim PCCS)"
        }
        VerifyError::NoMatchingTcbLevel { .. } | VerifyError::StatusRejected { .. } => {
            "The platform's TCB (microcode, firmware, TDX module) is not accepted: update the host, or accept the status with --accept"
        }
        VerifyError::DebugRefused => {
            "The TD runs in debug mode: its host can read and change its memory"
        }
        _ => "The quote is not signed by a trusted TDX root",
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QuoteNotTrusted(err) => {
                write!(
                    f,
                    "quote: not trusted: {}. {}",
                    error_chain(err),
                    quote_hint(err)
                )
            }
            Self::ReportData {
                expected,
                actual,
                source: BindingSource::Certificate,
            } => write!(
                f,
                "report_data: the quote binds {}, but this certificate's key gives {} (SHA-512(\"ratls-cert:\" ‖ SPKI)). The quote comes from another VM or certificate: it was copied into this one. Next: trust nothing it says; connect to the app itself",
                hex::encode(actual),
                hex::encode(expected)
            ),
            Self::ReportData {
                expected,
                actual,
                source: BindingSource::Given,
            } => write!(
                f,
                "report_data: the quote binds {}, not the --report-data {}. The quote was made for another request (another nonce or key), or comes from another VM. Next: ask the app for a fresh quote over your report_data",
                hex::encode(actual),
                hex::encode(expected)
            ),
            Self::Register {
                register,
                expected,
                actual,
            } => write!(
                f,
                "{}: the image predicts {}, the quote has {}. Most likely {}. Next: {}",
                register.name(),
                hex::encode(expected),
                hex::encode(actual),
                register.cause(),
                register.next()
            ),
            Self::EventAltered { index, name } => write!(
                f,
                "RTMR3: event_log[{index}] ({name:?}) carries a digest its name and payload do not give: it was changed after it was measured. So {SAME_QUOTE}"
            ),
            Self::EventLogInvalid { reason } => write!(
                f,
                "RTMR3: the event log cannot be replayed ({reason}). Most likely {SAME_QUOTE}"
            ),
            Self::Rtmr3Replay {
                quoted,
                replayed,
                events,
            } => write!(
                f,
                "RTMR3: the quote has {}, but the event log's {events} RTMR3 events replay to {}. So {SAME_QUOTE}",
                hex::encode(quoted),
                hex::encode(replayed)
            ),
            Self::EventOrder {
                expected: names::SYSTEM_READY,
                found: None,
                ..
            } => write!(
                f,
                "event order: the log ends before system-ready: the quote was made before the app finished booting, or the log was cut short. Next: ask the running app for a fresh quote and event log"
            ),
            Self::EventOrder {
                index,
                expected,
                found,
            } => {
                match found {
                    Some(name) => write!(
                        f,
                        "event order: event_log[{index}] is {name:?}, where dstack measures {expected:?}"
                    )?,
                    None => write!(
                        f,
                        "event order: the log ends where dstack measures {expected:?}"
                    )?,
                }
                write!(
                    f,
                    " (boot order: {}). The app was not booted by dstack's guest, or by a version that measures otherwise. Next: list the events (`dstack quote verify --json`) and compare them with that order",
                    super::checks::BOOT_ORDER
                )
            }
            Self::ComposeHash {
                file_sha256,
                measured,
            } => write!(
                f,
                "compose-hash: the app measured {}, but the compose file given hashes to {} (sha256 of its bytes). The compose file differs (compare byte for byte; a trailing newline counts). Next: get the app's app-compose.json (tcb_info.app_compose from /Info, or `dstack vm info`), compare `sha256sum` of both files, then diff them",
                measured_hex(measured),
                hex::encode(file_sha256)
            ),
            Self::AppId {
                expected,
                measured,
                pinned: false,
            } => write!(
                f,
                "app-id: the app measured {}, but this compose file's default app-id (the first 20 bytes of its compose-hash) is {}. The app's id was pinned at deploy (KMS/on-chain apps: give it with --app-id), or it runs another compose file. Next: compare with the app-id `dstack vm info` shows",
                measured_hex(measured),
                hex::encode(expected)
            ),
            Self::AppId {
                expected,
                measured,
                pinned: true,
            } => write!(
                f,
                "app-id: the app measured {}, not the --app-id {}. This is another app. Next: compare with the app's id on chain or in the KMS policy",
                measured_hex(measured),
                hex::encode(expected)
            ),
            Self::InstanceId { measured, problem } => match problem {
                InstanceIdProblem::Length => write!(
                    f,
                    "instance-id: the app measured {} bytes ({}), where dstack measures 20 (or nothing with no_instance_id). The guest is not dstack's. Next: compare the guest's version",
                    measured.len(),
                    hex::encode(measured)
                ),
                InstanceIdProblem::Missing => write!(
                    f,
                    "instance-id: the app measured none, but the compose file does not set no_instance_id. The compose file differs (no_instance_id). Next: compare the app's app-compose.json with yours"
                ),
                InstanceIdProblem::Unexpected => write!(
                    f,
                    "instance-id: the compose file sets no_instance_id, but the app measured {}. The compose file differs (no_instance_id). Next: compare the app's app-compose.json with yours",
                    hex::encode(measured)
                ),
                InstanceIdProblem::Differs { expected } => write!(
                    f,
                    "instance-id: the app measured {}, not the --instance-id {}. This is another instance of the app. Next: compare with the instance-id `dstack vm info` shows",
                    measured_hex(measured),
                    hex::encode(expected)
                ),
            },
            Self::KeyProvider { expected, measured } => write!(
                f,
                "key-provider: the app measured {measured}, but the compose file asks for {expected}. The compose file's key provider settings (key_provider, kms_enabled, local_key_provider_enabled, key_provider_id) differ from the ones the app booted with, or its host gave it another KMS. Next: compare those fields of both compose files, and the KMS root's public key with key_provider_id"
            ),
            Self::OsImageHash { expected, measured } => write!(
                f,
                "os-image-hash: the KMS vouched for OS image {}, but this image's os_image_hash is {expected}. The app runs another OS image (or its host told the KMS so). Next: compare the VM's image (`dstack vm info`) with --image, and the vm_config the host gave the KMS",
                measured_hex(measured)
            ),
            Self::MrConfigId {
                expected: Some(expected),
                actual,
            } => write!(
                f,
                "mr_config_id: the quote has {}, but this compose file gives {}. The host launched the TD for another app (another compose file, app-id or key provider). Next: compare the compose-hash, app-id and key_provider_id the host deployed with",
                hex::encode(actual),
                hex::encode(expected)
            ),
            Self::MrConfigId {
                expected: None,
                actual,
            } => write!(
                f,
                "mr_config_id: the quote has {}, of version {} (dstack writes version 1 or 2, or all zeros). The TD was launched by another host stack. Next: ask the host how it sets mr_config_id",
                hex::encode(actual),
                actual[0]
            ),
        }
    }
}
