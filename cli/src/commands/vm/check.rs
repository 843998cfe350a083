//! `dstack vm deploy --check`: reads a compose file (or an
//! app-compose.json) exactly as the guest will, without a supervisor or a
//! VM, and reports every key it would ignore or refuse, with the reason.

use std::path::Path;

use anyhow::Context;
use dstack_compose::{AppCompose, Compose, ComposeError, Vars};
use serde_json::json;

use super::super::Failure;

/// What the check found.
pub(super) struct Report {
    /// Service names that would run.
    services: Vec<String>,
    ignored: Vec<(String, String)>,
    refused: Vec<String>,
    unset_vars: Vec<String>,
}

/// Checks `file`, interpolating with the variables of `env_file` when given
/// (the values the encrypted env would carry).
pub(super) fn check_file(file: &Path, env_file: Option<&Path>) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let vars = match env_file {
        Some(path) => read_vars(path)?,
        None => Vars::new(),
    };
    let yaml = if text.trim_start().starts_with('{') {
        match AppCompose::parse_manifest(&text) {
            Ok(app) => app.docker_compose_file.unwrap_or_default(),
            Err(e) => return Ok(Report::refused_manifest(&e)),
        }
    } else {
        text
    };
    let check = Compose::check(&yaml, &vars);
    Ok(Report {
        services: check
            .compose
            .map(|c| c.services.into_keys().collect())
            .unwrap_or_default(),
        ignored: check
            .ignored
            .into_iter()
            .map(|i| (i.field, i.reason))
            .collect(),
        refused: check.refused.iter().map(ToString::to_string).collect(),
        unset_vars: check.unset_vars,
    })
}

fn read_vars(path: &Path) -> anyhow::Result<Vars> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let vars = dstack_envcrypt::parse_dotenv(&text)
        .with_context(|| format!("{} is not a valid env file", path.display()))?;
    Ok(vars
        .into_iter()
        .map(|v| (v.key.clone(), v.value.to_string()))
        .collect())
}

impl Report {
    fn refused_manifest(error: &ComposeError) -> Self {
        Report {
            services: Vec::new(),
            ignored: Vec::new(),
            refused: vec![error.to_string()],
            unset_vars: Vec::new(),
        }
    }

    /// Prints the report; an error when the file would be refused.
    pub(super) fn finish(self, file: &Path, as_json: bool) -> Result<(), Failure> {
        if as_json {
            let value = json!({
                "file": file.display().to_string(),
                "accepted": self.refused.is_empty(),
                "services": self.services,
                "ignored": self.ignored.iter().map(|(field, reason)| json!({"field": field, "reason": reason})).collect::<Vec<_>>(),
                "refused": self.refused,
                "unset_variables": self.unset_vars,
            });
            println!("{value:#}");
        } else {
            for refusal in &self.refused {
                println!("refused  {refusal}");
            }
            for (field, reason) in &self.ignored {
                println!("ignored  {field}: {reason}");
            }
            for var in &self.unset_vars {
                println!("unset    ${{{var}}} is not set and reads as empty");
            }
        }
        if self.refused.is_empty() {
            if !as_json {
                println!(
                    "{}: accepted ({} service{}: {})",
                    file.display(),
                    self.services.len(),
                    if self.services.len() == 1 { "" } else { "s" },
                    self.services.join(", ")
                );
            }
            Ok(())
        } else {
            Err(Failure::Rejected(format!(
                "{} would be refused ({} problem{})",
                file.display(),
                self.refused.len(),
                if self.refused.len() == 1 { "" } else { "s" }
            )))
        }
    }
}
