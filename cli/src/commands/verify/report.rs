//! Printing a verdict: a table for people, JSON for scripts.

use serde_json::{Value, json};

use super::checks::{Check, Outcome, first_failure};
use crate::predict::VmShape;

/// What was verified against what, for the report's header.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    /// The image directory.
    pub(crate) image_dir: String,
    /// The image's name (metadata.json).
    pub(crate) image_name: String,
    /// Its os_image_hash.
    pub(crate) os_image_hash: String,
    /// The VM shape predicted for.
    pub(crate) shape: VmShape,
    /// Where the evidence came from.
    pub(crate) evidence: String,
}

fn status(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "fail",
        Outcome::Skipped(_) => "skipped",
    }
}

/// The human-readable report (stdout); the finding itself goes to stderr
/// through the command's `Rejected` error.
pub(crate) fn print_human(subject: &Subject, checks: &[Check]) {
    println!("image:     {} ({})", subject.image_name, subject.image_dir);
    println!("           os_image_hash {}", subject.os_image_hash);
    println!(
        "vm shape:  {} vCPUs, {} MiB",
        subject.shape.vcpus, subject.shape.memory_mb
    );
    println!("evidence:  {}", subject.evidence);
    for check in checks {
        let mark = match &check.outcome {
            Outcome::Pass => "ok  ",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skipped(_) => "skip",
        };
        let detail = match &check.outcome {
            Outcome::Skipped(why) => (*why).to_owned(),
            Outcome::Fail(_) => format!(
                "expected {}, got {}",
                check.expected.as_deref().unwrap_or("-"),
                check.actual.as_deref().unwrap_or("-")
            ),
            Outcome::Pass => check.actual.clone().unwrap_or_default(),
        };
        println!("  {mark}  {:<14} {detail}", check.kind.as_str());
    }
    match first_failure(checks) {
        None => println!("verdict:   VERIFIED"),
        Some(finding) => println!("verdict:   REJECTED at {}", finding.check().as_str()),
    }
}

/// The machine-readable verdict: every check with its status, expected and
/// actual values, and the first failure.
pub(crate) fn to_json(subject: &Subject, checks: &[Check]) -> Value {
    let list: Vec<Value> = checks
        .iter()
        .map(|check| {
            let mut item = json!({
                "check": check.kind.as_str(),
                "status": status(&check.outcome),
                "expected": check.expected,
                "actual": check.actual,
            });
            match &check.outcome {
                Outcome::Fail(finding) => {
                    item["finding"] = json!(finding.code());
                    item["message"] = json!(finding.to_string());
                }
                Outcome::Skipped(why) => item["reason"] = json!(why),
                Outcome::Pass => {}
            }
            item
        })
        .collect();
    let first = first_failure(checks).map(|finding| {
        json!({
            "check": finding.check().as_str(),
            "finding": finding.code(),
            "message": finding.to_string(),
        })
    });
    json!({
        "verdict": if first.is_none() { "verified" } else { "rejected" },
        "image": {
            "dir": subject.image_dir,
            "name": subject.image_name,
            "os_image_hash": subject.os_image_hash,
            "vcpus": subject.shape.vcpus,
            "memory_mb": subject.shape.memory_mb,
        },
        "evidence": subject.evidence,
        "checks": list,
        "first_failure": first,
    })
}
