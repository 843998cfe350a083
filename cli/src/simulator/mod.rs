//! `dstack simulator`: upstream dstack's guest API (`dstack.sock`,
//! `tappd.sock`) on the host, backed by the simulated TEE, so apps and the
//! official SDKs run against it with
//! `DSTACK_SIMULATOR_ENDPOINT=<dir>/dstack.sock`.
//!
//! The TD boots like a dstack guest: synthetic RTMR0-2 events, then the
//! RTMR3 boot events in upstream order, with the key provider the
//! app-compose asks for, measured as the guest measures it:
//!
//! - `kms` (the default app-compose, like upstream's simulator): the app's
//!   keys are what a KMS with this root would release — the simulator's
//!   own root, kept in its state directory, or a dstack-kms state
//!   directory's with `--kms-root` — so they are the same on every run and
//!   GetKey's `signature_chain[1]` is the root's signature. `os-image-hash`
//!   and `key-provider` `{"name":"kms","id":<root CA SPKI>}` are measured.
//! - `none`: a fresh random seed on every run, measured as `none`, as a
//!   guest does; no verifier can mistake such keys for provided ones.
//!
//! In KMS mode the instance-id seed is kept in the state directory too, as
//! a host keeps a CVM's, so a restart measures the same identity (RTMR3)
//! and gets the same disk key.

mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dstack_attest::eventlog::{
    EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EFI_VARIABLE_DRIVER_CONFIG, EV_PLATFORM_CONFIG_FLAGS, EV_SEPARATOR, key_provider, names,
};
use dstack_attest::{Event, Platform, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity};
use dstack_compose::{AppCompose, KeyProviderKind};
use dstack_guest_api::{AppInfo, Flavor, GuestApi};
use dstack_keys::{AppKeys, KmsRootKeys};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha384};

use state::StateDir;

/// Arguments of `dstack simulator`.
#[derive(Debug, Args)]
pub(crate) struct SimulatorArgs {
    /// Directory for dstack.sock and tappd.sock.
    #[arg(long, default_value = "./dstack-sim")]
    dir: PathBuf,
    /// What the simulator keeps between runs, created on first use: the
    /// simulated TEE (sim-tee.json), its KMS root (kms/root-keys.json) and
    /// the instance-id seed (instance.json). Default:
    /// $XDG_DATA_HOME/dstack/simulator.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Release app keys from this dstack-kms state directory's root keys
    /// (its root-keys.json) instead of the simulator's own root; read only.
    #[arg(long, value_name = "DIR")]
    kms_root: Option<PathBuf>,
    /// The app-id to measure (40 hex digits; default: the first 20 bytes of
    /// the compose-hash), e.g. an on-chain app's address, to get the keys
    /// that app gets from its KMS.
    #[arg(long, value_name = "HEX", value_parser = parse_app_id)]
    app_id: Option<[u8; 20]>,
    /// The app-compose.json to measure (default: a small generated one
    /// with "kms_enabled": true).
    #[arg(long, value_name = "FILE")]
    app_compose: Option<PathBuf>,
    /// Print the simulated root CA (PEM), which verifiers must be given to
    /// accept simulated quotes, and exit.
    #[arg(long, conflicts_with = "print_collateral")]
    print_root: bool,
    /// Print collateral (dcap-qvl JSON, valid 30 days) for simulated quotes
    /// (`dstack quote verify --collateral`), and exit.
    #[arg(long)]
    print_collateral: bool,
}

fn parse_app_id(text: &str) -> Result<[u8; 20], String> {
    let text = text.trim();
    let bytes = hex::decode(text.strip_prefix("0x").unwrap_or(text)).map_err(|e| e.to_string())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("an app-id is 20 bytes, this is {}", b.len()))
}

/// The default state directory: $XDG_DATA_HOME or ~/.local/share, then
/// dstack/simulator.
fn default_state_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --state-dir")?)
                .join(".local/share")
        }
    };
    Ok(base.join("dstack/simulator"))
}

