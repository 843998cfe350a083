//! The lines the guest prints on the serial console and the host's table.
//!
//! The guest prints one `RUN` line per measurement and, at the end, one
//! `RESULT` line per side with the median over rounds:
//!
//! ```text
//! RUN round=1 side=encrypted workload=seq_write bytes=268435456 ops=256 secs=3.210000 mib_s=79.75 iops=79.75
//! RESULT encrypted seq_write_mib_s=79.75 seq_read_mib_s=90.10 rand_write_iops=1500.0 rand_read_iops=1800.0
//! ```
//!
//! The host ([`parse_log`], [`render`]) needs both `RESULT` lines with all
//! four figures; the `RUN` lines only add each figure's spread.

use std::fmt;

/// Which device a measurement ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dm-crypt mapping of the LUKS2 disk.
    Encrypted,
    /// The plain disk.
    Plain,
}

impl Side {
    /// Both sides, encrypted first.
    pub const ALL: [Side; 2] = [Side::Encrypted, Side::Plain];

    /// The name in the lines.
    pub fn name(self) -> &'static str {
        match self {
            Side::Encrypted => "encrypted",
            Side::Plain => "plain",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|side| side.name() == text)
    }
}

/// What a measurement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Sequential 1 MiB writes, then one `fdatasync`.
    SeqWrite,
    /// Sequential 1 MiB reads.
    SeqRead,
    /// Random 4 KiB writes, then one `fdatasync`.
    RandWrite,
    /// Random 4 KiB reads.
    RandRead,
}

impl Workload {
    /// Every workload, in the order they run within a round.
    pub const ALL: [Workload; 4] = [
        Workload::SeqWrite,
        Workload::SeqRead,
        Workload::RandWrite,
        Workload::RandRead,
    ];

    /// The name in the lines.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SeqWrite => "seq_write",
            Workload::SeqRead => "seq_read",
            Workload::RandWrite => "rand_write",
            Workload::RandRead => "rand_read",
        }
    }

    /// Whether this is one of the random workloads (reported in IOPS).
    pub fn is_random(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::RandRead)
    }

    /// Whether this workload writes.
    pub fn writes(self) -> bool {
        matches!(self, Workload::SeqWrite | Workload::RandWrite)
    }

    /// The figure reported: `mib_s` for sequential, `iops` for random.
    pub fn metric(self) -> &'static str {
        if self.is_random() { "iops" } else { "mib_s" }
    }

    /// The figure's unit, for people.
    pub fn unit(self) -> &'static str {
        if self.is_random() { "IOPS" } else { "MiB/s" }
    }

    /// `<name>_<metric>`, the key in a `RESULT` line.
    pub fn key(self) -> String {
        format!("{}_{}", self.name(), self.metric())
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == text)
    }

    fn index(self) -> usize {
        match self {
            Workload::SeqWrite => 0,
            Workload::SeqRead => 1,
            Workload::RandWrite => 2,
            Workload::RandRead => 3,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// 1-based round.
    pub round: u32,
    /// The device.
    pub side: Side,
    /// The workload.
    pub workload: Workload,
    /// Bytes transferred.
    pub bytes: u64,
    /// I/O operations issued.
    pub ops: u64,
    /// Wall-clock seconds, including the closing `fdatasync` of writes.
    pub secs: f64,
}

const MIB: f64 = 1_048_576.0;

impl Run {
    /// Throughput in MiB/s.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB / self.secs
    }

    /// Operations per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    /// The workload's figure: MiB/s or IOPS.
    pub fn value(&self) -> f64 {
        if self.workload.is_random() {
            self.iops()
        } else {
            self.mib_s()
        }
    }

    /// The `RUN` line.
    pub fn line(&self) -> String {
        format!(
            "RUN round={} side={} workload={} bytes={} ops={} secs={:.6} mib_s={:.2} iops={:.1}",
            self.round,
            self.side.name(),
            self.workload.name(),
            self.bytes,
            self.ops,
            self.secs,
            self.mib_s(),
            self.iops()
        )
    }

    /// Parses a `RUN` line (as [`Run::line`] writes it); the derived
    /// `mib_s` and `iops` are ignored and recomputed.
    pub fn parse(line: &str) -> Result<Self, ReportError> {
        let bad = |why: &str| ReportError(format!("bad RUN line ({why}): {line}"));
        let rest = line
            .trim()
            .strip_prefix("RUN ")
            .ok_or_else(|| bad("no RUN prefix"))?;
        let fields = fields(rest).map_err(|e| bad(&e))?;
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| bad(&format!("no {key}")))
        };
        let number = |key: &str| -> Result<u64, ReportError> {
            get(key)?
                .parse()
                .map_err(|_| bad(&format!("{key} is not a number")))
        };
        let secs: f64 = get("secs")?
            .parse()
            .map_err(|_| bad("secs is not a number"))?;
        if !(secs.is_finite() && secs > 0.0) {
            return Err(bad("secs must be positive"));
        }
        Ok(Run {
            round: u32::try_from(number("round")?).map_err(|_| bad("round out of range"))?,
            side: Side::parse(get("side")?).ok_or_else(|| bad("unknown side"))?,
            workload: Workload::parse(get("workload")?).ok_or_else(|| bad("unknown workload"))?,
            bytes: number("bytes")?,
            ops: number("ops")?,
            secs,
        })
    }
}

