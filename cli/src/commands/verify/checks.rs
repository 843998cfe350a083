//! The checks of `dstack verify`, pure: a parsed quote, its trust verdict,
//! an event log and the expected inputs (the image's prediction, the compose
//! file, pinned ids) in; one result per check out, in a fixed order. No
//! files, no network, no clock.

use dstack_attest::eventlog::{EventLogError, names, replay, verify_runtime_digests};
use dstack_attest::{Event, TcbStatus, TdReport, VerifyError};
use dstack_compose::{KeyProviderKind, mr_config_id_v1, mr_config_id_v2};
use serde::Deserialize;

use super::finding::{BindingSource, BootRegister, Finding, InstanceIdProblem};
use crate::commands::error_chain;
use crate::predict::Prediction;

/// dstack's boot-time RTMR3 events, for messages (upstream §2.2; optional
/// ones in brackets).
pub(crate) const BOOT_ORDER: &str = "system-preparing, app-id, compose-hash, [init-script-hash…, gpu-policy-hash, gpu-attestation,] instance-id, boot-mr-done, [mr-kms, os-image-hash: KMS only,] key-provider, storage-fs, system-ready";

/// One check, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckKind {
    /// Signature, certificate chain, collateral and TCB of the quote.
    Quote,
    /// The quote's report_data binds the certificate key or the given nonce.
    ReportData,
    /// MRTD against the image.
    Mrtd,
    /// RTMR0 against the image and VM shape.
    Rtmr0,
    /// RTMR1 against the image.
    Rtmr1,
    /// RTMR2 against the image.
    Rtmr2,
    /// The event log's RTMR3 events replay to the quote's RTMR3.
    Rtmr3,
    /// The boot-time RTMR3 events come in dstack's order.
    EventOrder,
    /// `compose-hash` is the compose file's sha256.
    ComposeHash,
    /// `app-id` is the compose file's (or `--app-id`).
    AppId,
    /// `instance-id` is present (or absent) as the compose file says.
    InstanceId,
    /// `key-provider` is the one the compose file asks for.
    KeyProvider,
    /// `os-image-hash` (KMS mode) is the image's.
    OsImageHash,
    /// The quote's mr_config_id names this app.
    MrConfigId,
}

impl CheckKind {
    /// Its name in output and `--json`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Quote => "quote",
            Self::ReportData => "report-data",
            Self::Mrtd => "mrtd",
            Self::Rtmr0 => "rtmr0",
            Self::Rtmr1 => "rtmr1",
            Self::Rtmr2 => "rtmr2",
            Self::Rtmr3 => "rtmr3",
            Self::EventOrder => "event-order",
            Self::ComposeHash => "compose-hash",
            Self::AppId => "app-id",
            Self::InstanceId => "instance-id",
            Self::KeyProvider => "key-provider",
            Self::OsImageHash => "os-image-hash",
            Self::MrConfigId => "mr-config-id",
        }
    }
}

/// How one check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It holds.
    Pass,
    /// It does not.
    Fail(Finding),
    /// It does not apply to this evidence (why).
    Skipped(&'static str),
}

/// One check's result, with what it compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// Which check.
    pub(crate) kind: CheckKind,
    /// What the inputs say it should be.
    pub(crate) expected: Option<String>,
    /// What the evidence says.
    pub(crate) actual: Option<String>,
    /// The verdict.
    pub(crate) outcome: Outcome,
}

/// The quote's trust verdict when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuoteTrust {
    /// The TCB status.
    pub(crate) status: TcbStatus,
    /// Intel advisories that apply.
    pub(crate) advisory_ids: Vec<String>,
}

/// report_data a quote must carry, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Binding {
    /// The 64 bytes.
    pub(crate) report_data: [u8; 64],
    /// Where they come from.
    pub(crate) source: BindingSource,
}