/// A small app-compose.json, in the SDKs' canonical form (sorted keys,
/// compact separators). It asks for KMS keys, as upstream's simulator's does.
const DEFAULT_APP_COMPOSE: &str = concat!(
    r#"{"docker_compose_file":"services:\n  app:\n    image: busybox\n","#,
    r#""gateway_enabled":false,"kms_enabled":true,"manifest_version":2,"#,
    r#""name":"dstack-simulator-app","no_instance_id":false,"public_logs":true,"#,
    r#""public_sysinfo":true,"public_tcbinfo":true,"runner":"docker-compose"}"#
);

fn sha384(parts: &[&[u8]]) -> Vec<u8> {
    let mut hasher = Sha384::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// Firmware, kernel and boot-loader events for RTMR0-2 with deterministic
/// digests, so the registers are the same on every run.
fn boot_events() -> Vec<Event> {
    let spec: [(u32, u32, &str); 8] = [
        (0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, "simulated TD HOB"),
        (0, EV_PLATFORM_CONFIG_FLAGS, "ACPI DATA"),
        (0, EV_EFI_VARIABLE_DRIVER_CONFIG, "SecureBoot"),
        (0, EV_SEPARATOR, "separator"),
        (1, EV_EFI_BOOT_SERVICES_APPLICATION, "simulated kernel"),
        (1, EV_SEPARATOR, "separator"),
        (
            2,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            "simulated kernel cmdline",
        ),
        (2, EV_EFI_BOOT_SERVICES_APPLICATION, "simulated initrd"),
    ];
    spec.iter()
        .map(|&(imr, event_type, what)| Event {
            imr,
            event_type,
            digest: sha384(&[b"dstack-rs simulator:", what.as_bytes()]),
            event: String::new(),
            event_payload: what.as_bytes().to_vec(),
        })
        .collect()
}

/// Where the simulated TD's app keys come from.
enum Provider {
    /// A KMS root, and the instance-id seed the host keeps for the TD.
    Kms {
        root: KmsRootKeys,
        instance_seed: [u8; 20],
    },
    /// The `none` provider: fresh random seeds on every run.
    None,
}

/// Parses the app-compose fields the boot reads (the docker-compose YAML
/// inside is the app's business, not the simulator's).
fn parse_app(app_compose: &str) -> anyhow::Result<AppCompose> {
    serde_json::from_str(app_compose).context("the app-compose is not an app-compose.json")
}

/// The provider the app asks for, with its keys' source: `kms_root`, or
/// the simulator's own root in `state`.
fn select_provider(
    app: &AppCompose,
    kms_root: Option<&Path>,
    state: &StateDir,
) -> anyhow::Result<Provider> {
    match app.key_provider() {
        KeyProviderKind::Kms => Ok(Provider::Kms {
            root: match kms_root {
                Some(dir) => state::kms_root_from(dir)?,
                None => state.local_kms_root()?,
            },
            instance_seed: state.instance_seed()?,
        }),
        KeyProviderKind::None if kms_root.is_some() => anyhow::bail!(
            r#"--kms-root: the app-compose asks for key provider none; give it "kms_enabled": true to take its keys from a KMS"#
        ),
        KeyProviderKind::None => Ok(Provider::None),
        KeyProviderKind::Local => anyhow::bail!(
            r#"the app-compose asks for the local (SGX) key provider, which the simulator does not provide: use "kms_enabled": true (keys from a KMS root), or run the app in a CVM under dstack-supervisor"#
        ),
        KeyProviderKind::Tpm => anyhow::bail!(
            "the app-compose asks for the TPM key provider, which dstack-rs does not support"
        ),
    }
}

/// Everything the simulated boot decided.
struct Booted {
    platform: Arc<SimPlatform>,
    app: AppInfo,
    keys: AppKeys,
}

/// Boots the simulated TD for `app_compose` and measures it, with keys
/// from `provider`.
fn boot(
    authority: SimAuthority,
    app_compose: String,
    app_id: Option<[u8; 20]>,
    provider: &Provider,
) -> anyhow::Result<Booted> {
    let app = parse_app(&app_compose)?;
    let identity = SimTdIdentity {
        mr_td: sha384(&[b"dstack-rs simulator MRTD"])
            .try_into()
            .map_err(|_| anyhow::anyhow!("SHA-384 is 48 bytes"))?,
        ..SimTdIdentity::default()
    };
    let platform = Arc::new(
        SimPlatform::new(Arc::new(authority), identity, boot_events())
            .context("cannot start the simulated TD")?,
    );
    let compose_hash = dstack_compose::compose_hash(app_compose.as_bytes());
    let app_id = app_id
        .unwrap_or_else(|| dstack_compose::app_id(&compose_hash))
        .to_vec();
    let instance_seed = match provider {
        Provider::Kms { instance_seed, .. } => *instance_seed,
        Provider::None => {
            let mut seed = [0u8; 20];
            rand::rngs::OsRng.fill_bytes(&mut seed);
            seed
        }
    };
    // Upstream: SHA-256(seed ‖ app-id)[..20], or empty with no_instance_id.
    let instance_id = if app.no_instance_id {
        Vec::new()
    } else {
        Sha256::new()
            .chain_update(instance_seed)
            .chain_update(&app_id)
            .finalize()[..20]
            .to_vec()
    };
    let os_image_hash = Sha256::digest(b"dstack-rs simulator OS image").to_vec();
    let pinned = hex::decode(app.key_provider_id.trim())
        .context("the app-compose's key_provider_id is not hex")?;
    let (keys, key_provider_info, kms_events) = match provider {
        Provider::Kms { root, .. } => {
            let spki = root.ca_spki()?;
            if !pinned.is_empty() && pinned != spki {
                anyhow::bail!(
                    "key_provider_id: the app pins KMS {}, but the simulator's KMS root is {} (give --kms-root that KMS's state directory)",
                    hex::encode(&pinned),
                    hex::encode(&spki)
                );
            }
            let released = root
                .app_keys(&app_id, &instance_id)
                .context("cannot derive the app's keys from the KMS root")?;
            let keys = AppKeys::from_kms(released.released())?;
            // The guest measures the image the KMS vouched for before the provider.
            let events = vec![(names::OS_IMAGE_HASH, os_image_hash.clone())];
            (keys, key_provider::kms(&spki), events)
        }
        Provider::None => {
            if !pinned.is_empty() {
                anyhow::bail!(
                    "key_provider_id: the app pins a key provider, but asks for none (no provider)"
                );
            }
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(&mut seed[..]);
            let keys = AppKeys::from_seed(&seed).context("cannot derive app keys")?;
            (keys, key_provider::NONE.to_owned(), Vec::new())
        }
    };
    let mut events: Vec<(&str, Vec<u8>)> = vec![
        (names::SYSTEM_PREPARING, vec![]),
        (names::APP_ID, app_id.clone()),
        (names::COMPOSE_HASH, compose_hash.to_vec()),
        (names::INSTANCE_ID, instance_id.clone()),
        (names::BOOT_MR_DONE, vec![]),
    ];
    events.extend(kms_events);
    events.extend([
        (names::KEY_PROVIDER, key_provider_info.clone().into_bytes()),
        (names::STORAGE_FS, b"ext4".to_vec()),
        (names::SYSTEM_READY, vec![]),
    ]);
    for (name, payload) in events {
        platform
            .emit_event(&RuntimeEvent {
                name: name.to_owned(),
                payload,
            })
            .with_context(|| format!("cannot emit boot event {name}"))?;
    }
    let vm_config = serde_json::json!({
        "spec_version": 1,
        "os_image_hash": hex::encode(&os_image_hash),
        "cpu_count": 2,
        "memory_size": 2u64 << 30,
    })
    .to_string();
    Ok(Booted {
        platform,
        app: AppInfo {
            app_id,
            instance_id,
            compose_hash,
            app_name: app.name,
            app_compose,
            vm_config,
            os_image_hash,
            key_provider_info,
            cloud_vendor: "dstack-rs".to_owned(),
            cloud_product: "simulator".to_owned(),
        },
        keys,
    })
}

fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))
}

