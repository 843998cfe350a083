//! Pins that Debian no longer serves. Debian keeps only the current version
//! of a package in its suites, and a kernel security update even renames the
//! kernel package, so a lock goes stale. A strict build then fails with a
//! named error; a build that allows it (`allow_superseded`) takes the newest
//! version apt offers instead — same package, or for the kernel the newest
//! `linux-image-<major.minor>.*+deb12-cloud-amd64` — verified against apt's
//! sha256 and recorded in `metadata.json`, and reports the substitution: the
//! image then differs from the locked one (and says so).

use std::cmp::Ordering;
use std::process::Command;

use crate::error::BuildError;
use crate::inputs::{PinnedPackage, Role};

/// One apt record (`apt-cache show`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    name: String,
    version: String,
    sha256: String,
    size: u64,
}

fn apt_cache(args: &[&str]) -> Result<Option<String>, BuildError> {
    let output = Command::new("apt-cache")
        .args(args)
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "apt-cache",
            source,
        })?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Parses the records of `apt-cache show` output.
fn parse_records(text: &str) -> Vec<Record> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |key: &str| {
                stanza.lines().find_map(|line| {
                    line.strip_prefix(key)
                        .and_then(|rest| rest.strip_prefix(':'))
                        .map(|v| v.trim().to_owned())
                })
            };
            Some(Record {
                name: field("Package")?,
                version: field("Version")?,
                sha256: field("SHA256")?,
                size: field("Size")?.parse().ok()?,
            })
        })
        .collect()
}

/// Whether apt can still fetch exactly this pin.
fn available(pin: &PinnedPackage) -> Result<bool, BuildError> {
    let spec = format!("{}={}", pin.name, pin.version);
    Ok(apt_cache(&["show", &spec])?
        .map(|text| parse_records(&text).iter().any(|r| r.sha256 == pin.sha256))
        .unwrap_or(false))
}

/// Debian version order, as dpkg defines it.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let newer = |x: &str, y: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", x, "gt", y])
            .status()
            .is_ok_and(|s| s.success())
    };
    if newer(a, b) {
        Ordering::Greater
    } else if newer(b, a) {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

/// The kernel packages of the same series and flavour as `kernel_name`
/// (`linux-image-6.12.117+deb12-cloud-amd64` → `linux-image-6.12.*+deb12-cloud-amd64`).
fn same_series(kernel_name: &str, candidate: &str) -> bool {
    let split = |name: &str| -> Option<(String, String)> {
        let rest = name.strip_prefix("linux-image-")?;
        let (version, flavour) = rest.split_once('+')?;
        let mut parts = version.split('.');
        let series = format!("{}.{}", parts.next()?, parts.next()?);
        parts.next()?.parse::<u32>().ok()?;
        Some((series, flavour.to_owned()))
    };
    match (split(kernel_name), split(candidate)) {
        (Some(a), Some(b)) => a == b && !candidate.ends_with("-unsigned"),
        _ => false,
    }
}

/// The newest record apt has to replace `pin`.
fn replacement(pin: &PinnedPackage) -> Result<Option<Record>, BuildError> {
    let names: Vec<String> = if pin.role == Role::Kernel {
        let prefix = pin.name.split('.').take(2).collect::<Vec<_>>().join(".");
        apt_cache(&["pkgnames", &prefix])?
            .unwrap_or_default()
            .lines()
            .filter(|name| same_series(&pin.name, name))
            .map(str::to_owned)
            .collect()
    } else {
        vec![pin.name.clone()]
    };
    let mut best: Option<Record> = None;
    for name in names {
        let records = apt_cache(&["show", &name])?.unwrap_or_default();
        for record in parse_records(&records) {
            let newer = match &best {
                None => true,
                Some(b) => {
                    // For the kernel the package name carries the version.
                    let (x, y) = if pin.role == Role::Kernel {
                        (&record.name, &b.name)
                    } else {
                        (&record.version, &b.version)
                    };
                    compare_versions(x, y) == Ordering::Greater
                        || (x == y
                            && compare_versions(&record.version, &b.version) == Ordering::Greater)
                }
            };
            if newer {
                best = Some(record);
            }
        }
    }
    Ok(best)
}

/// A substitution made for a pin apt no longer serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The pin, `name=version`.
    pub pinned: String,
    /// What is used instead, `name=version`.
    pub using: String,
}

