//! `disk-bench`: as PID1, the disk benchmark inside the VM; otherwise the
//! host-side helpers of bench/disk/run (see [`dstack_bench_disk::cli`]).

use std::process::ExitCode;

use dstack_bench_disk::cli::{self, Command};
use dstack_bench_disk::{guest, report};

fn main() -> ExitCode {
    if std::process::id() == 1 {
        return guest::main_as_pid1();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command {
        Command::Version => {
            println!("disk-bench {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CheckArgs { disk_size, params } => {
            cli::check_args(disk_size, &params).map(|normalised| println!("{normalised}"))
        }
        Command::Report { log } => std::fs::read(&log)
            .map_err(|e| format!("cannot read {log}: {e}"))
            .and_then(|bytes| {
                report::parse_log(&String::from_utf8_lossy(&bytes)).map_err(|e| e.to_string())
            })
            .map(|parsed| print!("{}", report::render(&parsed))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("disk-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
