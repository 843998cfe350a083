//! `dstack`: the one command users type.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// dstack-rs: confidential containers on Intel TDX.
#[derive(Debug, Parser)]
#[command(name = "dstack", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and verify TDX/SGX quotes.
    #[command(subcommand)]
    Quote(commands::quote::QuoteCommand),
}

/// Exit codes scripts can rely on.
#[repr(u8)]
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// The evidence was checked and rejected.
    Rejected = 1,
    /// The input could not be read or understood.
    BadInput = 2,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Quote(cmd) => commands::quote::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::Failure::Rejected(reason)) => {
            eprintln!("rejected: {reason}");
            ExitCode::from(Exit::Rejected as u8)
        }
        Err(commands::Failure::BadInput(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(Exit::BadInput as u8)
        }
    }
}
