//! `dstack simulator`: upstream dstack's guest API (`dstack.sock`,
//! `tappd.sock`) on the host, backed by the simulated TEE, so apps and the
//! official SDKs run against it with
//! `DSTACK_SIMULATOR_ENDPOINT=<dir>/dstack.sock`.
//!
//! The TD boots like a dstack guest with key provider `none`: synthetic
//! RTMR0-2 events, then the RTMR3 boot events in upstream order, and keys
//! from a fresh random seed each run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dstack_attest::eventlog::{
    EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_PLATFORM_FIRMWARE_BLOB2,
    EV_EFI_VARIABLE_DRIVER_CONFIG, EV_PLATFORM_CONFIG_FLAGS, EV_SEPARATOR, names,
};
use dstack_attest::{Event, Platform, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity};
use dstack_guest_api::{AppInfo, Flavor, GuestApi};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha384};

/// Arguments of `dstack simulator`.
#[derive(Debug, Args)]
pub(crate) struct SimulatorArgs {
    /// Directory for dstack.sock and tappd.sock.
    #[arg(long, default_value = "./dstack-sim")]
    dir: PathBuf,
    /// The simulated TEE's authority (root CA and keys); created if missing.
    /// Default: $XDG_DATA_HOME/dstack/simulator/sim-tee.json.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The app-compose.json to measure (default: a small generated one).
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

/// The default state path: $XDG_DATA_HOME or ~/.local/share, then
/// dstack/simulator/sim-tee.json.
fn default_state() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --state")?)
            .join(".local/share"),
    };
    Ok(base.join("dstack/simulator/sim-tee.json"))
}

fn load_authority(path: &Path) -> anyhow::Result<SimAuthority> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    SimAuthority::load_or_generate(path)
        .with_context(|| format!("cannot load the simulated TEE from {}", path.display()))
}

/// A small app-compose.json, in the SDKs' canonical form (sorted keys,
/// compact separators).
const DEFAULT_APP_COMPOSE: &str = concat!(
    r#"{"docker_compose_file":"services:\n  app:\n    image: busybox\n","#,
    r#""gateway_enabled":false,"kms_enabled":false,"manifest_version":2,"#,
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

/// Everything the simulated boot decided.
struct Booted {
    platform: Arc<SimPlatform>,
    app: AppInfo,
}

fn boot(authority: SimAuthority, app_compose: String) -> anyhow::Result<Booted> {
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
    let compose_hash: [u8; 32] = Sha256::digest(app_compose.as_bytes()).into();
    let app_id = compose_hash[..20].to_vec();
    let mut seed = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let instance_id = Sha256::new()
        .chain_update(seed)
        .chain_update(&app_id)
        .finalize()[..20]
        .to_vec();
    let key_provider_info = r#"{"name":"none","id":""}"#.to_owned();
    let events: [(&str, Vec<u8>); 8] = [
        (names::SYSTEM_PREPARING, vec![]),
        (names::APP_ID, app_id.clone()),
        (names::COMPOSE_HASH, compose_hash.to_vec()),
        (names::INSTANCE_ID, instance_id.clone()),
        (names::BOOT_MR_DONE, vec![]),
        (names::KEY_PROVIDER, key_provider_info.clone().into_bytes()),
        (names::STORAGE_FS, b"ext4".to_vec()),
        (names::SYSTEM_READY, vec![]),
    ];
    for (name, payload) in events {
        platform
            .emit_event(&RuntimeEvent {
                name: name.to_owned(),
                payload,
            })
            .with_context(|| format!("cannot emit boot event {name}"))?;
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&app_compose).context("app-compose is not JSON")?;
    let app_name = parsed
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    let os_image_hash = Sha256::digest(b"dstack-rs simulator OS image").to_vec();
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
            app_name,
            app_compose,
            vm_config,
            os_image_hash,
            key_provider_info,
            cloud_vendor: "dstack-rs".to_owned(),
            cloud_product: "simulator".to_owned(),
        },
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
    let state = match args.state {
        Some(path) => path,
        None => default_state()?,
    };
    let authority = load_authority(&state)?;
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
    let booted = boot(authority, app_compose)?;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut seed[..]);
    let keys = dstack_keys::AppKeys::from_seed(&seed).context("cannot derive app keys")?;
    let app_id = hex::encode(&booted.app.app_id);
    let platform: Arc<dyn Platform> = booted.platform;
    let api = Arc::new(
        tokio::task::spawn_blocking(move || GuestApi::new(platform, booted.app, keys))
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
    println!(
        "dstack simulator: app {app_id}, simulated TEE {}",
        state.display()
    );
    println!(
        "  export DSTACK_SIMULATOR_ENDPOINT={}",
        absolute(&dstack_sock).display()
    );
    println!(
        "  export TAPPD_SIMULATOR_ENDPOINT={}",
        absolute(&tappd_sock).display()
    );
    println!(
        "  verify its quotes with: dstack quote verify QUOTE --root <(dstack simulator --print-root) --collateral <(dstack simulator --print-collateral)"
    );
    let tappd_task = tokio::spawn(api.clone().serve(tappd, Flavor::Tappd));
    api.serve(dstack, Flavor::Dstack).await;
    tappd_task.abort();
    anyhow::bail!("the dstack.sock listener failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dstack_attest::eventlog::check_replay;

    #[test]
    fn simulated_boot_replays_and_measures_the_compose() {
        let booted = boot(
            SimAuthority::generate().unwrap(),
            DEFAULT_APP_COMPOSE.into(),
        )
        .unwrap();
        let events = booted.platform.event_log().unwrap();
        let rtmrs = dstack_attest::Rtmrs(booted.platform.identity().rtmr);
        check_replay(&events, &rtmrs).unwrap();
        let runtime: Vec<&str> = events
            .iter()
            .filter(|e| e.is_runtime())
            .map(|e| e.event.as_str())
            .collect();
        assert_eq!(
            runtime,
            [
                "system-preparing",
                "app-id",
                "compose-hash",
                "instance-id",
                "boot-mr-done",
                "key-provider",
                "storage-fs",
                "system-ready"
            ]
        );
        assert_eq!(booted.app.app_name, "dstack-simulator-app");
        assert_eq!(&booted.app.compose_hash[..20], &booted.app.app_id[..]);
        // RTMR0-2 do not depend on the run.
        let again = boot(
            SimAuthority::generate().unwrap(),
            DEFAULT_APP_COMPOSE.into(),
        )
        .unwrap();
        assert_eq!(
            again.platform.identity().rtmr[..3],
            booted.platform.identity().rtmr[..3]
        );
    }
}