/// `key=value` words, in order; a word without `=` is an error.
fn fields(text: &str) -> Result<Vec<(&str, &str)>, String> {
    text.split_whitespace()
        .map(|word| {
            word.split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value"))
        })
        .collect()
}

/// A parse or consistency failure of the guest's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError(pub String);

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReportError {}

/// The median (the mean of the middle two for an even count); `None` for
/// no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// One side's figures: the median over rounds of each workload.
#[derive(Debug, Clone, PartialEq)]
pub struct SideResult {
    /// The device.
    pub side: Side,
    /// Indexed like [`Workload::ALL`]: MiB/s or IOPS.
    pub values: [f64; 4],
}

impl SideResult {
    /// The medians of `side`'s runs; `None` if a workload has no run.
    pub fn summarize(side: Side, runs: &[Run]) -> Option<Self> {
        let mut values = [0.0; 4];
        for workload in Workload::ALL {
            let of_workload: Vec<f64> = runs
                .iter()
                .filter(|r| r.side == side && r.workload == workload)
                .map(Run::value)
                .collect();
            values[workload.index()] = median(&of_workload)?;
        }
        Some(Self { side, values })
    }

    /// The figure of `workload`.
    pub fn value(&self, workload: Workload) -> f64 {
        self.values[workload.index()]
    }

    /// The `RESULT` line.
    pub fn line(&self) -> String {
        let mut line = format!("RESULT {}", self.side.name());
        for workload in Workload::ALL {
            line.push_str(&format!(" {}={:.2}", workload.key(), self.value(workload)));
        }
        line
    }

    /// Parses a `RESULT` line: every workload's figure must be there, once,
    /// finite and positive.
    pub fn parse(line: &str) -> Result<Self, ReportError> {
        let bad = |why: &str| ReportError(format!("bad RESULT line ({why}): {line}"));
        let rest = line
            .trim()
            .strip_prefix("RESULT ")
            .ok_or_else(|| bad("no RESULT prefix"))?;
        let (side, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let side = Side::parse(side).ok_or_else(|| bad(&format!("unknown side {side:?}")))?;
        let fields = fields(rest).map_err(|e| bad(&e))?;
        let mut values = [0.0; 4];
        for workload in Workload::ALL {
            let key = workload.key();
            let mut found = fields.iter().filter(|(k, _)| *k == key);
            let (_, text) = found.next().ok_or_else(|| bad(&format!("no {key}")))?;
            if found.next().is_some() {
                return Err(bad(&format!("{key} twice")));
            }
            let value: f64 = text
                .parse()
                .map_err(|_| bad(&format!("{key} is not a number")))?;
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(&format!("{key} must be positive")));
            }
            values[workload.index()] = value;
        }
        Ok(Self { side, values })
    }
}

/// What the host takes from the serial console.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The encrypted side's `RESULT`.
    pub encrypted: SideResult,
    /// The plain side's `RESULT`.
    pub plain: SideResult,
    /// Every `RUN` line, for the spread.
    pub runs: Vec<Run>,
    /// `INFO` lines, without the prefix.
    pub info: Vec<String>,
}

