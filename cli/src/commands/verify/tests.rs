//! The checker on real signed quotes from the simulated TEE, against a real
//! (tiny) image directory: one passing app, and one test per finding.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use dstack_attest::eventlog::names;
use dstack_attest::{QuoteVerifier, RuntimeEvent, SimAuthority, VerifyError};
use dstack_compose::mr_config_id_v1;
use dstack_ra_tls::{CertRequest, RaTlsCert, report_data_for_spki};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use sha2::{Digest, Sha256};

use super::checks::{
    CheckKind, ComposeSettings, Evidence, Expected, Outcome, first_failure, run_checks,
};
use super::evidence::{Gathered, appraise, from_certificate};
use super::finding::{BindingSource, BootRegister, Finding, InstanceIdProblem};
use super::image::resolve;
use crate::predict::{MachineArgs, Prediction, VmShape, predict};

#[path = "../../../tests/support/sim_app.rs"]
mod sim_app;

use sim_app::{
    CMDLINE, COMPOSE, GuestBoot, KMS_COMPOSE, QEMU_VERSION, SimTd, kernel, write_acpi_tables,
    write_image,
};

const SHAPE: VmShape = VmShape {
    vcpus: 2,
    memory_mb: 2048,
};

/// A host: an image directory, the simulated authority, and the app's TD.
struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    image: PathBuf,
    authority: Arc<SimAuthority>,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let image = write_image(&root, "dstack-test", &kernel(), CMDLINE);
        write_acpi_tables(&root.join("acpi"));
        Self {
            _dir: dir,
            root,
            image,
            authority: Arc::new(SimAuthority::generate().unwrap()),
        }
    }

    fn prediction(&self, image: &Path, shape: VmShape) -> Prediction {
        let machine = MachineArgs {
            acpi_tables: Some(self.root.join("acpi")),
            qemu_version: Some(QEMU_VERSION.into()),
            ..MachineArgs::default()
        };
        predict(image, shape, &machine).unwrap()
    }

    /// A TD booted from `self.image` with SHAPE, the host binding mr_config_id v1.
    fn td(&self, compose: &str) -> SimTd {
        let p = self.prediction(&self.image, SHAPE);
        let hash: [u8; 32] = Sha256::digest(compose.as_bytes()).into();
        SimTd::launch(
            self.authority.clone(),
            p.mr_td,
            p.rtmr,
            mr_config_id_v1(&hash),
        )
    }

    /// The evidence of `td`, quoted now, checked under the sim root (or
    /// Intel's with `trust_sim_root` false).
    fn evidence(&self, td: &SimTd, report_data: [u8; 64], trust_sim_root: bool) -> Evidence {
        let gathered = Gathered {
            quote: td.quote(&report_data),
            events: td.events.clone(),
            binding: None,
            collateral: None,
            source: "test".into(),
        };
        self.appraise(&gathered, trust_sim_root)
    }

    fn appraise(&self, gathered: &Gathered, trust_sim_root: bool) -> Evidence {
        let verifier = if trust_sim_root {
            QuoteVerifier::new(self.authority.root_der().to_vec())
        } else {
            QuoteVerifier::intel()
        };
        let collateral = self.authority.collateral(chrono::Utc::now()).unwrap();
        appraise(
            gathered,
            &verifier,
            &collateral,
            SystemTime::now(),
            "the sim root".into(),
        )
        .unwrap()
    }

    fn expected(&self, compose: &str) -> Expected {
        self.expected_for(&self.image, SHAPE, compose)
    }

    fn expected_for(&self, image: &Path, shape: VmShape, compose: &str) -> Expected {
        Expected {
            prediction: self.prediction(image, shape),
            compose: compose.as_bytes().to_vec(),
            settings: ComposeSettings::parse(compose.as_bytes()).unwrap(),
            app_id: None,
            instance_id: None,
        }
    }
}

/// A TD that booted `compose` as the guest does, quoted.
fn booted(host: &Host, compose: &str) -> SimTd {
    let mut td = host.td(compose);
    td.boot(&GuestBoot::of(compose.as_bytes()));
    td
}