/// What the app presented.
#[derive(Debug, Clone)]
pub(crate) struct Evidence {
    /// The quote's TD report (parsed; trusted only if `trust` is `Ok`).
    pub(crate) report: TdReport,
    /// The quote's verification under the chosen root and policy.
    pub(crate) trust: Result<QuoteTrust, VerifyError>,
    /// The root the quote was checked against, in words.
    pub(crate) anchor: String,
    /// The event log (full or stripped).
    pub(crate) events: Vec<Event>,
    /// report_data the quote must bind, if anything must be bound.
    pub(crate) binding: Option<Binding>,
}

/// The key-provider and instance-id settings of an app-compose.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ComposeSettings {
    /// The effective key provider (upstream's precedence rule).
    pub(crate) key_provider: KeyProviderKind,
    /// `key_provider_id`, raw (empty: not pinned).
    pub(crate) key_provider_id: Vec<u8>,
    /// `no_instance_id`.
    pub(crate) no_instance_id: bool,
}

impl ComposeSettings {
    /// Reads them from app-compose.json bytes. Only the JSON is read: a
    /// verifier accepts any compose upstream accepts, including fields
    /// this platform's guest refuses to run.
    pub(crate) fn parse(compose: &[u8]) -> anyhow::Result<Self> {
        use anyhow::Context;
        let app: dstack_compose::AppCompose = serde_json::from_slice(compose)
            .context("the compose file is not an app-compose.json")?;
        let key_provider_id = hex::decode(app.key_provider_id.trim())
            .context("the compose file's key_provider_id is not hex")?;
        Ok(Self {
            key_provider: app.key_provider(),
            key_provider_id,
            no_instance_id: app.no_instance_id,
        })
    }
}

/// What the app should be.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// The image's boot registers for the VM shape, and its os_image_hash.
    pub(crate) prediction: Prediction,
    /// The compose file's exact bytes.
    pub(crate) compose: Vec<u8>,
    /// Its settings.
    pub(crate) settings: ComposeSettings,
    /// `--app-id` (KMS/on-chain apps pin theirs).
    pub(crate) app_id: Option<[u8; 20]>,
    /// `--instance-id`.
    pub(crate) instance_id: Option<[u8; 20]>,
}

impl Expected {
    fn compose_hash(&self) -> [u8; 32] {
        dstack_compose::compose_hash(&self.compose)
    }

    fn app_id(&self) -> [u8; 20] {
        self.app_id
            .unwrap_or_else(|| dstack_compose::app_id(&self.compose_hash()))
    }
}

/// The first failed check, if any.
pub(crate) fn first_failure(checks: &[Check]) -> Option<&Finding> {
    checks.iter().find_map(|c| match &c.outcome {
        Outcome::Fail(finding) => Some(finding),
        _ => None,
    })
}

/// Runs every check, in order. All run even after a failure, so a report
/// shows everything that holds; the verdict is the first failure.
pub(crate) fn run_checks(evidence: &Evidence, expected: &Expected) -> Vec<Check> {
    let boot = BootLog::of(&evidence.events);
    let mut checks = vec![check_quote(evidence), check_binding(evidence)];
    checks.extend(BootRegister::ALL.map(|r| check_register(r, evidence, expected)));
    checks.push(check_rtmr3(evidence));
    checks.push(check_order(&boot));
    checks.push(check_compose_hash(&boot, expected));
    checks.push(check_app_id(&boot, expected));
    checks.push(check_instance_id(&boot, expected));
    checks.push(check_key_provider(&boot, expected));
    checks.push(check_os_image_hash(&boot, expected));
    checks.push(check_mr_config_id(&evidence.report, expected));
    checks
}

fn check(
    kind: CheckKind,
    expected: impl Into<Option<String>>,
    actual: impl Into<Option<String>>,
) -> Check {
    Check {
        kind,
        expected: expected.into(),
        actual: actual.into(),
        outcome: Outcome::Pass,
    }
}

impl Check {
    fn fail_if(mut self, failed: bool, finding: impl FnOnce() -> Finding) -> Self {
        if failed {
            self.outcome = Outcome::Fail(finding());
        }
        self
    }

    fn skipped(kind: CheckKind, why: &'static str) -> Self {
        Self {
            kind,
            expected: None,
            actual: None,
            outcome: Outcome::Skipped(why),
        }
    }
}