/// `line` without terminal escape sequences (the firmware and the kernel
/// reset the console, which leaves `ESC c ESC [?7l ESC [2J` in front of
/// the guest's first line): CSI sequences (`ESC [` ... final byte) and
/// two-byte `ESC x` ones.
pub fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // `ESC x` is two bytes; `ESC [` runs to a final byte in @..~.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// Reads the guest's lines out of a serial log (kernel messages and other
/// output around them are skipped). A `FAILED` line, a bad `RUN` or
/// `RESULT` line, or a side without its `RESULT`, is an error.
pub fn parse_log(log: &str) -> Result<Report, ReportError> {
    let mut encrypted = None;
    let mut plain = None;
    let mut runs = Vec::new();
    let mut info = Vec::new();
    for line in log.lines() {
        let line = strip_escapes(line);
        let line = line.trim_matches(|c: char| c == '\r' || c.is_whitespace());
        if let Some(failure) = line.strip_prefix("FAILED ") {
            return Err(ReportError(format!("the guest failed: {failure}")));
        } else if line.starts_with("RUN ") {
            runs.push(Run::parse(line)?);
        } else if line.starts_with("RESULT ") {
            let result = SideResult::parse(line)?;
            let slot = match result.side {
                Side::Encrypted => &mut encrypted,
                Side::Plain => &mut plain,
            };
            if slot.is_some() {
                return Err(ReportError(format!(
                    "two RESULT lines for the {} side",
                    result.side.name()
                )));
            }
            *slot = Some(result);
        } else if let Some(text) = line.strip_prefix("INFO ") {
            info.push(text.to_owned());
        }
    }
    let missing = |side: Side| {
        ReportError(format!(
            "no RESULT line for the {} side: the guest did not finish",
            side.name()
        ))
    };
    Ok(Report {
        encrypted: encrypted.ok_or_else(|| missing(Side::Encrypted))?,
        plain: plain.ok_or_else(|| missing(Side::Plain))?,
        runs,
        info,
    })
}

impl Report {
    /// Encrypted over plain for `workload` (1.0: encryption is free).
    pub fn ratio(&self, workload: Workload) -> f64 {
        self.encrypted.value(workload) / self.plain.value(workload)
    }

    /// The lowest and highest run of `side` and `workload`, if any.
    pub fn spread(&self, side: Side, workload: Workload) -> Option<(f64, f64)> {
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.side == side && r.workload == workload)
            .map(Run::value)
            .collect();
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
}

fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The table (median, with the runs' min–max) and one
/// `ratio_<workload>=R` line per workload.
pub fn render(report: &Report) -> String {
    let cell = |side: Side, workload: Workload, value: f64| match report.spread(side, workload) {
        Some((min, max)) => format!("{} ({}-{})", figure(value), figure(min), figure(max)),
        None => figure(value),
    };
    let mut out = format!(
        "{:<11} {:<6} {:>24} {:>24} {:>6}\n",
        "workload", "unit", "encrypted (min-max)", "plain (min-max)", "ratio"
    );
    for workload in Workload::ALL {
        out.push_str(&format!(
            "{:<11} {:<6} {:>24} {:>24} {:>6.2}\n",
            workload.name(),
            workload.unit(),
            cell(Side::Encrypted, workload, report.encrypted.value(workload)),
            cell(Side::Plain, workload, report.plain.value(workload)),
            report.ratio(workload)
        ));
    }
    for workload in Workload::ALL {
        out.push_str(&format!(
            "ratio_{}={:.2}\n",
            workload.name(),
            report.ratio(workload)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(round: u32, side: Side, workload: Workload, secs: f64) -> Run {
        let (bytes, ops) = if workload.is_random() {
            (4000 * 4096, 4000)
        } else {
            (256 << 20, 256)
        };
        Run {
            round,
            side,
            workload,
            bytes,
            ops,
            secs,
        }
    }

    #[test]
    fn figures_follow_from_bytes_ops_and_time() {
        let seq = run(1, Side::Plain, Workload::SeqRead, 2.0);
        assert_eq!(seq.mib_s(), 128.0);
        assert_eq!(seq.value(), 128.0);
        let rand = run(1, Side::Plain, Workload::RandWrite, 0.5);
        assert_eq!(rand.iops(), 8000.0);
        assert_eq!(rand.value(), 8000.0);
        assert_eq!(Workload::RandRead.key(), "rand_read_iops");
        assert_eq!(Workload::SeqWrite.key(), "seq_write_mib_s");
    }

    #[test]
    fn run_lines_round_trip() {
        let original = run(2, Side::Encrypted, Workload::SeqWrite, 3.25);
        let line = original.line();
        assert_eq!(
            line,
            "RUN round=2 side=encrypted workload=seq_write bytes=268435456 ops=256 secs=3.250000 mib_s=78.77 iops=78.8"
        );
        assert_eq!(Run::parse(&line), Ok(original));
    }

    #[test]
    fn bad_run_lines_are_refused() {
        let good = "RUN round=1 side=plain workload=rand_read bytes=4096 ops=1 secs=0.5";
        assert!(Run::parse(good).is_ok());
        for bad in [
            "RUN round=1 side=plain workload=rand_read bytes=4096 ops=1",
            "RUN round=1 side=other workload=rand_read bytes=4096 ops=1 secs=0.5",
            "RUN round=1 side=plain workload=trim bytes=4096 ops=1 secs=0.5",
            "RUN round=1 side=plain workload=rand_read bytes=4k ops=1 secs=0.5",
            "RUN round=1 side=plain workload=rand_read bytes=4096 ops=1 secs=0",
            "RUN round=1 side=plain workload=rand_read bytes=4096 ops=1 secs=NaN",
            "RUN round=1 side=plain workload=rand_read bytes=4096 ops=1 secs=0.5 junk",
        ] {
            assert!(Run::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summaries_take_the_median_over_rounds_per_side() {
        let mut runs = Vec::new();
        for (round, secs) in [(1, 4.0), (2, 2.0), (3, 8.0)] {
            for workload in Workload::ALL {
                runs.push(run(round, Side::Encrypted, workload, secs));
                runs.push(run(round, Side::Plain, workload, secs / 4.0));
            }
        }
        let enc = SideResult::summarize(Side::Encrypted, &runs).unwrap();
        let plain = SideResult::summarize(Side::Plain, &runs).unwrap();
        // Medians: 4 s and 1 s.
        assert_eq!(enc.value(Workload::SeqWrite), 64.0);
        assert_eq!(plain.value(Workload::SeqWrite), 256.0);
        assert_eq!(enc.value(Workload::RandRead), 1000.0);
        assert_eq!(plain.value(Workload::RandRead), 4000.0);
        // A workload without runs gives no summary.
        let partial: Vec<Run> = runs
            .into_iter()
            .filter(|r| r.workload != Workload::RandRead)
            .collect();
        assert_eq!(SideResult::summarize(Side::Plain, &partial), None);
    }

    #[test]
    fn result_lines_round_trip() {
        let result = SideResult {
            side: Side::Plain,
            values: [150.25, 300.5, 1234.0, 2345.75],
        };
        let line = result.line();
        assert_eq!(
            line,
            "RESULT plain seq_write_mib_s=150.25 seq_read_mib_s=300.50 rand_write_iops=1234.00 rand_read_iops=2345.75"
        );
        assert_eq!(SideResult::parse(&line), Ok(result));
    }

    #[test]
    fn bad_result_lines_are_refused() {
        let ok = "RESULT encrypted seq_write_mib_s=1 seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4";
        assert!(SideResult::parse(ok).is_ok());
        for (bad, why) in [
            (
                "RESULT encrypted seq_write_mib_s=1 seq_read_mib_s=2 rand_write_iops=3",
                "no rand_read_iops",
            ),
            (
                "RESULT disk seq_write_mib_s=1 seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4",
                "unknown side",
            ),
            (
                "RESULT encrypted seq_write_mib_s=x seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4",
                "not a number",
            ),
            (
                "RESULT encrypted seq_write_mib_s=0 seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4",
                "positive",
            ),
            (
                "RESULT encrypted seq_write_mib_s=inf seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4",
                "positive",
            ),
            (
                "RESULT encrypted seq_write_mib_s=1 seq_write_mib_s=1 seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4",
                "twice",
            ),
        ] {
            let e = SideResult::parse(bad).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2JINFO kernel=x\r"),
            "INFO kernel=x\r"
        );
        assert_eq!(strip_escapes("\u{1b}[0mSeaBIOS"), "SeaBIOS");
        assert_eq!(strip_escapes("plain text"), "plain text");
        assert_eq!(strip_escapes("cut \u{1b}["), "cut ");
        assert_eq!(strip_escapes("end\u{1b}"), "end");
    }

    const LOG: &str = "\
\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16.3)\r
Booting from ROM...\r
\u{1b}c\u{1b}[?7l\u{1b}[2JINFO kernel=7.2.12-dstack\r
RUN round=1 side=encrypted workload=seq_write bytes=268435456 ops=256 secs=4.000000 mib_s=64.00 iops=64.0\r
RUN round=1 side=plain workload=seq_write bytes=268435456 ops=256 secs=1.000000 mib_s=256.00 iops=256.0\r
RUN round=2 side=plain workload=seq_write bytes=268435456 ops=256 secs=2.000000 mib_s=128.00 iops=128.0\r
RUN round=2 side=encrypted workload=seq_write bytes=268435456 ops=256 secs=2.000000 mib_s=128.00 iops=128.0\r
RESULT encrypted seq_write_mib_s=96.00 seq_read_mib_s=100.00 rand_write_iops=500.00 rand_read_iops=800.00\r
RESULT plain seq_write_mib_s=192.00 seq_read_mib_s=400.00 rand_write_iops=1000.00 rand_read_iops=800.00\r
DONE\r
[    9.000000] reboot: Power down\r
";

    #[test]
    fn a_log_gives_ratios_and_a_table() {
        let report = parse_log(LOG).unwrap();
        assert_eq!(report.info, ["kernel=7.2.12-dstack"]);
        assert_eq!(report.runs.len(), 4);
        assert_eq!(report.ratio(Workload::SeqWrite), 0.5);
        assert_eq!(report.ratio(Workload::SeqRead), 0.25);
        assert_eq!(report.ratio(Workload::RandRead), 1.0);
        assert_eq!(
            report.spread(Side::Encrypted, Workload::SeqWrite),
            Some((64.0, 128.0))
        );
        assert_eq!(report.spread(Side::Plain, Workload::RandRead), None);

        let table = render(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + 4 + 4, "{table}");
        assert!(lines[0].starts_with("workload"));
        let seq_write: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            seq_write,
            [
                "seq_write",
                "MiB/s",
                "96.0",
                "(64.0-128)",
                "192",
                "(128-256)",
                "0.50"
            ]
        );
        let rand_read: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(rand_read, ["rand_read", "IOPS", "800", "800", "1.00"]);
        assert_eq!(
            &lines[5..],
            [
                "ratio_seq_write=0.50",
                "ratio_seq_read=0.25",
                "ratio_rand_write=0.50",
                "ratio_rand_read=1.00"
            ]
        );
    }

    #[test]
    fn a_log_without_a_side_or_with_a_failure_is_an_error() {
        let no_plain: String = LOG
            .lines()
            .filter(|l| !l.starts_with("RESULT plain"))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = parse_log(&no_plain).unwrap_err();
        assert!(e.0.contains("no RESULT line for the plain side"), "{e}");

        let e = parse_log("INFO x\nFAILED cannot map the encrypted disk: EINVAL\n").unwrap_err();
        assert_eq!(
            e.0,
            "the guest failed: cannot map the encrypted disk: EINVAL"
        );

        let twice = format!(
            "{LOG}RESULT plain seq_write_mib_s=1 seq_read_mib_s=2 rand_write_iops=3 rand_read_iops=4\n"
        );
        assert!(
            parse_log(&twice)
                .unwrap_err()
                .0
                .contains("two RESULT lines")
        );

        assert!(parse_log("").unwrap_err().0.contains("did not finish"));
    }
}