fn finding(evidence: &Evidence, expected: &Expected) -> Finding {
    first_failure(&run_checks(evidence, expected))
        .cloned()
        .expect("a finding")
}

#[test]
fn a_matching_app_verifies_and_every_check_is_listed_in_order() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let checks = run_checks(&host.evidence(&td, [0; 64], true), &host.expected(COMPOSE));
    assert_eq!(first_failure(&checks), None, "{checks:#?}");
    let kinds: Vec<&str> = checks.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "quote",
            "report-data",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "event-order",
            "compose-hash",
            "app-id",
            "instance-id",
            "key-provider",
            "os-image-hash",
            "mr-config-id"
        ]
    );
    let skipped: Vec<CheckKind> = checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
        .map(|c| c.kind)
        .collect();
    // Nothing to bind with a bare quote; no KMS, so no os-image-hash.
    assert_eq!(skipped, [CheckKind::ReportData, CheckKind::OsImageHash]);
    // Later app events do not disturb the boot checks.
    let mut td = td;
    td.emit("app-ready", b"v1");
    let checks = run_checks(&host.evidence(&td, [0; 64], true), &host.expected(COMPOSE));
    assert_eq!(first_failure(&checks), None);
}

#[test]
fn a_trailing_newline_in_the_compose_file_is_the_compose_hash() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let with_newline = format!("{COMPOSE}\n");
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected(&with_newline),
    );
    let Finding::ComposeHash {
        file_sha256,
        measured,
    } = &found
    else {
        panic!("{found:?}");
    };
    assert_eq!(file_sha256[..], Sha256::digest(with_newline.as_bytes())[..]);
    assert_eq!(measured[..], Sha256::digest(COMPOSE.as_bytes())[..]);
    let text = found.to_string();
    assert!(text.contains("a trailing newline counts"), "{text}");
    assert!(text.contains(&hex::encode(file_sha256)), "{text}");
}

#[test]
fn another_kernel_command_line_is_rtmr2() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let other = write_image(
        &host.root,
        "other-cmdline",
        &kernel(),
        "console=ttyS0 panic=1 debug",
    );
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected_for(&other, SHAPE, COMPOSE),
    );
    assert!(
        matches!(
            found,
            Finding::Register {
                register: BootRegister::Rtmr2,
                ..
            }
        ),
        "{found:?}"
    );
    assert!(
        found
            .to_string()
            .contains("kernel command line or the initrd")
    );
}

#[test]
fn another_kernel_is_rtmr1() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let mut kernel = kernel();
    kernel[5] ^= 1;
    let other = write_image(&host.root, "other-kernel", &kernel, CMDLINE);
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected_for(&other, SHAPE, COMPOSE),
    );
    assert!(
        matches!(
            found,
            Finding::Register {
                register: BootRegister::Rtmr1,
                ..
            }
        ),
        "{found:?}"
    );
    assert!(found.to_string().contains("the kernel differs"));
}

#[test]
fn another_vm_shape_is_rtmr0() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let bigger = VmShape {
        memory_mb: 4096,
        ..SHAPE
    };
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected_for(&host.image, bigger, COMPOSE),
    );
    let Finding::Register {
        register: BootRegister::Rtmr0,
        expected,
        actual,
    } = &found
    else {
        panic!("{found:?}");
    };
    assert_eq!(actual, &td.identity.rtmr[0]);
    assert_eq!(expected, &host.prediction(&host.image, bigger).rtmr[0]);
    assert!(found.to_string().contains("VM shape (vCPUs/memory)"));
}

#[test]
fn an_appended_event_breaks_the_rtmr3_replay() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let mut evidence = host.evidence(&td, [0; 64], true);
    evidence.events.push(
        RuntimeEvent {
            name: "extra".into(),
            payload: vec![1],
        }
        .to_event(),
    );
    let found = finding(&evidence, &host.expected(COMPOSE));
    let Finding::Rtmr3Replay { quoted, events, .. } = &found else {
        panic!("{found:?}");
    };
    assert_eq!(quoted, &td.identity.rtmr[3]);
    assert_eq!(*events, td.events.len() + 1);
    assert!(found.to_string().contains("does not belong to this quote"));
}