/// Runs `dstack simulator` until interrupted.
pub(crate) async fn run(args: SimulatorArgs) -> anyhow::Result<()> {
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    let state = StateDir::open(&state_dir)?;
    let authority = state.authority()?;
    if args.print_root {
        print!("{}", authority.root_pem());
        return Ok(());
    }
    if args.print_collateral {
        let collateral = authority
            .collateral(chrono::Utc::now())
            .context("cannot issue collateral")?;
        println!("{}", collateral.to_json());
        return Ok(());
    }
    let app_compose = match &args.app_compose {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => DEFAULT_APP_COMPOSE.to_owned(),
    };
    let provider = select_provider(&parse_app(&app_compose)?, args.kms_root.as_deref(), &state)?;
    let keys_from = match (&provider, &args.kms_root) {
        (Provider::Kms { root, .. }, dir) => format!(
            "KMS root {} (key_provider_id {}, k256 public key {})",
            dir.as_deref().unwrap_or(&state.local_kms_dir()).display(),
            hex::encode(root.ca_spki()?),
            hex::encode(root.k256_public_key())
        ),
        (Provider::None, _) => {
            "none: the app-compose asks for no key provider, so its keys change on every run"
                .to_owned()
        }
    };
    let booted = boot(authority, app_compose, args.app_id, &provider)?;
    let app_id = hex::encode(&booted.app.app_id);
    let instance_id = hex::encode(&booted.app.instance_id);
    let platform: Arc<dyn Platform> = booted.platform;
    let (app, keys) = (booted.app, booted.keys);
    let api = Arc::new(
        tokio::task::spawn_blocking(move || GuestApi::new(platform, app, keys))
            .await
            .context("setup task failed")?
            .context("cannot start the guest API")?,
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dstack_sock = args.dir.join("dstack.sock");
    let tappd_sock = args.dir.join("tappd.sock");
    let dstack = bind(&dstack_sock)?;
    let tappd = bind(&tappd_sock)?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    println!("dstack simulator: app {app_id}, instance {instance_id}");
    println!("  keys: {keys_from}");
    println!("  state: {}", absolute(state.path()).display());
    println!(
        "  export DSTACK_SIMULATOR_ENDPOINT={}",
        absolute(&dstack_sock).display()
    );
    println!(
        "  export TAPPD_SIMULATOR_ENDPOINT={}",
        absolute(&tappd_sock).display()
    );
    let sim = format!(
        "dstack simulator --state-dir {}",
        absolute(state.path()).display()
    );
    println!(
        "  verify its quotes with: dstack quote verify QUOTE --root <({sim} --print-root) --collateral <({sim} --print-collateral)"
    );
    let tappd_task = tokio::spawn(api.clone().serve(tappd, Flavor::Tappd));
    api.serve(dstack, Flavor::Dstack).await;
    tappd_task.abort();
    anyhow::bail!("the dstack.sock listener failed")
}

#[cfg(test)]
mod tests {
    use dstack_attest::eventlog::check_replay;
    use dstack_keys::KeyAlgorithm;
    use dstack_keys::kms::{KMS_ISSUED_PREFIX, recover_signer};

    use super::*;

    fn root() -> KmsRootKeys {
        let ca = dstack_keys::derive_p256_key_pair_from_bytes(&[0x5a; 32], &[b"test ca"]).unwrap();
        KmsRootKeys::new(ca, &[0x6b; 32]).unwrap()
    }

    fn kms(seed: u8) -> Provider {
        Provider::Kms {
            root: root(),
            instance_seed: [seed; 20],
        }
    }

    fn runtime_events(booted: &Booted) -> Vec<(String, Vec<u8>)> {
        let events = booted.platform.event_log().unwrap();
        let rtmrs = dstack_attest::Rtmrs(booted.platform.identity().rtmr);
        check_replay(&events, &rtmrs).unwrap();
        events
            .into_iter()
            .filter(|e| e.is_runtime())
            .map(|e| (e.event, e.event_payload))
            .collect()
    }

    #[test]
    fn kms_boot_measures_the_root_and_releases_its_keys() {
        let booted = boot(
            SimAuthority::generate().unwrap(),
            DEFAULT_APP_COMPOSE.into(),
            None,
            &kms(1),
        )
        .unwrap();
        let events = runtime_events(&booted);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        // The guest's order in KMS mode: os-image-hash before key-provider.
        assert_eq!(
            names,
            [
                "system-preparing",
                "app-id",
                "compose-hash",
                "instance-id",
                "boot-mr-done",
                "os-image-hash",
                "key-provider",
                "storage-fs",
                "system-ready"
            ]
        );
        let spki = root().ca_spki().unwrap();
        let provider = format!(r#"{{"name":"kms","id":"{}"}}"#, hex::encode(&spki));
        assert_eq!(events[6].1, provider.as_bytes());
        assert_eq!(booted.app.key_provider_info, provider);
        assert_eq!(events[5].1, booted.app.os_image_hash);
        let app = &booted.app;
        assert_eq!(app.app_name, "dstack-simulator-app");
        assert_eq!(&app.compose_hash[..20], &app.app_id[..]);
        assert_eq!(events[1].1, app.app_id);
        let expected_instance = Sha256::new()
            .chain_update([1u8; 20])
            .chain_update(&app.app_id)
            .finalize();
        assert_eq!(app.instance_id, expected_instance[..20]);
        assert_eq!(events[3].1, app.instance_id);

        // GetKey: HKDF over the k256 key the root gives this app, and the
        // root's signature as signature_chain[1].
        let released = root().app_keys(&app.app_id, &app.instance_id).unwrap();
        let got = booted
            .keys
            .get_key("wallet/0", "ethereum", KeyAlgorithm::Secp256k1)
            .unwrap();
        let expected = dstack_keys::derive_key(&released.k256_key[..], &[b"wallet/0"], 32).unwrap();
        assert_eq!(&got.key[..], &expected[..]);
        assert_eq!(got.signature_chain[1], released.k256_signature);
        let signer = recover_signer(
            &got.signature_chain[1],
            KMS_ISSUED_PREFIX,
            &app.app_id,
            &[&booted.keys.k256_public_key()],
        )
        .unwrap();
        assert_eq!(signer, root().k256_public_key());
        assert_eq!(booted.keys.disk_crypt_key(), &released.disk_crypt_key[..]);
        assert_eq!(booted.keys.env_crypt_key(), &released.env_crypt_key[..]);
    }

    #[test]
    fn the_same_state_boots_the_same_td_with_the_same_keys() {
        let boot_with = |provider: &Provider| {
            boot(
                SimAuthority::generate().unwrap(),
                DEFAULT_APP_COMPOSE.into(),
                None,
                provider,
            )
            .unwrap()
        };
        let (a, b, other) = (boot_with(&kms(1)), boot_with(&kms(1)), boot_with(&kms(2)));
        let key = |booted: &Booted| {
            booted
                .keys
                .get_key("p", "q", KeyAlgorithm::Ed25519)
                .unwrap()
                .key
        };
        assert_eq!(a.platform.identity().rtmr, b.platform.identity().rtmr);
        assert_eq!(a.app.instance_id, b.app.instance_id);
        assert_eq!(key(&a), key(&b));
        assert_eq!(a.keys.disk_crypt_key(), b.keys.disk_crypt_key());
        // Another instance of the same app: another instance-id and disk
        // key, the same app keys (as a KMS gives them).
        assert_ne!(a.app.instance_id, other.app.instance_id);
        assert_ne!(
            a.platform.identity().rtmr[3],
            other.platform.identity().rtmr[3]
        );
        assert_ne!(a.keys.disk_crypt_key(), other.keys.disk_crypt_key());
        assert_eq!(key(&a), key(&other));
        // RTMR0-2 never depend on the run.
        let none = boot(
            SimAuthority::generate().unwrap(),
            DEFAULT_APP_COMPOSE.replace(r#""kms_enabled":true"#, r#""kms_enabled":false"#),
            None,
            &Provider::None,
        )
        .unwrap();
        assert_eq!(
            a.platform.identity().rtmr[..3],
            none.platform.identity().rtmr[..3]
        );
    }

    #[test]
    fn a_none_app_is_measured_as_none_with_fresh_keys() {
        let compose =
            DEFAULT_APP_COMPOSE.replace(r#""kms_enabled":true"#, r#""kms_enabled":false"#);
        let boot_none = || {
            boot(
                SimAuthority::generate().unwrap(),
                compose.clone(),
                None,
                &Provider::None,
            )
            .unwrap()
        };
        let (a, b) = (boot_none(), boot_none());
        let events = runtime_events(&a);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"os-image-hash"), "{names:?}");
        let provider = events.iter().find(|(n, _)| n == "key-provider").unwrap();
        assert_eq!(provider.1, br#"{"name":"none","id":""}"#);
        assert_eq!(a.app.key_provider_info, r#"{"name":"none","id":""}"#);
        assert_ne!(a.keys.k256_key(), b.keys.k256_key());
        assert_ne!(a.app.instance_id, b.app.instance_id);
        let got = a.keys.get_key("p", "q", KeyAlgorithm::Secp256k1).unwrap();
        assert!(got.signature_chain[1].is_empty());
    }

    #[test]
    fn app_id_and_pins_are_honoured() {
        let booted = boot(
            SimAuthority::generate().unwrap(),
            DEFAULT_APP_COMPOSE.into(),
            Some([0xaa; 20]),
            &kms(1),
        )
        .unwrap();
        assert_eq!(booted.app.app_id, [0xaa; 20]);
        assert_eq!(runtime_events(&booted)[1].1, [0xaa; 20]);
        let released = root()
            .app_keys(&[0xaa; 20], &booted.app.instance_id)
            .unwrap();
        assert_eq!(&booted.keys.k256_key()[..], &released.k256_key[..]);

        let spki = hex::encode(root().ca_spki().unwrap());
        let pin = |id: &str| {
            DEFAULT_APP_COMPOSE.replace(
                r#""kms_enabled":true,"#,
                &format!(r#""key_provider_id":"{id}","kms_enabled":true,"#),
            )
        };
        boot(SimAuthority::generate().unwrap(), pin(&spki), None, &kms(1)).unwrap();
        let err = boot(
            SimAuthority::generate().unwrap(),
            pin("abcd"),
            None,
            &kms(1),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("key_provider_id"), "{err}");
    }

    #[test]
    fn the_compose_chooses_the_provider() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let app = |extra: &str| {
            parse_app(&DEFAULT_APP_COMPOSE.replace(r#""kms_enabled":true"#, extra)).unwrap()
        };
        let kms_app = app(r#""kms_enabled":true"#);
        assert!(matches!(
            select_provider(&kms_app, None, &state).unwrap(),
            Provider::Kms { .. }
        ));
        let none_app = app(r#""kms_enabled":false"#);
        assert!(matches!(
            select_provider(&none_app, None, &state).unwrap(),
            Provider::None
        ));
        let err = select_provider(&none_app, Some(tmp.path()), &state)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--kms-root"), "{err}");
        let local = app(r#""key_provider":"local""#);
        let err = select_provider(&local, None, &state).err().unwrap();
        assert!(err.to_string().contains("local"), "{err}");
        // --kms-root names the directory it could not use.
        let missing = tmp.path().join("missing");
        let err = select_provider(&kms_app, Some(&missing), &state)
            .err()
            .unwrap();
        assert!(
            matches!(
                err.downcast_ref::<state::StateError>(),
                Some(state::StateError::KmsRoot { .. })
            ),
            "{err:#}"
        );
        assert!(
            format!("{err:#}").contains(&missing.display().to_string()),
            "{err:#}"
        );
    }

    #[test]
    fn app_id_flag_is_20_hex_bytes() {
        assert_eq!(parse_app_id(&"ab".repeat(20)).unwrap(), [0xab; 20]);
        assert_eq!(
            parse_app_id(&format!("0x{}", "01".repeat(20))).unwrap(),
            [1; 20]
        );
        assert!(parse_app_id("abcd").unwrap_err().contains("20 bytes"));
        assert!(parse_app_id("zz").is_err());
    }
}