fn check_quote(evidence: &Evidence) -> Check {
    let expected = format!("signed under {}, TCB accepted", evidence.anchor);
    match &evidence.trust {
        Ok(trust) => {
            let mut actual = trust.status.as_str().to_owned();
            if !trust.advisory_ids.is_empty() {
                actual = format!("{actual} ({})", trust.advisory_ids.join(", "));
            }
            check(CheckKind::Quote, expected, actual)
        }
        Err(err) => check(CheckKind::Quote, expected, error_chain(err))
            .fail_if(true, || Finding::QuoteNotTrusted(err.clone())),
    }
}

fn check_binding(evidence: &Evidence) -> Check {
    let Some(binding) = evidence.binding else {
        return Check::skipped(
            CheckKind::ReportData,
            "nothing to bind: --url binds the certificate key, --report-data a nonce",
        );
    };
    let actual = evidence.report.report_data;
    check(
        CheckKind::ReportData,
        hex::encode(binding.report_data),
        hex::encode(actual),
    )
    .fail_if(actual != binding.report_data, || Finding::ReportData {
        expected: binding.report_data,
        actual,
        source: binding.source,
    })
}

fn check_register(register: BootRegister, evidence: &Evidence, expected: &Expected) -> Check {
    let report = &evidence.report;
    let prediction = &expected.prediction;
    let (want, have) = match register {
        BootRegister::Mrtd => (prediction.mr_td, report.mr_td),
        BootRegister::Rtmr0 => (prediction.rtmr[0], report.rtmr[0]),
        BootRegister::Rtmr1 => (prediction.rtmr[1], report.rtmr[1]),
        BootRegister::Rtmr2 => (prediction.rtmr[2], report.rtmr[2]),
    };
    check(register.check(), hex::encode(want), hex::encode(have)).fail_if(want != have, || {
        Finding::Register {
            register,
            expected: want,
            actual: have,
        }
    })
}

fn check_rtmr3(evidence: &Evidence) -> Check {
    let quoted = evidence.report.rtmr[3];
    let mut events: Vec<Event> = evidence
        .events
        .iter()
        .filter(|e| e.imr == 3)
        .cloned()
        .collect();
    let expected = Some(hex::encode(quoted));
    let replayed = verify_runtime_digests(&mut events).and_then(|()| replay(&events));
    let finding = match replayed {
        Ok(rtmrs) if rtmrs.0[3] == quoted => {
            return check(CheckKind::Rtmr3, expected, hex::encode(quoted));
        }
        Ok(rtmrs) => Finding::Rtmr3Replay {
            quoted,
            replayed: rtmrs.0[3],
            events: events.len(),
        },
        Err(EventLogError::RuntimeDigestMismatch { index, name }) => {
            // `index` counts RTMR3 events; name the event in the log given.
            let index = nth_rtmr3_index(&evidence.events, index);
            Finding::EventAltered { index, name }
        }
        Err(err) => Finding::EventLogInvalid {
            reason: error_chain(&err),
        },
    };
    let actual = match &finding {
        Finding::Rtmr3Replay { replayed, .. } => Some(hex::encode(replayed)),
        _ => None,
    };
    Check {
        kind: CheckKind::Rtmr3,
        expected,
        actual,
        outcome: Outcome::Fail(finding),
    }
}

fn nth_rtmr3_index(events: &[Event], n: usize) -> usize {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.imr == 3)
        .nth(n)
        .map_or(n, |(i, _)| i)
}

/// The runtime events up to and including the first `system-ready`: what
/// dstack's boot measured. Later events are the app's own (upstream's
/// `find_event` stops there too), so they cannot stand in for these.
struct BootLog<'a> {
    /// (index in the event log, event).
    events: Vec<(usize, &'a Event)>,
    /// Length of the whole event log.
    log_len: usize,
}

