//! `dstack-supervisor run`: the host daemon. Thin glue over the library:
//! flags → [`Config`], then serve the API until SIGTERM/SIGINT. VMs keep
//! running when the daemon exits (it re-adopts them when it comes back).

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use dstack_proto::host::RegistryAlias;
use dstack_supervisor::accel::{self, AccelChoice};
use dstack_supervisor::api::auth::Token;
use dstack_supervisor::api::{self, server};
use dstack_supervisor::config::{self, Config, StopTimeouts};
use dstack_supervisor::vmm::Supervisor;
use dstack_supervisor::vsock::VsockDevice;
use rustix::fs::FlockOperation;

/// dstack-supervisor: boots and manages dstack CVMs on this host.
#[derive(Debug, Parser)]
#[command(name = "dstack-supervisor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run(Box<RunArgs>),
    /// Print the simulated TEE's root CA certificate (PEM): verifiers must
    /// be given it explicitly (`dstack quote verify --root`) to accept
    /// quotes from this host's simulated TDs.
    SimRoot(StateArgs),
    /// Print collateral (dcap-qvl JSON, valid for 30 days from now) for
    /// quotes from this host's simulated TDs (`dstack quote verify --collateral`).
    SimCollateral(StateArgs),
}

#[derive(Debug, clap::Args)]
struct StateArgs {
    /// State directory [default: $DSTACK_STATE_DIR, /var/lib/dstack as root,
    /// else ~/.local/share/dstack].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// State directory [default: $DSTACK_STATE_DIR, /var/lib/dstack as root,
    /// else ~/.local/share/dstack].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// API unix socket [default: <state-dir>/supervisor.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also serve the API on this TCP address (needs --token-file).
    #[arg(long, requires = "token_file")]
    listen_tcp: Option<SocketAddr>,
    /// File holding the bearer token TCP clients must send.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accelerator: tcg, kvm, tdx or auto (the best this host supports).
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// QEMU binary [default: qemu-system-x86_64 on PATH].
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// vhost-device-vsock binary, used when /dev/vhost-vsock is unusable
    /// [default: on PATH, or ~/.cargo/bin].
    #[arg(long)]
    vhost_vsock: Option<PathBuf>,
    /// Registry rewrite for guests, FROM=TO (repeatable; replaces the
    /// defaults 127.0.0.1:5000 and localhost:5000 → 10.0.2.2:5000).
    #[arg(long = "registry-alias", value_parser = config::parse_registry_alias)]
    registry_aliases: Vec<RegistryAlias>,
    /// Registry (host[:port], as image references name it) guests pull the
    /// container engine from when a service mounts /var/run/docker.sock;
    /// the guest takes only the digest its OS image pins, so this registry
    /// need not be trusted.
    #[arg(long, default_value = "127.0.0.1:5000")]
    engine_registry: String,
    /// Upstream's SGX local key provider (host:port, upstream's default
    /// 127.0.0.1:3443) to forward GetSealingKey to [default: on hosts
    /// without TDX the supervisor plays a simulated one; TDX hosts have none].
    #[arg(long)]
    local_key_provider: Option<String>,
    /// Serve the simulated TEE's PCCS (collateral for its quotes) on this
    /// TCP address; port 0 picks a free one. Hosts without TDX only
    /// [default: 127.0.0.1:8083, skipped with a warning if taken].
    #[arg(long)]
    sim_pccs_listen: Option<SocketAddr>,
    /// PCCS URL handed to guests (`.sys-config.json` `pccs_url`) [default:
    /// on hosts without TDX the sim PCCS as guests reach it,
    /// http://10.0.2.2:PORT; on TDX hosts none].
    #[arg(long)]
    pccs_url: Option<String>,
    /// The default KMS (`https://host:port`, as guests reach it, e.g.
    /// https://10.0.2.2:8000 for a KMS on this host); repeatable. A deploy's
    /// own `--kms` replaces it.
    #[arg(long = "kms-url", value_parser = config::parse_kms_url)]
    kms_urls: Vec<String>,
    /// The default gateway (`https://host:port[/path]`, as guests reach it,
    /// e.g. https://10.0.2.2:9012 for a gateway on this host) apps with
    /// `gateway_enabled` register with; repeatable. A deploy's own
    /// `--gateway-url` replaces it.
    #[arg(long = "gateway-url", value_parser = config::parse_gateway_url)]
    gateway_urls: Vec<String>,
    /// Where the simulated TEE keeps the ACPI tables QEMU builds for each
    /// VM shape (probed with one TCG boot, ~20 s, the first time a shape is
    /// booted; `dstack image measure` can share the directory)
    /// [default: <state-dir>/acpi-cache].
    #[arg(long)]
    acpi_cache: Option<PathBuf>,
}

/// Exit codes (STYLE rule 6): scripts and service managers can tell a bad
/// configuration (don't restart) from a runtime failure (may restart).
#[repr(u8)]
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// Flags or host setup are wrong; restarting will not help.
    Config = 2,
    /// The state directory is unusable or already in use.
    State = 3,
    /// Serving failed at run time.
    Runtime = 4,
}

