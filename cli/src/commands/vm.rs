//! `dstack vm ...`: deploy and manage CVMs through the supervisor.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dstack_compose::{AppCompose, Compose};
use dstack_proto::supervisor::{DeployRequest, PortMapping, VmInfo, VmState, VmSummary};
use hyper::Method;

use super::Failure;
use crate::client::Client;

mod check;
mod context;
mod dockerignore;
mod env;

/// VM commands.
#[derive(Debug, Subcommand)]
pub(crate) enum VmCommand {
    /// Deploy a compose file (or an app-compose.json) as a new CVM and wait for it to run.
    Deploy(Box<DeployArgs>),
    /// List VMs.
    Ls(LsArgs),
    /// Show one VM: state, boot progress, measurements, containers.
    Info(VmArgs),
    /// Show a VM's container logs (or its serial console with --serial).
    Logs(LogsArgs),
    /// Start a stopped VM.
    Start(StartArgs),
    /// Stop a VM gracefully (the guest stops its services and unmounts its disk).
    Stop(VmArgs),
    /// Remove a VM and everything stored for it.
    Rm(RmArgs),
    /// Print an app's env-encryption public key from its KMS, once its
    /// signature checks out: the key the SDKs' encrypt_env_vars take.
    EnvKey(EnvKeyArgs),
}

/// Arguments of `dstack vm env-key`.
#[derive(Debug, Args)]
pub(crate) struct EnvKeyArgs {
    /// The app: its app-compose.json (or compose YAML, with --name) as
    /// `deploy` would send it.
    file: PathBuf,
    /// The name a compose YAML is wrapped under (as `deploy --name`).
    #[arg(long)]
    name: Option<String>,
    /// The app id, if the deploy pins one (`deploy --app-id`).
    #[arg(long)]
    app_id: Option<String>,
    /// The KMS, as guests reach it [default: the supervisor's --kms-url].
    #[arg(long, default_value = "")]
    kms: String,
    /// Trusted signers of the KMS's env keys (as `deploy --kms-signer`).
    #[arg(
        long = "kms-signer",
        value_name = "HEX",
        env = "DSTACK_KMS_SIGNER",
        value_delimiter = ',',
        value_parser = env::parse_signer
    )]
    kms_signers: Vec<dstack_envcrypt::Signer>,
}

/// Arguments of `dstack vm deploy`.
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// docker-compose YAML, or app-compose.json.
    file: PathBuf,
    /// VM name (default: the file's directory name).
    #[arg(long)]
    name: Option<String>,
    /// OS image (default: the newest).
    #[arg(long, default_value = "")]
    image: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpu: u32,
    /// Memory, e.g. 1024, 1024M or 2G.
    #[arg(long, default_value = "1G")]
    memory: String,
    /// Data disk size in GiB.
    #[arg(long, default_value_t = 4)]
    disk: u32,
    /// Publish a guest port: [ADDR:]HOST_PORT:VM_PORT[/udp] (repeatable).
    #[arg(long = "port", short = 'p')]
    ports: Vec<String>,
    /// KMS the app gets its keys from, as the guest reaches it
    /// (https://HOST:PORT; repeatable, tried in order) [default: the
    /// supervisor's --kms-url].
    #[arg(long)]
    kms: Vec<String>,
    /// Gateway the app registers with when its app-compose sets
    /// gateway_enabled, as the guest reaches it (https://HOST:PORT[/PATH];
    /// repeatable, tried in order) [default: the supervisor's --gateway-url].
    #[arg(long = "gateway-url", value_name = "URL")]
    gateway_urls: Vec<String>,
    /// Deploy as this app (hex app id, 0x optional; on chain, the app's
    /// contract address): with --kms, an upgrade of that app, which keeps
    /// its keys if the KMS allows the new compose hash.
    #[arg(long)]
    app_id: Option<String>,
    /// Encrypt the variables of this .env file (docker compose syntax) to
    /// the app's env key from its KMS, checked against --kms-signer, and
    /// give the guest only the ciphertext. The app must get its keys from
    /// a KMS and list the variables in its app-compose's allowed_envs.
    #[arg(long, value_name = "PATH", conflicts_with = "encrypted_env")]
    env_file: Option<PathBuf>,
    /// A trusted signer of the KMS's env keys: its k256 public key
    /// (compressed, what `dstack kms info` shows) or its 0x address;
    /// repeatable [default: the KMS's own GetMeta key, with a notice].
    #[arg(
        long = "kms-signer",
        value_name = "HEX",
        env = "DSTACK_KMS_SIGNER",
        value_delimiter = ',',
        value_parser = env::parse_signer
    )]
    kms_signers: Vec<dstack_envcrypt::Signer>,
    /// A ready encrypted env (hex text, as the dstack SDKs'
    /// encrypt_env_vars return it, or raw binary), passed on as it is.
    #[arg(long, value_name = "PATH")]
    encrypted_env: Option<PathBuf>,
    /// Let the first boot format a data disk that holds something other
    /// than zeros or a LUKS header (an old plain disk); a LUKS disk is
    /// never reformatted.
    #[arg(long)]
    format_nonempty_disk: bool,
    /// Create the VM without starting it (`dstack vm start` starts it).
    #[arg(long)]
    stopped: bool,
    /// Only check the file, as the guest would read it (no supervisor or
    /// VM needed): list every key it would ignore or refuse, with the
    /// reason, and exit non-zero when it would refuse the file. Variables
    /// come from --env-file when given.
    #[arg(long)]
    check: bool,
    /// Return once the VM is created, without waiting for the app.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the app, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print the VM as JSON.
    #[arg(long)]
    json: bool,
}