#[test]
fn a_changed_payload_is_caught_with_or_without_its_digest() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let mut evidence = host.evidence(&td, [0; 64], true);
    evidence.events[2].event_payload[0] ^= 1; // compose-hash
    let found = finding(&evidence, &host.expected(COMPOSE));
    assert_eq!(
        found,
        Finding::EventAltered {
            index: 2,
            name: names::COMPOSE_HASH.into()
        }
    );
    // /GetQuote blanks runtime digests: then only the replay can tell.
    for event in &mut evidence.events {
        event.digest.clear();
    }
    let found = finding(&evidence, &host.expected(COMPOSE));
    assert!(matches!(found, Finding::Rtmr3Replay { .. }), "{found:?}");
}

#[test]
fn an_event_log_from_another_td_does_not_replay() {
    let host = Host::new();
    let mine = booted(&host, COMPOSE);
    // Same image and app, another instance: its quote, my log.
    let mut other = host.td(COMPOSE);
    other.boot(&GuestBoot {
        instance_id: vec![0x2e; 20],
        ..GuestBoot::of(COMPOSE.as_bytes())
    });
    let mut evidence = host.evidence(&other, [0; 64], true);
    evidence.events = mine.events.clone();
    let found = finding(&evidence, &host.expected(COMPOSE));
    assert!(matches!(found, Finding::Rtmr3Replay { .. }), "{found:?}");
}

/// A certificate carrying another key's quote (copied from another VM's
/// certificate): the binding check names it.
#[test]
fn a_quote_bound_to_another_key_is_report_data() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let issue = |bound: &KeyPair| {
        let evidence = dstack_ra_tls::Evidence {
            quote: td.quote(&report_data_for_spki(&bound.subject_public_key_info())),
            event_log: td.events.clone(),
            vm_config: String::new(),
            collateral: Some(td.collateral()),
        };
        let key = KeyPair::try_from(key.serialize_der().as_slice()).unwrap();
        RaTlsCert::with_evidence(key, &CertRequest::new("app"), &evidence).unwrap()
    };

    // Its own key: the --url path verifies.
    let cert = issue(&key);
    let gathered = from_certificate(&cert.cert_der, "https://app").unwrap();
    assert_eq!(
        gathered.binding.map(|b| b.source),
        Some(BindingSource::Certificate)
    );
    assert!(gathered.collateral.is_some(), "carried in-band");
    let checks = run_checks(&host.appraise(&gathered, true), &host.expected(COMPOSE));
    assert_eq!(first_failure(&checks), None, "{checks:#?}");
    let report_data = checks
        .iter()
        .find(|c| c.kind == CheckKind::ReportData)
        .unwrap();
    assert_eq!(report_data.outcome, Outcome::Pass);

    // Another key's quote.
    let cert = issue(&other_key);
    let gathered = from_certificate(&cert.cert_der, "https://app").unwrap();
    let found = finding(&host.appraise(&gathered, true), &host.expected(COMPOSE));
    assert!(
        matches!(
            found,
            Finding::ReportData {
                source: BindingSource::Certificate,
                ..
            }
        ),
        "{found:?}"
    );
    assert!(found.to_string().contains("another VM or certificate"));
}

#[test]
fn a_sim_quote_without_the_sim_root_is_untrusted() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let checks = run_checks(&host.evidence(&td, [0; 64], false), &host.expected(COMPOSE));
    let found = first_failure(&checks).cloned().unwrap();
    assert!(
        matches!(
            found,
            Finding::QuoteNotTrusted(VerifyError::UntrustedChain(_))
        ),
        "{found:?}"
    );
    assert!(found.to_string().contains("--sim-root"), "{found}");
    // Only the trust failed: the rest of the report still holds.
    let failed = checks
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
        .count();
    assert_eq!(failed, 1);
}