impl<'a> BootLog<'a> {
    fn of(events: &'a [Event]) -> Self {
        let mut boot = Vec::new();
        for (index, event) in events.iter().enumerate().filter(|(_, e)| e.is_runtime()) {
            boot.push((index, event));
            if event.event == names::SYSTEM_READY {
                break;
            }
        }
        Self {
            events: boot,
            log_len: events.len(),
        }
    }

    fn payload(&self, name: &str) -> Option<&'a [u8]> {
        self.events
            .iter()
            .find(|(_, e)| e.event == name)
            .map(|(_, e)| e.event_payload.as_slice())
    }

    /// The measured key provider, parsed.
    fn key_provider(&self) -> Option<KeyProviderInfo> {
        serde_json::from_slice(self.payload(names::KEY_PROVIDER)?).ok()
    }

    fn kms_mode(&self) -> bool {
        self.key_provider().is_some_and(|k| k.name == "kms")
    }
}

/// The `key-provider` payload (upstream `KeyProviderInfo`).
#[derive(Debug, Deserialize)]
struct KeyProviderInfo {
    name: String,
    id: String,
}

/// One position in dstack's boot order: an event that appears between
/// `min` and `max` times.
struct Slot {
    name: &'static str,
    min: usize,
    max: usize,
}

const fn slot(name: &'static str, min: usize, max: usize) -> Slot {
    Slot { name, min, max }
}

/// Upstream §2.2; `kms` per the measured key provider (the key-provider
/// check compares that with the compose file).
fn boot_order(kms: bool) -> [Slot; 13] {
    let kms = usize::from(kms);
    [
        slot(names::SYSTEM_PREPARING, 1, 1),
        slot(names::APP_ID, 1, 1),
        slot(names::COMPOSE_HASH, 1, 1),
        slot("init-script-hash", 0, 5),
        slot("gpu-policy-hash", 0, 1),
        slot("gpu-attestation", 0, 1),
        slot(names::INSTANCE_ID, 1, 1),
        slot(names::BOOT_MR_DONE, 1, 1),
        slot(names::MR_KMS, 0, kms),
        slot(names::OS_IMAGE_HASH, kms, kms),
        slot(names::KEY_PROVIDER, 1, 1),
        slot(names::STORAGE_FS, 1, 1),
        slot(names::SYSTEM_READY, 1, 1),
    ]
}

fn check_order(boot: &BootLog<'_>) -> Check {
    let measured: Vec<&str> = boot.events.iter().map(|(_, e)| e.event.as_str()).collect();
    let result = check(
        CheckKind::EventOrder,
        BOOT_ORDER.to_owned(),
        measured.join(", "),
    );
    let mut at = 0;
    for slot in boot_order(boot.kms_mode()) {
        let mut seen = 0;
        while seen < slot.max && measured.get(at) == Some(&slot.name) {
            at += 1;
            seen += 1;
        }
        if seen < slot.min {
            return result.fail_if(true, || Finding::EventOrder {
                index: boot.events.get(at).map_or(boot.log_len, |(i, _)| *i),
                expected: slot.name,
                found: measured.get(at).map(|s| (*s).to_owned()),
            });
        }
    }
    // The log stops at the first system-ready, which the last slot consumed.
    result
}

fn check_compose_hash(boot: &BootLog<'_>, expected: &Expected) -> Check {
    let file_sha256 = expected.compose_hash();
    let measured = boot.payload(names::COMPOSE_HASH).unwrap_or_default();
    check(
        CheckKind::ComposeHash,
        hex::encode(file_sha256),
        hex::encode(measured),
    )
    .fail_if(measured != file_sha256, || Finding::ComposeHash {
        file_sha256,
        measured: measured.to_vec(),
    })
}

fn check_app_id(boot: &BootLog<'_>, expected: &Expected) -> Check {
    let want = expected.app_id();
    let measured = boot.payload(names::APP_ID).unwrap_or_default();
    check(CheckKind::AppId, hex::encode(want), hex::encode(measured)).fail_if(
        measured != want,
        || Finding::AppId {
            expected: want,
            measured: measured.to_vec(),
            pinned: expected.app_id.is_some(),
        },
    )
}

