//! The host-side commands of `disk-bench` (run as anything but PID1): the
//! run script checks its parameters and reads the guest's serial log with
//! the same code the guest uses.

use crate::config::{Config, parse_size};

/// Usage text.
pub const USAGE: &str = "\
usage: disk-bench --version
       disk-bench check-args DISK_SIZE [diskbench.KEY=VALUE...]
       disk-bench report SERIAL_LOG
As PID1 (the init of bench/disk/run's VM) it runs the benchmark.";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the version (the workspace's, like the OS image's).
    Version,
    /// Validate kernel parameters for disks of `disk_size` bytes and print
    /// them normalised, with the defaults filled in.
    CheckArgs {
        /// Bytes of each disk.
        disk_size: u64,
        /// The `diskbench.*` parameters.
        params: String,
    },
    /// Print the table and ratios from a serial log.
    Report {
        /// The log file.
        log: String,
    },
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    match args {
        [flag] if flag == "--version" || flag == "-V" => Ok(Command::Version),
        [cmd, size, params @ ..] if cmd == "check-args" => {
            let disk_size = parse_size(size).map_err(|e| format!("DISK_SIZE: {e}"))?;
            if let Some(stray) = params
                .iter()
                .find(|p| !p.starts_with(crate::config::PREFIX))
            {
                return Err(format!("{stray}: expected diskbench.KEY=VALUE"));
            }
            Ok(Command::CheckArgs {
                disk_size,
                params: params.join(" "),
            })
        }
        [cmd, log] if cmd == "report" => Ok(Command::Report { log: log.clone() }),
        _ => Err(USAGE.to_owned()),
    }
}

/// `check-args`: the normalised parameters, or why they do not fit.
pub fn check_args(disk_size: u64, params: &str) -> Result<String, String> {
    let config = Config::from_cmdline(params).map_err(|e| e.to_string())?;
    let payload = disk_size
        .checked_sub(dstack_luks2::DATA_OFFSET)
        .filter(|&p| p >= dstack_luks2::MIN_DEVICE_SIZE - dstack_luks2::DATA_OFFSET)
        .ok_or_else(|| {
            format!(
                "a {disk_size}-byte disk has no room for a LUKS2 payload (16 MiB of metadata come first)"
            )
        })?;
    config.validate(payload).map_err(|e| e.to_string())?;
    Ok(config.to_cmdline())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_args(&args(&["--version"])), Ok(Command::Version));
        assert_eq!(
            parse_args(&args(&[
                "check-args",
                "1G",
                "diskbench.ops=10",
                "diskbench.rounds=1"
            ])),
            Ok(Command::CheckArgs {
                disk_size: 1 << 30,
                params: "diskbench.ops=10 diskbench.rounds=1".into()
            })
        );
        assert_eq!(
            parse_args(&args(&["check-args", "1G"])),
            Ok(Command::CheckArgs {
                disk_size: 1 << 30,
                params: String::new()
            })
        );
        assert_eq!(
            parse_args(&args(&["report", "/tmp/serial.log"])),
            Ok(Command::Report {
                log: "/tmp/serial.log".into()
            })
        );
    }

    #[test]
    fn bad_commands_are_refused() {
        assert_eq!(parse_args(&[]), Err(USAGE.to_owned()));
        assert_eq!(parse_args(&args(&["report"])), Err(USAGE.to_owned()));
        assert_eq!(parse_args(&args(&["bench"])), Err(USAGE.to_owned()));
        assert!(
            parse_args(&args(&["check-args", "big"]))
                .unwrap_err()
                .starts_with("DISK_SIZE")
        );
        assert!(
            parse_args(&args(&["check-args", "1G", "ops=10"]))
                .unwrap_err()
                .contains("expected diskbench.KEY=VALUE")
        );
    }

    #[test]
    fn check_args_fills_defaults_and_fits_the_disk() {
        assert_eq!(
            check_args(1 << 30, "diskbench.ops=100 diskbench.region=1008M"),
            Ok("diskbench.region=1008M diskbench.seq=512M diskbench.ops=100 diskbench.rounds=5 diskbench.seed=1"
                .to_owned())
        );
        // 1 GiB leaves 1008 MiB of payload.
        let e = check_args(1 << 30, "diskbench.region=1G").unwrap_err();
        assert!(e.contains("larger than the encrypted payload"), "{e}");
        let e = check_args(16 << 20, "").unwrap_err();
        assert!(e.contains("no room for a LUKS2 payload"), "{e}");
        let e = check_args(1 << 30, "diskbench.rounds=0").unwrap_err();
        assert!(e.contains("rounds"), "{e}");
    }
}