/// Replaces every pin that is neither in `is_cached` nor fetchable with the
/// newest version apt offers; with `allow` false such a pin is an error.
pub(crate) fn resolve(
    pins: Vec<PinnedPackage>,
    allow: bool,
    is_cached: impl Fn(&PinnedPackage) -> bool,
) -> Result<(Vec<PinnedPackage>, Vec<Substitution>), BuildError> {
    let mut out = Vec::with_capacity(pins.len());
    let mut substitutions = Vec::new();
    for pin in pins {
        if is_cached(&pin) || available(&pin)? {
            out.push(pin);
            continue;
        }
        let pinned = format!("{}={}", pin.name, pin.version);
        if !allow {
            return Err(BuildError::Superseded { package: pinned });
        }
        let Some(record) = replacement(&pin)? else {
            return Err(BuildError::Superseded { package: pinned });
        };
        substitutions.push(Substitution {
            pinned,
            using: format!("{}={}", record.name, record.version),
        });
        out.push(PinnedPackage {
            name: record.name,
            version: record.version,
            sha256: record.sha256,
            size: record.size,
            ..pin
        });
    }
    Ok((out, substitutions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_records() {
        let text = "Package: ovmf\nVersion: 2022.11-6+deb12u2\nSize: 7683456\nSHA256: e73d\nDescription: x\n\nPackage: ovmf\nVersion: 2022.11-6\nSize: 1\nSHA256: ab\n";
        let records = parse_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].version, "2022.11-6+deb12u2");
        assert_eq!(records[0].size, 7683456);
        assert_eq!(records[1].sha256, "ab");
    }

    #[test]
    fn kernel_series_and_flavour_must_match() {
        let pin = "linux-image-6.12.117+deb12-cloud-amd64";
        assert!(same_series(pin, "linux-image-6.12.120+deb12-cloud-amd64"));
        assert!(!same_series(pin, "linux-image-6.12.120+deb12-amd64"));
        assert!(!same_series(pin, "linux-image-6.1.0+deb12-cloud-amd64"));
        assert!(!same_series(
            pin,
            "linux-image-6.12.120+deb12-cloud-amd64-unsigned"
        ));
        assert!(!same_series(pin, "linux-image-cloud-amd64"));
    }

    #[test]
    fn versions_order_as_dpkg_does() {
        assert_eq!(
            compare_versions("6.12.117-1~deb12u1", "6.12.48-1~deb12u1"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Ordering::Less);
    }

    /// Needs the host's apt lists with bookworm-security (scripts/install-deps).
    #[test]
    #[ignore = "reads the host's apt lists"]
    fn a_gone_kernel_is_replaced_by_the_newest_of_its_series() {
        let gone = PinnedPackage {
            name: "linux-image-6.12.1+deb12-cloud-amd64".into(),
            version: "6.12.1-1~deb12u1".into(),
            sha256: "00".repeat(32),
            size: 1,
            role: Role::Kernel,
            dev_only: false,
        };
        assert!(resolve(vec![gone.clone()], false, |_| false).is_err());
        let (used, subs) = resolve(vec![gone], true, |_| false).unwrap();
        assert!(same_series(
            "linux-image-6.12.1+deb12-cloud-amd64",
            &used[0].name
        ));
        assert_eq!(used[0].role, Role::Kernel);
        assert_eq!(used[0].sha256.len(), 64);
        assert_eq!(subs.len(), 1, "{subs:?}");
    }

    #[test]
    fn cached_pins_are_kept_without_asking_apt() {
        let pin = PinnedPackage {
            name: "nonexistent-package-xyz".into(),
            version: "1".into(),
            sha256: "00".repeat(32),
            size: 1,
            role: Role::Shell,
            dev_only: true,
        };
        let (kept, subs) = resolve(vec![pin.clone()], false, |_| true).unwrap();
        assert_eq!(kept, vec![pin.clone()]);
        assert!(subs.is_empty());
        // Not cached, not servable, not allowed: a named error.
        let err = resolve(vec![pin], false, |_| false).unwrap_err();
        assert!(matches!(err, BuildError::Superseded { .. }), "{err}");
    }
}
