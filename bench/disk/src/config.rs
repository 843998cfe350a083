//! What the benchmark runs: sizes, counts and seed, read from the kernel
//! command line (`diskbench.<key>=<value>`, which the kernel leaves to
//! `/proc/cmdline` and does not pass to init) and checked against the disk.

use std::fmt;

/// Sequential I/O block: 1 MiB.
pub const SEQ_BLOCK_LEN: usize = 1 << 20;
/// [`SEQ_BLOCK_LEN`] as a disk offset.
pub const SEQ_BLOCK: u64 = SEQ_BLOCK_LEN as u64;
/// Random I/O block: 4 KiB.
pub const RAND_BLOCK_LEN: usize = 4096;
/// [`RAND_BLOCK_LEN`] as a disk offset.
pub const RAND_BLOCK: u64 = RAND_BLOCK_LEN as u64;
/// The prefix of our kernel command-line parameters.
pub const PREFIX: &str = "diskbench.";

/// A bad size, parameter or combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// The benchmark's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bytes of each device the benchmark touches (from the start of the
    /// plaintext payload): written once before anything is timed, and the
    /// span random I/O picks its blocks from. A multiple of [`SEQ_BLOCK`].
    pub region: u64,
    /// Bytes per sequential run (the first bytes of the region). A multiple
    /// of [`SEQ_BLOCK`], at most `region`.
    pub seq: u64,
    /// 4 KiB operations per random run.
    pub ops: u64,
    /// Rounds; each measures every workload on both sides, and the
    /// reported figure is the median over rounds.
    pub rounds: u32,
    /// Seed of the random block offsets (the same sequence on both sides).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: 512 << 20,
            seq: 512 << 20,
            ops: 4000,
            rounds: 5,
            seed: 1,
        }
    }
}

/// Parses a byte count: digits with an optional binary suffix `K`, `M`,
/// `G` or `T` (any case, optionally followed by `iB`): `4096`, `4k`,
/// `256M`, `1GiB`. `MB` and the like are refused: `truncate`, which makes
/// the disks from the same text, reads them as powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return err(format!(
            "{text:?} is not a size (digits, then K, M, G or T)"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| ConfigError(format!("{text:?} is too large")))?;
    let suffix = suffix.to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return err(format!("{text:?}: unknown size suffix {suffix:?}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| ConfigError(format!("{text:?} is too large")))
}

/// `bytes` as the shortest exact text [`parse_size`] reads back.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn parse_count(key: &str, value: &str) -> Result<u64, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError(format!("{PREFIX}{key}={value:?}: not a whole number")))
}