/// `--json` only.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A VM id or name.
#[derive(Debug, Args)]
pub(crate) struct VmArgs {
    /// VM id or name.
    vm: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `dstack vm start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// VM id or name.
    vm: String,
    /// Let this boot (only) format a data disk that holds something other
    /// than zeros or a LUKS header; a LUKS disk is never reformatted.
    #[arg(long)]
    format_nonempty_disk: bool,
}

/// Arguments of `dstack vm rm`.
#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// VM id or name.
    vm: String,
    /// Kill the VM instead of stopping it gracefully.
    #[arg(long)]
    force: bool,
}

/// Arguments of `dstack vm logs`.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// VM id or name.
    vm: String,
    /// Keep printing new lines.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this compose service.
    #[arg(long)]
    service: Option<String>,
    /// The serial console instead of container output.
    #[arg(long)]
    serial: bool,
    /// How many past lines.
    #[arg(long, short = 'n', default_value_t = 200)]
    lines: u32,
}

pub(crate) async fn run(cmd: VmCommand, client: Client) -> Result<(), Failure> {
    match cmd {
        VmCommand::Deploy(args) => deploy(*args, &client).await,
        VmCommand::Ls(args) => ls(args, &client).await,
        VmCommand::Info(args) => info(args, &client).await,
        VmCommand::Logs(args) => logs(args, &client).await,
        VmCommand::EnvKey(args) => env_key(args, &client).await,
        VmCommand::Start(args) => {
            let query = if args.format_nonempty_disk {
                "?format_nonempty_disk=true"
            } else {
                ""
            };
            let vm: VmInfo = client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{}/start{query}", enc(&args.vm)),
                    None::<&()>,
                )
                .await?;
            println!("started {} ({})", vm.summary.name, vm.summary.id);
            if args.format_nonempty_disk {
                println!("  this boot may format a data disk that is neither empty nor LUKS");
            }
            Ok(())
        }
        VmCommand::Stop(args) => {
            let vm: VmInfo = client
                .call(
                    Method::POST,
                    &format!("/v1/vms/{}/stop", enc(&args.vm)),
                    None::<&()>,
                )
                .await?;
            println!("stopped {} ({})", vm.summary.name, vm.summary.id);
            Ok(())
        }
        VmCommand::Rm(args) => {
            let force = if args.force { "?force=true" } else { "" };
            client
                .call_empty(Method::DELETE, &format!("/v1/vms/{}{force}", enc(&args.vm)))
                .await?;
            println!("removed {}", args.vm);
            Ok(())
        }
    }
}

/// Percent-encode a path segment (names are restricted, but be safe).
fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn parse_memory(text: &str) -> anyhow::Result<u32> {
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('G' | 'g') => (&t[..t.len() - 1], 1024),
        Some('M' | 'm') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: u32 = num
        .parse()
        .with_context(|| format!("--memory {text:?} is not a size like 1024, 512M or 2G"))?;
    n.checked_mul(mult).context("--memory is too large")
}

fn parse_port(text: &str) -> anyhow::Result<PortMapping> {
    // docker's suffix: `/udp` publishes a UDP port (e.g. a WireGuard endpoint).
    let (mapping, protocol) = match text.rsplit_once('/') {
        Some((mapping, "udp")) => (mapping, "udp"),
        Some((mapping, "tcp")) => (mapping, "tcp"),
        Some((_, other)) => bail!("--port {text:?}: {other:?} is not tcp or udp"),
        None => (text, "tcp"),
    };
    let parts: Vec<&str> = mapping.split(':').collect();
    let port = |p: &str| -> anyhow::Result<u16> {
        p.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("--port {text:?}: {p:?} is not a port"))
    };
    let (host_address, host_port, vm_port) = match parts.as_slice() {
        [host, vm] => ("127.0.0.1".to_string(), port(host)?, port(vm)?),
        [addr, host, vm] => (addr.to_string(), port(host)?, port(vm)?),
        _ => bail!("--port {text:?} is not [ADDR:]HOST_PORT:VM_PORT[/udp]"),
    };
    Ok(PortMapping {
        protocol: protocol.into(),
        host_address,
        host_port,
        vm_port,
    })
}

fn default_name(file: &Path) -> String {
    let dir = file.canonicalize().ok().and_then(|p| {
        p.parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    });
    let raw = dir.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let cleaned: String = raw
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let trimmed = cleaned.trim_matches('-').to_string();
    if trimmed.is_empty() {
        "app".into()
    } else {
        trimmed
    }
}

/// The compose hash `dstack vm deploy FILE [--name NAME]` deploys with: the
/// hash of the exact app-compose.json bytes the VM is given.
pub(crate) fn compose_hash_of(file: &Path, name: Option<&str>) -> anyhow::Result<[u8; 32]> {
    let name = name.map_or_else(|| default_name(file), str::to_owned);
    Ok(dstack_compose::compose_hash(
        app_compose(file, &name, false, true)?
            .app_compose
            .as_bytes(),
    ))
}

/// What a deploy hands the supervisor: the app-compose.json bytes, and the
/// packed build contexts they measure.
struct AppBundle {
    app_compose: String,
    contexts: Vec<context::ServiceContext>,
}

/// Read the file: app-compose.json as-is, or wrap a compose YAML into one;
/// either way, pack the build contexts it ships (a compose YAML's are
/// measured into the app-compose it is wrapped in; an app-compose.json's
/// must be the ones it measures). With `encrypted_env` the compose's
/// `${VAR}` references are the guest's to resolve (with the decrypted
/// variables), so an app-compose.json is checked without its compose being
/// interpolated here.
fn app_compose(
    file: &Path,
    name: &str,
    encrypted_env: bool,
    quiet: bool,
) -> anyhow::Result<AppBundle> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let invalid = || format!("{} is not a valid app-compose.json", file.display());
    if text.trim_start().starts_with('{') {
        let manifest = AppCompose::parse_manifest(&text).with_context(invalid)?;
        let yaml = manifest.docker_compose_file.as_deref().unwrap_or_default();
        let contexts = match Compose::parse(yaml) {
            Ok(compose) => {
                let measured: BTreeSet<String> = manifest.build_contexts.keys().cloned().collect();
                let contexts = pack(file, &compose, &measured, quiet)?;
                for context in &contexts {
                    context::check_measured(context, &manifest.build_contexts)?;
                }
                contexts
            }
            // With no context to pack, the checks below name what is wrong
            // (or, for a compose that needs the encrypted env's variables,
            // the guest reads it).
            Err(_) if manifest.build_contexts.is_empty() => Vec::new(),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{}: cannot read its compose file to pack the build contexts",
                    file.display()
                )));
            }
        };
        let checked = if encrypted_env {
            AppCompose::parse_manifest(&text).map(drop)
        } else {
            AppCompose::parse(&text).map(drop)
        };
        checked.with_context(invalid)?;
        Ok(AppBundle {
            app_compose: text,
            contexts,
        })
    } else {
        let not_valid = || format!("{} is not a valid compose file", file.display());
        let compose = Compose::parse(&text).with_context(not_valid)?;
        let contexts = pack(file, &compose, &BTreeSet::new(), quiet)?;
        let measured: BTreeMap<String, String> = contexts
            .iter()
            .map(|c| (c.service.clone(), c.packed.sha256.clone()))
            .collect();
        let app_compose = dstack_compose::app_compose_with_build_contexts(name, &text, &measured)
            .with_context(not_valid)?;
        Ok(AppBundle {
            app_compose,
            contexts,
        })
    }
}

/// A context larger than this gets a progress bar while it is packed.
const PACK_PROGRESS_BYTES: u64 = 4 << 20;

/// A progress bar per context packed, for contexts big enough to wait for.
fn pack_progress(quiet: bool) -> impl FnMut(&str, u64, u64) {
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    move |service: &str, done: u64, total: u64| {
        if quiet || total < PACK_PROGRESS_BYTES {
            return;
        }
        if bar.as_ref().is_none_or(|(s, _)| s != service) {
            let new = indicatif::ProgressBar::new(total);
            new.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            new.set_message(format!("packing the build context of {service}"));
            bar = Some((service.to_owned(), new));
        }
        if let Some((_, bar)) = &bar {
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
            }
        }
    }
}

/// Packs the build contexts `compose` ships; the first refusal is the error.
fn pack(
    file: &Path,
    compose: &Compose,
    measured: &BTreeSet<String>,
    quiet: bool,
) -> anyhow::Result<Vec<context::ServiceContext>> {
    let mut contexts = Vec::new();
    let mut progress = pack_progress(quiet);
    for (_, packed) in context::pack_services(file, compose, measured, &mut progress) {
        contexts.push(packed?);
    }
    Ok(contexts)
}

/// Sizes for people: 1.5 KiB, 12.0 MiB.
fn human_bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{:.1} MiB", f / 1_048_576.0),
    }
}

/// Uploads each packed context to the supervisor, which keeps it for the
/// deploy that follows.
async fn upload(
    client: &Client,
    contexts: Vec<context::ServiceContext>,
    quiet: bool,
) -> Result<(), Failure> {
    for context in contexts {
        if !quiet {
            eprintln!(
                "shipping the build context of {}: {} ({} files, {} packed, sha256 {})",
                context.service,
                context.dir.display(),
                context.packed.files,
                human_bytes(context.packed.tar.len() as u64),
                context.packed.sha256
            );
        }
        let path = dstack_proto::blob::blob_path(&context.packed.sha256);
        client.put_bytes(&path, context.packed.tar).await?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn deploy(args: DeployArgs, client: &Client) -> Result<(), Failure> {
    if args.check {
        return check::check_file(&args.file, args.env_file.as_deref(), args.json)?
            .finish(&args.file, args.json);
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.file));
    let encrypted = args.env_file.is_some() || args.encrypted_env.is_some();
    let AppBundle {
        app_compose,
        contexts,
    } = app_compose(&args.file, &name, encrypted, args.json)?;
    let app_id = args
        .app_id
        .as_deref()
        .map(|id| id.strip_prefix("0x").unwrap_or(id).to_owned());
    let encrypted_env = env::encrypted_env(
        &env::EnvOptions {
            env_file: args.env_file.as_deref(),
            encrypted_env: args.encrypted_env.as_deref(),
            signers: &args.kms_signers,
            kms_url: args.kms.first().map_or("", String::as_str),
            app_id: app_id.as_deref(),
        },
        &app_compose,
        client,
    )
    .await?;
    let request = DeployRequest {
        app_compose,
        name,
        image: args.image.clone(),
        vcpu: args.vcpu,
        memory_mb: parse_memory(&args.memory)?,
        disk_gb: args.disk,
        ports: args
            .ports
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<_>>()?,
        encrypted_env,
        user_config: String::new(),
        stopped: args.stopped,
        kms_urls: args.kms.clone(),
        gateway_urls: args.gateway_urls.clone(),
        // An on-chain app id is a contract address, usually written with 0x.
        app_id: app_id.unwrap_or_default(),
        format_nonempty_disk: args.format_nonempty_disk,
    };
    upload(client, contexts, args.json).await?;
    let vm: VmInfo = client.call(Method::POST, "/v1/vms", Some(&request)).await?;
    if !args.json {
        eprintln!(
            "created {} ({}), compose-hash {}",
            vm.summary.name, vm.summary.id, vm.compose_hash
        );
    }
    if args.no_wait || args.stopped {
        print_deployed(&vm, args.json);
        return Ok(());
    }
    let vm = wait_running(
        client,
        &vm.summary.id,
        Duration::from_secs(args.timeout),
        args.json,
    )
    .await?;
    print_deployed(&vm, args.json);
    Ok(())
}

async fn env_key(args: EnvKeyArgs, client: &Client) -> Result<(), Failure> {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.file));
    let app_compose = app_compose(&args.file, &name, true, true)?.app_compose;
    let app_id = env::deploy_app_id(args.app_id.as_deref(), &app_compose)?;
    let key = env::checked_env_key(&app_id, &args.kms_signers, &args.kms, client).await?;
    println!("{}", hex::encode(key));
    Ok(())
}

fn print_deployed(vm: &VmInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(vm).unwrap_or_default());
        return;
    }
    println!("{} is {}", vm.summary.name, state_name(vm.summary.state));
    for p in &vm.summary.ports {
        println!(
            "  http://{}:{} -> guest port {}",
            p.host_address, p.host_port, p.vm_port
        );
    }
}

/// Poll the VM, showing boot progress, until the guest reports `running`.
async fn wait_running(
    client: &Client,
    id: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<VmInfo, Failure> {
    let start = Instant::now();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last_phase = String::new();
    loop {
        let vm: VmInfo = client
            .call(Method::GET, &format!("/v1/vms/{}", enc(id)), None::<&()>)
            .await?;
        if vm.summary.phase != last_phase {
            if !last_phase.is_empty() {
                bar.println(format!(
                    "  {:>6.1}s {}",
                    start.elapsed().as_secs_f64(),
                    last_phase
                ));
            }
            last_phase = vm.summary.phase.clone();
        }
        bar.set_message(format!(
            "{}: {}",
            state_name(vm.summary.state),
            vm.summary.phase
        ));
        match vm.summary.state {
            VmState::Running => {
                bar.finish_and_clear();
                if !quiet {
                    eprintln!("  {:>6.1}s running", start.elapsed().as_secs_f64());
                }
                return Ok(vm);
            }
            VmState::Failed | VmState::Stopped | VmState::Crashed => {
                bar.finish_and_clear();
                let reason = vm
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("the VM is {}", state_name(vm.summary.state)));
                return Err(Failure::Failed(format!(
                    "{} did not boot: {reason} (see `dstack vm logs --serial {}`)",
                    vm.summary.name, vm.summary.name
                )));
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            bar.finish_and_clear();
            return Err(Failure::Failed(format!(
                "{} is still {} after {}s",
                vm.summary.name,
                vm.summary.phase,
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Booting => "booting",
        VmState::Running => "running",
        VmState::Stopping => "stopping",
        VmState::Crashed => "crashed",
        VmState::Failed => "failed",
    }
}

fn age(created_ms: u64) -> String {
    let s = now_ms().saturating_sub(created_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// A host timestamp as UTC wall-clock time.
fn clock(ts_ms: u64) -> String {
    i64::try_from(ts_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| ts_ms.to_string())
}

fn ports(ports: &[PortMapping]) -> String {
    ports
        .iter()
        .map(|p| {
            let udp = if p.protocol == "udp" { "/udp" } else { "" };
            format!("{}:{}->{}{udp}", p.host_address, p.host_port, p.vm_port)
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn ls(args: LsArgs, client: &Client) -> Result<(), Failure> {
    let vms: Vec<VmSummary> = client.call(Method::GET, "/v1/vms", None::<&()>).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&vms).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{:<10} {:<20} {:<9} {:<22} {:<24} {:<30} AGE",
        "ID", "NAME", "STATE", "PHASE", "IMAGE", "PORTS"
    );
    for vm in &vms {
        println!(
            "{:<10} {:<20} {:<9} {:<22} {:<24} {:<30} {}",
            vm.id,
            vm.name,
            state_name(vm.state),
            vm.phase,
            vm.image,
            ports(&vm.ports),
            age(vm.created_at_ms)
        );
    }
    Ok(())
}

async fn info(args: VmArgs, client: &Client) -> Result<(), Failure> {
    let vm: VmInfo = client
        .call(
            Method::GET,
            &format!("/v1/vms/{}", enc(&args.vm)),
            None::<&()>,
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&vm).unwrap_or_default());
        return Ok(());
    }
    let s = &vm.summary;
    println!("id:            {}", s.id);
    println!("name:          {}", s.name);
    println!("state:         {} ({})", state_name(s.state), s.phase);
    if let Some(err) = &vm.error {
        println!("error:         {err}");
    }
    println!("image:         {}", s.image);
    println!(
        "shape:         {} vCPU, {} MiB, {} GiB disk, vsock CID {}",
        vm.vcpu, vm.memory_mb, vm.disk_gb, vm.cid
    );
    println!("ports:         {}", ports(&s.ports));
    println!("compose-hash:  {}", vm.compose_hash);
    println!("app-id:        {}", vm.app_id);
    if !vm.instance_id.is_empty() {
        println!("instance-id:   {}", vm.instance_id);
    }
    if !vm.kms_urls.is_empty() {
        println!("kms:           {}", vm.kms_urls.join(", "));
    }
    if !vm.gateway_urls.is_empty() {
        println!("gateway:       {}", vm.gateway_urls.join(", "));
    }
    if !vm.tee.is_empty() {
        println!("tee:           {}", vm.tee);
    }
    if !vm.key_provider.is_empty() {
        println!("key provider:  {}", vm.key_provider);
    }
    if !vm.data_disk.is_empty() {
        println!("data disk:     {}", vm.data_disk);
    }
    if let Some(pid) = vm.pid {
        println!("qemu pid:      {pid}");
    }
    if !vm.boot_phases.is_empty() {
        println!("boot phases:");
        for p in &vm.boot_phases {
            println!("  {:>8} ms  {}", p.at_ms, p.name);
        }
    }
    if !vm.rtmr3_events.is_empty() {
        println!("RTMR3 event log:");
        for e in &vm.rtmr3_events {
            println!("  {:<18} {}", e.event, printable_payload(&e.payload));
        }
    }
    if !vm.containers.is_empty() {
        println!("containers:");
        for c in &vm.containers {
            let mut state = format!("{:?}", c.state).to_lowercase();
            if let Some(code) = c.exit_code {
                state.push_str(&format!(" ({code})"));
            }
            if c.restarts > 0 {
                state.push_str(&format!(", {} restarts", c.restarts));
            }
            println!("  {:<16} {:<12} {}", c.service, state, c.image);
        }
    }
    if !vm.events.is_empty() {
        println!("events:");
        for e in &vm.events {
            println!("  {}  {} {}", clock(e.ts_ms), e.event, e.payload);
        }
    }
    Ok(())
}

/// An event payload for people: text as text, anything else as hex.
fn printable_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.is_empty() && text.chars().all(|c| !c.is_control()) => text.to_owned(),
        _ => hex::encode(payload),
    }
}

async fn logs(args: LogsArgs, client: &Client) -> Result<(), Failure> {
    let mut query = format!(
        "follow={}&lines={}&channel={}",
        args.follow,
        args.lines,
        if args.serial { "serial" } else { "app" }
    );
    if let Some(service) = &args.service {
        query.push_str(&format!("&service={}", enc(service)));
    }
    let path = format!("/v1/vms/{}/logs?{query}", enc(&args.vm));
    let serial = args.serial;
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    client
        .stream(&path, |chunk| {
            let mut out = stdout.lock();
            if serial {
                let _ = out.write_all(chunk);
                let _ = out.flush();
                return;
            }
            pending.extend_from_slice(chunk);
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                match serde_json::from_slice::<dstack_proto::supervisor::LogLine>(&line) {
                    Ok(l) => {
                        let _ = writeln!(out, "{} | {}", l.service, l.line);
                    }
                    Err(_) => {
                        let _ = out.write_all(&line);
                    }
                }
            }
            let _ = out.flush();
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_memory() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_address.as_str(), p.host_port, p.vm_port),
            ("127.0.0.1", 8080, 80)
        );
        let p = parse_port("0.0.0.0:8443:443").unwrap();
        assert_eq!(p.host_address, "0.0.0.0");
        assert!(parse_port("80").is_err());
        let udp = parse_port("127.0.0.1:51820:9013/udp").unwrap();
        assert_eq!(
            (udp.protocol.as_str(), udp.host_port, udp.vm_port),
            ("udp", 51820, 9013)
        );
        assert_eq!(parse_port("8080:80/tcp").unwrap().protocol, "tcp");
        assert!(parse_port("8080:80/sctp").is_err());
        assert!(parse_port("a:80").is_err());
        assert!(parse_port("0:80").is_err());
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert_eq!(parse_memory("768").unwrap(), 768);
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn gateway_urls_are_repeatable() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            deploy: DeployArgs,
        }
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "deploy",
            "compose.yml",
            "--gateway-url",
            "https://10.0.2.2:9012",
            "--gateway-url",
            "https://gw.example:443/prpc",
        ])
        .unwrap();
        assert_eq!(
            cli.deploy.gateway_urls,
            ["https://10.0.2.2:9012", "https://gw.example:443/prpc"]
        );
        let cli = Cli::try_parse_from(["deploy", "compose.yml"]).unwrap();
        assert!(cli.deploy.gateway_urls.is_empty());
    }

    #[test]
    fn names_come_from_the_directory() {
        let dir = std::env::temp_dir().join(format!("My_App-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("compose.yml");
        std::fs::write(&file, "").unwrap();
        assert!(default_name(&file).starts_with("my-app-"));
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