/// A failure and the exit code it maps to.
struct Failure(Exit, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure(Exit::Runtime, err.into())
    }
}

trait ExitWith<T> {
    fn exit_with(self, exit: Exit) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ExitWith<T> for Result<T, E> {
    fn exit_with(self, exit: Exit) -> Result<T, Failure> {
        self.map_err(|e| Failure(exit, e.into()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match cli.command {
        Command::Run(args) => *args,
        Command::SimRoot(args) => return finish(sim_tee(args, false)),
        Command::SimCollateral(args) => return finish(sim_tee(args, true)),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Runtime as u8);
        }
    };
    finish(runtime.block_on(run(args)))
}

fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(exit, err)) => {
            // `{:#}` prints the whole cause chain once.
            eprintln!("error: {err:#}");
            ExitCode::from(exit as u8)
        }
    }
}

/// `sim-root` / `sim-collateral`: the simulated TEE's public material, made
/// (with its keys) on first use so a verifier can be set up before any VM.
fn sim_tee(args: StateArgs, collateral: bool) -> Result<(), Failure> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let state_dir = resolve_state_dir(args.state_dir)?;
    create_state_dir(&state_dir)?;
    let authority = dstack_supervisor::sim_tee::load_authority(&state_dir)
        .context("cannot load the simulated TEE")
        .exit_with(Exit::State)?;
    if collateral {
        let collateral = authority
            .collateral(chrono::Utc::now())
            .context("cannot issue collateral")?;
        println!("{}", collateral.to_json());
    } else {
        print!("{}", authority.root_pem());
    }
    Ok(())
}

/// Creates the state directory, private to the supervisor's user.
fn create_state_dir(state_dir: &Path) -> Result<(), Failure> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))
        .exit_with(Exit::State)
}

fn resolve_state_dir(flag: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let state_dir = match flag {
        Some(dir) => dir,
        None => config::default_state_dir(
            std::env::var_os("DSTACK_STATE_DIR"),
            rustix::process::geteuid().is_root(),
            std::env::var_os("HOME"),
        )
        .context("no state dir: set --state-dir, DSTACK_STATE_DIR or HOME")
        .exit_with(Exit::Config)?,
    };
    let state_dir = absolute(&state_dir).exit_with(Exit::Config)?;
    config::check_state_dir(&state_dir)
        .map_err(anyhow::Error::msg)
        .exit_with(Exit::Config)?;
    Ok(state_dir)
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    // Everything we create (state files, sockets, disks) is private to the
    // supervisor's user from the moment it exists (DESIGN §7).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let state_dir = resolve_state_dir(args.state_dir)?;
    let token = match (&args.listen_tcp, &args.token_file) {
        (Some(_), Some(file)) => {
            let text = fs::read_to_string(file)
                .with_context(|| format!("cannot read token file {}", file.display()))
                .exit_with(Exit::Config)?;
            Some(
                Token::from_file_content(&text)
                    .with_context(|| format!("token file {} is empty", file.display()))
                    .exit_with(Exit::Config)?,
            )
        }
        (Some(_), None) => {
            return Err(Failure(
                Exit::Config,
                anyhow::anyhow!("--listen-tcp needs --token-file"),
            ));
        }
        (None, _) => None,
    };

    let host = accel::probe_host();
    let accel = accel::resolve(args.accel, &host).exit_with(Exit::Config)?;
    if let Err(reason) = &host.kvm {
        tracing::info!("KVM unusable ({reason})");
    }
    let qemu = match args.qemu {
        Some(path) => path,
        None => find_program("qemu-system-x86_64")
            .context("qemu-system-x86_64 is not on PATH (install QEMU or pass --qemu)")
            .exit_with(Exit::Config)?,
    };
    let vsock = match args
        .vhost_vsock
        .or_else(|| find_program("vhost-device-vsock"))
    {
        Some(binary) => VsockDevice::detect(binary),
        None => match VsockDevice::detect(PathBuf::new()) {
            VsockDevice::Kernel => VsockDevice::Kernel,
            VsockDevice::VhostUser { .. } => {
                return Err(Failure(
                    Exit::Config,
                    anyhow::anyhow!(
                        "/dev/vhost-vsock is unusable and vhost-device-vsock is not on PATH \
                         (cargo install vhost-device-vsock, or pass --vhost-vsock)"
                    ),
                ));
            }
        },
    };
    if let Some(url) = &args.pccs_url {
        config::check_pccs_url(url)
            .map_err(anyhow::Error::msg)
            .exit_with(Exit::Config)?;
    }
    if accel == accel::Accel::Tdx && args.sim_pccs_listen.is_some() {
        return Err(Failure(
            Exit::Config,
            anyhow::anyhow!(
                "--sim-pccs-listen is for hosts without TDX (this host runs VMs with tdx)"
            ),
        ));
    }
    let registry_aliases = if args.registry_aliases.is_empty() {
        config::default_registry_aliases()
    } else {
        args.registry_aliases
    };
    // Created (and locked) only once every flag has been checked, so a bad
    // command line leaves nothing behind.
    create_state_dir(&state_dir)?;
    let _lock = lock_state_dir(&state_dir).exit_with(Exit::State)?;
    let socket = args
        .socket
        .unwrap_or_else(|| config::default_socket(&state_dir));
    let sim_pccs = match accel {
        accel::Accel::Tdx => None,
        _ => bind_sim_pccs(args.sim_pccs_listen).await?,
    };
    let guest_pccs_url = match (args.pccs_url, &sim_pccs) {
        (Some(url), _) => url,
        (None, Some(listener)) => {
            dstack_supervisor::sim_pccs::guest_url(listener.local_addr()?.port())
        }
        (None, None) => String::new(),
    };
    let acpi_cache = args
        .acpi_cache
        .unwrap_or_else(|| state_dir.join("acpi-cache"));
    let config = Config {
        acpi_cache,
        state_dir,
        accel,
        qemu,
        vsock,
        registry_aliases,
        engine_registry: args.engine_registry,
        local_key_provider: args.local_key_provider,
        guest_pccs_url,
        kms_urls: args.kms_urls,
        gateway_urls: args.gateway_urls,
        stop_timeouts: StopTimeouts::default(),
        log_max_bytes: config::DEFAULT_LOG_MAX_BYTES,
    };
    tracing::info!(
        state_dir = %config.state_dir.display(),
        accel = %config.accel,
        vsock = ?config.vsock,
        "starting"
    );

    let listener = server::bind_unix(&socket).await.exit_with(Exit::State)?;
    let tcp = match args.listen_tcp {
        Some(addr) => Some(server::bind_tcp(addr).await.exit_with(Exit::Config)?),
        None => None,
    };
    let supervisor = Supervisor::open(config).await.exit_with(Exit::State)?;
    let app = api::router(supervisor.clone());
    let pccs = match (sim_pccs, supervisor.sim_authority()) {
        (Some(listener), Some(authority)) => {
            tracing::info!(addr = %listener.local_addr()?, guests = %supervisor.config().guest_pccs_url, "sim PCCS listening");
            Some(tokio::spawn(dstack_supervisor::sim_pccs::serve(
                listener, authority,
            )))
        }
        _ => None,
    };
    tracing::info!(socket = %socket.display(), "API listening");

    let unix = tokio::spawn(server::serve_unix(listener, app.clone()));
    let tcp = match (tcp, token) {
        (Some(listener), Some(token)) => {
            tracing::info!(addr = %listener.local_addr()?, "API listening on TCP (bearer token required)");
            Some(tokio::spawn(server::serve_tcp(listener, app, token)))
        }
        _ => None,
    };
    let result = wait_for_exit(unix, tcp, pccs).await;
    supervisor.detach();
    let _ = fs::remove_file(&socket);
    result
}