impl Config {
    /// The defaults, overridden by the `diskbench.*` parameters of a kernel
    /// command line; other parameters are ignored, an unknown
    /// `diskbench.*` key is an error (a typo would otherwise go unnoticed).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for word in cmdline.split_whitespace() {
            let Some(param) = word.strip_prefix(PREFIX) else {
                continue;
            };
            let Some((key, value)) = param.split_once('=') else {
                return err(format!("{word}: expected {PREFIX}<key>=<value>"));
            };
            match key {
                "region" => config.region = parse_size(value)?,
                "seq" => config.seq = parse_size(value)?,
                "ops" => config.ops = parse_count(key, value)?,
                "rounds" => {
                    config.rounds = u32::try_from(parse_count(key, value)?)
                        .map_err(|_| ConfigError(format!("{word}: too many rounds")))?;
                }
                "seed" => config.seed = parse_count(key, value)?,
                _ => {
                    return err(format!(
                        "{word}: unknown parameter (known: region, seq, ops, rounds, seed)"
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The kernel command-line parameters that give this configuration.
    pub fn to_cmdline(&self) -> String {
        format!(
            "{PREFIX}region={} {PREFIX}seq={} {PREFIX}ops={} {PREFIX}rounds={} {PREFIX}seed={}",
            format_size(self.region),
            format_size(self.seq),
            self.ops,
            self.rounds,
            self.seed
        )
    }

    /// Checks the sizes against each other and against `payload`, the
    /// bytes the encrypted device offers (the disk minus the LUKS2
    /// metadata).
    pub fn validate(&self, payload: u64) -> Result<(), ConfigError> {
        let size = format_size;
        if self.region == 0 || !self.region.is_multiple_of(SEQ_BLOCK) {
            return err(format!(
                "region {} must be a positive multiple of 1 MiB",
                size(self.region)
            ));
        }
        if self.region > payload {
            return err(format!(
                "region {} is larger than the encrypted payload ({} bytes: the disk minus the 16 MiB LUKS2 metadata); use bigger disks or a smaller region",
                size(self.region),
                payload
            ));
        }
        if self.seq == 0 || !self.seq.is_multiple_of(SEQ_BLOCK) {
            return err(format!(
                "seq {} must be a positive multiple of 1 MiB",
                size(self.seq)
            ));
        }
        if self.seq > self.region {
            return err(format!(
                "seq {} is larger than region {}: sequential runs stay inside the prefilled region",
                size(self.seq),
                size(self.region)
            ));
        }
        if self.ops == 0 {
            return err("ops must be at least 1");
        }
        if self.rounds == 0 {
            return err("rounds must be at least 1");
        }
        Ok(())
    }

    /// 4 KiB slots of the region random I/O picks from.
    pub fn rand_slots(&self) -> u64 {
        self.region / RAND_BLOCK
    }

    /// Which side goes first for `workload_index` in `round` (0-based):
    /// the order flips with every round and every workload, so neither
    /// side is always first (or always right after the other's run).
    pub fn encrypted_first(round: u32, workload_index: usize) -> bool {
        (u64::from(round) + workload_index as u64).is_multiple_of(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 12 "), Ok(12));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("1X").is_err());
        // Decimal to coreutils, binary to some: refused rather than guessed.
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("12B").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        // Fits u64 as a number, overflows once scaled.
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn format_size_round_trips() {
        for bytes in [
            0,
            1,
            512,
            4096,
            1 << 20,
            3 << 20,
            1 << 30,
            1536 << 20,
            5 << 40,
        ] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes), "{bytes}");
        }
        assert_eq!(format_size(1 << 30), "1G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(4097), "4097");
    }

    #[test]
    fn cmdline_overrides_defaults_and_ignores_other_parameters() {
        let config = Config::from_cmdline(
            "console=ttyS0 panic=-1 rdinit=/init quiet diskbench.region=1G diskbench.seq=128M \
             diskbench.ops=100 diskbench.rounds=5 diskbench.seed=7",
        )
        .unwrap();
        assert_eq!(
            config,
            Config {
                region: 1 << 30,
                seq: 128 << 20,
                ops: 100,
                rounds: 5,
                seed: 7,
            }
        );
        assert_eq!(
            Config::from_cmdline("console=ttyS0 quiet").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn cmdline_round_trips() {
        let config = Config {
            region: 768 << 20,
            seq: 64 << 20,
            ops: 12345,
            rounds: 2,
            seed: u64::MAX,
        };
        assert_eq!(Config::from_cmdline(&config.to_cmdline()), Ok(config));
        let default = Config::default();
        assert_eq!(Config::from_cmdline(&default.to_cmdline()), Ok(default));
    }

    #[test]
    fn bad_cmdline_parameters_are_named() {
        let e = Config::from_cmdline("diskbench.regoin=1G").unwrap_err();
        assert!(e.0.contains("diskbench.regoin=1G"), "{e}");
        assert!(e.0.contains("unknown parameter"), "{e}");
        let e = Config::from_cmdline("diskbench.ops").unwrap_err();
        assert!(e.0.contains("expected diskbench.<key>=<value>"), "{e}");
        let e = Config::from_cmdline("diskbench.ops=lots").unwrap_err();
        assert!(e.0.contains("not a whole number"), "{e}");
        assert!(Config::from_cmdline("diskbench.rounds=4294967296").is_err());
        assert!(Config::from_cmdline("diskbench.seq=1Q").is_err());
    }

    #[test]
    fn validation_checks_sizes_against_each_other_and_the_payload() {
        let payload = (1 << 30) - (16 << 20); // a 1 GiB disk
        let ok = Config::default();
        assert_eq!(ok.validate(payload), Ok(()));
        let whole = Config {
            region: payload,
            ..ok.clone()
        };
        assert_eq!(whole.validate(payload), Ok(()));

        let too_big = Config {
            region: 1 << 30,
            ..ok.clone()
        };
        assert!(
            too_big
                .validate(payload)
                .unwrap_err()
                .0
                .contains("larger than the encrypted payload")
        );
        let unaligned = Config {
            region: (512 << 20) + 4096,
            ..ok.clone()
        };
        assert!(
            unaligned
                .validate(payload)
                .unwrap_err()
                .0
                .contains("multiple of 1 MiB")
        );
        let seq_unaligned = Config {
            seq: 4096,
            ..ok.clone()
        };
        assert!(seq_unaligned.validate(payload).is_err());
        let seq_past_region = Config {
            seq: 1024 << 20,
            region: 512 << 20,
            ..ok.clone()
        };
        assert!(
            seq_past_region
                .validate(payload)
                .unwrap_err()
                .0
                .contains("larger than region")
        );
        assert!(
            Config {
                ops: 0,
                ..ok.clone()
            }
            .validate(payload)
            .is_err()
        );
        assert!(
            Config {
                rounds: 0,
                ..ok.clone()
            }
            .validate(payload)
            .is_err()
        );
        assert!(Config { region: 0, ..ok }.validate(payload).is_err());
    }

    #[test]
    fn random_slots_cover_the_region_in_4k_blocks() {
        let config = Config {
            region: 512 << 20,
            ..Config::default()
        };
        assert_eq!(config.rand_slots(), 131_072);
    }

    #[test]
    fn run_order_alternates_by_round_and_workload() {
        // Round 0: encrypted, plain, encrypted, plain first; round 1 flipped.
        let round = |r| {
            (0..4)
                .map(|w| Config::encrypted_first(r, w))
                .collect::<Vec<_>>()
        };
        assert_eq!(round(0), [true, false, true, false]);
        assert_eq!(round(1), [false, true, false, true]);
        assert_eq!(round(2), round(0));
        // Over two rounds each side goes first equally often per workload.
        for w in 0..4 {
            assert_ne!(Config::encrypted_first(0, w), Config::encrypted_first(1, w));
        }
    }
}