fn check_instance_id(boot: &BootLog<'_>, expected: &Expected) -> Check {
    let measured = boot.payload(names::INSTANCE_ID).unwrap_or_default();
    let want = match (expected.settings.no_instance_id, expected.instance_id) {
        (true, _) => "none (no_instance_id)".to_owned(),
        (false, Some(id)) => hex::encode(id),
        (false, None) => "20 bytes".to_owned(),
    };
    let problem = match (expected.settings.no_instance_id, measured.len()) {
        (true, 0) => None,
        (true, _) => Some(InstanceIdProblem::Unexpected),
        (false, 0) => Some(InstanceIdProblem::Missing),
        (false, 20) => expected
            .instance_id
            .filter(|id| id[..] != *measured)
            .map(|expected| InstanceIdProblem::Differs { expected }),
        (false, _) => Some(InstanceIdProblem::Length),
    };
    let result = check(CheckKind::InstanceId, want, hex::encode(measured));
    match problem {
        None => result,
        Some(problem) => result.fail_if(true, || Finding::InstanceId {
            measured: measured.to_vec(),
            problem,
        }),
    }
}

fn check_key_provider(boot: &BootLog<'_>, expected: &Expected) -> Check {
    let settings = &expected.settings;
    let (name, kind) = match settings.key_provider {
        KeyProviderKind::None => ("none", "none"),
        KeyProviderKind::Kms => ("kms", "kms"),
        KeyProviderKind::Local => ("local-sgx", "local"),
        KeyProviderKind::Tpm => ("tpm", "tpm"),
    };
    let pinned = hex::encode(&settings.key_provider_id);
    let want = match settings.key_provider {
        KeyProviderKind::None => "none (random keys)".to_owned(),
        _ if pinned.is_empty() => format!("{kind} ({name}, any id)"),
        _ => format!("{kind} ({name}, id {pinned})"),
    };
    let measured_text = boot.payload(names::KEY_PROVIDER).map_or_else(
        || "nothing".to_owned(),
        |p| String::from_utf8_lossy(p).into_owned(),
    );
    let holds = boot.key_provider().is_some_and(|info| {
        info.name == name
            && match settings.key_provider {
                KeyProviderKind::None => info.id.is_empty(),
                _ => pinned.is_empty() || info.id.eq_ignore_ascii_case(&pinned),
            }
    });
    check(CheckKind::KeyProvider, want.clone(), measured_text.clone()).fail_if(!holds, || {
        Finding::KeyProvider {
            expected: want,
            measured: measured_text,
        }
    })
}

fn check_os_image_hash(boot: &BootLog<'_>, expected: &Expected) -> Check {
    if !boot.kms_mode() {
        return Check::skipped(
            CheckKind::OsImageHash,
            "not in KMS mode: dstack measures os-image-hash only when a KMS provides the keys (MRTD and RTMR0-2 bind the image)",
        );
    }
    let want = expected.prediction.os_image_hash.to_ascii_lowercase();
    let measured = boot.payload(names::OS_IMAGE_HASH).unwrap_or_default();
    check(CheckKind::OsImageHash, want.clone(), hex::encode(measured)).fail_if(
        hex::encode(measured) != want,
        || Finding::OsImageHash {
            expected: want,
            measured: measured.to_vec(),
        },
    )
}

fn check_mr_config_id(report: &TdReport, expected: &Expected) -> Check {
    let actual = report.mr_config_id;
    if actual == [0; 48] {
        return Check::skipped(
            CheckKind::MrConfigId,
            "all zeros: the host bound no app at launch",
        );
    }
    let settings = &expected.settings;
    let want = match actual[0] {
        1 => Some(mr_config_id_v1(&expected.compose_hash())),
        2 => Some(mr_config_id_v2(
            &expected.compose_hash(),
            &expected.app_id(),
            settings.key_provider,
            &settings.key_provider_id,
        )),
        _ => None,
    };
    check(
        CheckKind::MrConfigId,
        want.map(hex::encode),
        hex::encode(actual),
    )
    .fail_if(want != Some(actual), || Finding::MrConfigId {
        expected: want,
        actual,
    })
}