#[test]
fn kms_mode_binds_the_os_image() {
    let host = Host::new();
    let spki = [0x30, 0x59, 0x01];
    let image_hash = sim_app::os_image_hash(&host.image);
    let mut td = host.td(KMS_COMPOSE);
    td.boot(&GuestBoot::of(KMS_COMPOSE.as_bytes()).with_kms(&spki, image_hash));
    let checks = run_checks(
        &host.evidence(&td, [0; 64], true),
        &host.expected(KMS_COMPOSE),
    );
    assert_eq!(first_failure(&checks), None, "{checks:#?}");
    let os_image = checks
        .iter()
        .find(|c| c.kind == CheckKind::OsImageHash)
        .unwrap();
    assert_eq!(os_image.outcome, Outcome::Pass);

    // The KMS vouched for another image.
    let mut td = host.td(KMS_COMPOSE);
    td.boot(&GuestBoot::of(KMS_COMPOSE.as_bytes()).with_kms(&spki, vec![0xee; 32]));
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected(KMS_COMPOSE),
    );
    assert!(matches!(found, Finding::OsImageHash { .. }), "{found:?}");

    // A pinned KMS root that is not the one measured.
    let pinned = KMS_COMPOSE.replace(
        r#""kms_enabled":true"#,
        r#""key_provider_id":"3059ff","kms_enabled":true"#,
    );
    let mut td = host.td(&pinned);
    td.boot(&GuestBoot::of(pinned.as_bytes()).with_kms(&spki, sim_app::os_image_hash(&host.image)));
    let found = finding(&host.evidence(&td, [0; 64], true), &host.expected(&pinned));
    assert!(matches!(found, Finding::KeyProvider { .. }), "{found:?}");
}

#[test]
fn a_compose_asking_for_a_kms_does_not_match_random_keys() {
    let host = Host::new();
    // The app booted without a KMS, but the compose given asks for one.
    let mut td = host.td(KMS_COMPOSE);
    td.boot(&GuestBoot::of(KMS_COMPOSE.as_bytes()));
    let found = finding(
        &host.evidence(&td, [0; 64], true),
        &host.expected(KMS_COMPOSE),
    );
    let Finding::KeyProvider { expected, measured } = &found else {
        panic!("{found:?}");
    };
    assert!(expected.starts_with("kms"), "{expected}");
    assert!(measured.contains("\"none\""), "{measured}");
}

#[test]
fn a_pinned_app_id_needs_app_id() {
    let host = Host::new();
    let pinned = [0xa9; 20];
    let mut td = host.td(COMPOSE);
    td.boot(&GuestBoot {
        app_id: pinned.to_vec(),
        ..GuestBoot::of(COMPOSE.as_bytes())
    });
    let evidence = host.evidence(&td, [0; 64], true);
    let found = finding(&evidence, &host.expected(COMPOSE));
    assert!(
        matches!(found, Finding::AppId { pinned: false, .. }),
        "{found:?}"
    );
    assert!(found.to_string().contains("--app-id"));
    let mut expected = host.expected(COMPOSE);
    expected.app_id = Some(pinned);
    assert_eq!(first_failure(&run_checks(&evidence, &expected)), None);
    expected.app_id = Some([0xaa; 20]);
    let found = finding(&evidence, &expected);
    assert!(
        matches!(found, Finding::AppId { pinned: true, .. }),
        "{found:?}"
    );
}