/// Runs until SIGTERM or SIGINT (a clean exit), or until a server fails.
async fn wait_for_exit(
    unix: tokio::task::JoinHandle<std::io::Result<()>>,
    tcp: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pccs: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let optional = |task: Option<tokio::task::JoinHandle<_>>| async {
        match task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let (tcp, pccs) = (optional(tcp), optional(pccs));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: exiting, VMs keep running"),
        _ = int.recv() => tracing::info!("SIGINT: exiting, VMs keep running"),
        result = unix => { result??; bail_runtime("the unix socket server stopped")?; }
        result = tcp => { result??; bail_runtime("the TCP server stopped")?; }
        result = pccs => { result??; bail_runtime("the sim PCCS stopped")?; }
    }
    Ok(())
}

/// Binds the sim PCCS: an explicit address must work; the default may be
/// taken (another supervisor on this machine), and then guests get no PCCS.
async fn bind_sim_pccs(
    flag: Option<SocketAddr>,
) -> Result<Option<tokio::net::TcpListener>, Failure> {
    let explicit = flag.is_some();
    let addr = flag.unwrap_or_else(|| {
        dstack_supervisor::sim_pccs::DEFAULT_LISTEN
            .parse()
            .expect("the default address parses")
    });
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if explicit => Err(Failure(
            Exit::Config,
            anyhow::anyhow!("cannot listen on {addr} (--sim-pccs-listen): {e}"),
        )),
        Err(e) => {
            tracing::warn!(
                "sim PCCS not served: cannot listen on {addr} ({e}); guests get no pccs_url (pass --sim-pccs-listen)"
            );
            Ok(None)
        }
    }
}

fn bail_runtime(what: &str) -> Result<(), Failure> {
    Err(Failure(Exit::Runtime, anyhow::anyhow!("{what}")))
}

/// Takes an exclusive lock on `<state>/supervisor.lock` for the process's
/// life: two supervisors on one state dir would fight over every VM.
fn lock_state_dir(state_dir: &Path) -> anyhow::Result<File> {
    let path = state_dir.join("supervisor.lock");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another dstack-supervisor is using {} (lock {} is held)",
            state_dir.display(),
            path.display()
        );
    }
    Ok(file)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("bad path {}", path.display()))
}

/// The first `name` on PATH, then in ~/.cargo/bin (where `cargo install` puts it).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
