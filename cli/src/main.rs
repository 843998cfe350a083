//! `dstack`: the one command users type.

mod client;
mod commands;
mod predict;
mod simulator;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dstack-rs: confidential containers on Intel TDX.
#[derive(Debug, Parser)]
#[command(name = "dstack", version, about)]
struct Cli {
    /// Supervisor address: unix:PATH or http://HOST:PORT (default: the
    /// supervisor.sock in the default state directory).
    #[arg(long, global = true, env = "DSTACK_SUPERVISOR")]
    supervisor: Option<String>,
    /// Bearer token for a TCP supervisor.
    #[arg(
        long,
        global = true,
        env = "DSTACK_SUPERVISOR_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and verify TDX/SGX quotes.
    #[command(subcommand)]
    Quote(commands::quote::QuoteCommand),
    /// Deploy and manage CVMs.
    #[command(subcommand)]
    Vm(commands::vm::VmCommand),
    /// Build and list OS images.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Inspect a KMS.
    #[command(subcommand)]
    Kms(commands::kms::KmsCommand),
    /// Govern a KMS on chain: deploy its contracts and apps', allow compose
    /// hashes, OS images, KMS measurements and devices.
    Chain(commands::chain::ChainArgs),
    /// Check a live app (its RA-TLS certificate), or a quote and its event
    /// log, against an OS image and a compose file; explains the first
    /// mismatch.
    Verify(Box<commands::verify::VerifyArgs>),
    /// Serve dstack's guest API (dstack.sock, tappd.sock) on this host with
    /// a simulated TEE, for running apps and the dstack SDKs without a CVM.
    Simulator(simulator::SimulatorArgs),
}

/// Exit codes scripts can rely on.
#[repr(u8)]
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// The evidence was checked and rejected, or the operation failed.
    Rejected = 1,
    /// The input could not be read or understood.
    BadInput = 2,
}

fn client(cli: &Cli) -> anyhow::Result<client::Client> {
    let endpoint = match &cli.supervisor {
        Some(addr) => client::Endpoint::parse(addr, cli.token.clone())?,
        None => client::Endpoint::default_unix(),
    };
    Ok(client::Client::new(endpoint))
}

fn run(cli: Cli) -> Result<(), commands::Failure> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| commands::Failure::BadInput(e.into()))
    };
    let api = client(&cli)?;
    match cli.command {
        Command::Quote(cmd) => commands::quote::run(cmd),
        Command::Verify(args) => commands::verify::run(*args),
        Command::Vm(cmd) => runtime()?.block_on(commands::vm::run(cmd, api)),
        Command::Image(cmd) => runtime()?.block_on(commands::image::run(cmd, api)),
        Command::Kms(cmd) => runtime()?.block_on(commands::kms::run(cmd)),
        Command::Chain(args) => runtime()?.block_on(commands::chain::run(args)),
        Command::Simulator(args) => Ok(runtime()?.block_on(simulator::run(args))?),
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`dstack vm info
/// web | head`) would panic; a command-line tool should just end, as
/// coreutils do.
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no Rust handler, and this runs first in
    // main, before any thread exists.
    #[allow(unsafe_code)]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::Failure::Rejected(reason)) => {
            eprintln!("rejected: {reason}");
            ExitCode::from(Exit::Rejected as u8)
        }
        Err(commands::Failure::Failed(reason)) => {
            eprintln!("error: {reason}");
            ExitCode::from(Exit::Rejected as u8)
        }
        Err(commands::Failure::BadInput(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(Exit::BadInput as u8)
        }
    }
}