#[test]
fn instance_ids_follow_the_compose_and_the_pin() {
    let host = Host::new();
    let td = booted(&host, COMPOSE);
    let evidence = host.evidence(&td, [0; 64], true);
    let mut expected = host.expected(COMPOSE);
    expected.instance_id = Some([0x1d; 20]);
    assert_eq!(first_failure(&run_checks(&evidence, &expected)), None);
    expected.instance_id = Some([0x1e; 20]);
    let found = finding(&evidence, &expected);
    assert!(
        matches!(
            found,
            Finding::InstanceId {
                problem: InstanceIdProblem::Differs { .. },
                ..
            }
        ),
        "{found:?}"
    );

    let none = COMPOSE.replace(r#""name":"web""#, r#""name":"web","no_instance_id":true"#);
    let mut td = host.td(&none);
    td.boot(&GuestBoot {
        instance_id: Vec::new(),
        ..GuestBoot::of(none.as_bytes())
    });
    let evidence = host.evidence(&td, [0; 64], true);
    assert_eq!(
        first_failure(&run_checks(&evidence, &host.expected(&none))),
        None
    );
}

#[test]
fn a_quote_taken_mid_boot_is_event_order() {
    let host = Host::new();
    let mut td = host.td(COMPOSE);
    td.boot(&GuestBoot {
        unfinished: true,
        ..GuestBoot::of(COMPOSE.as_bytes())
    });
    let found = finding(&host.evidence(&td, [0; 64], true), &host.expected(COMPOSE));
    assert_eq!(
        found,
        Finding::EventOrder {
            index: td.events.len(),
            expected: names::SYSTEM_READY,
            found: None
        }
    );
    assert!(
        found
            .to_string()
            .contains("before the app finished booting")
    );

    // An event out of place.
    let mut td = host.td(COMPOSE);
    td.emit(names::SYSTEM_PREPARING, &[]);
    td.emit(names::COMPOSE_HASH, &Sha256::digest(COMPOSE.as_bytes()));
    let found = finding(&host.evidence(&td, [0; 64], true), &host.expected(COMPOSE));
    assert_eq!(
        found,
        Finding::EventOrder {
            index: 1,
            expected: names::APP_ID,
            found: Some(names::COMPOSE_HASH.into())
        }
    );
}

#[test]
fn mr_config_id_must_name_this_app() {
    let host = Host::new();
    let p = host.prediction(&host.image, SHAPE);
    // The host launched the TD for another compose file, then booted this one.
    let mut td = SimTd::launch(
        host.authority.clone(),
        p.mr_td,
        p.rtmr,
        mr_config_id_v1(&[9; 32]),
    );
    td.boot(&GuestBoot::of(COMPOSE.as_bytes()));
    let found = finding(&host.evidence(&td, [0; 64], true), &host.expected(COMPOSE));
    assert!(
        matches!(
            found,
            Finding::MrConfigId {
                expected: Some(_),
                ..
            }
        ),
        "{found:?}"
    );
    // Version 2 binds the key provider too.
    let hash: [u8; 32] = Sha256::digest(COMPOSE.as_bytes()).into();
    let v2 = dstack_compose::mr_config_id_v2(
        &hash,
        &hash[..20],
        dstack_compose::KeyProviderKind::None,
        &[],
    );
    let mut td = SimTd::launch(host.authority.clone(), p.mr_td, p.rtmr, v2);
    td.boot(&GuestBoot::of(COMPOSE.as_bytes()));
    let evidence = host.evidence(&td, [0; 64], true);
    assert_eq!(
        first_failure(&run_checks(&evidence, &host.expected(COMPOSE))),
        None
    );
}

#[test]
fn images_resolve_by_directory_digest_or_name_and_must_be_consistent() {
    let host = Host::new();
    let digest = hex::encode(sim_app::os_image_hash(&host.image));
    let by_dir = resolve(host.image.to_str().unwrap(), Path::new("/nonexistent")).unwrap();
    assert_eq!(by_dir.os_image_hash, digest);
    let by_digest = resolve(&format!("0x{}", digest.to_uppercase()), &host.root).unwrap();
    assert_eq!(by_digest.dir, host.image);
    assert_eq!(resolve("dstack-test", &host.root).unwrap().dir, host.image);
    let err = resolve(&"ab".repeat(32), &host.root).unwrap_err();
    assert!(format!("{err:#}").contains("dstack-test"), "{err:#}");

    // A kernel swapped after the image was hashed.
    std::fs::write(host.image.join("bzImage"), b"another kernel").unwrap();
    let err = resolve(host.image.to_str().unwrap(), &host.root).unwrap_err();
    assert!(format!("{err:#}").contains("bzImage hashes to"), "{err:#}");
}
