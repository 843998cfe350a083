//! `dstack vm deploy --check`: reads a compose file (or an
//! app-compose.json) exactly as the guest will, without a supervisor or a
//! VM, and reports every key it would ignore or refuse, with the reason,
//! and every build context it would ship (packed and hashed as a deploy
//! packs them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use dstack_compose::{AppCompose, Compose, ComposeError, Vars};
use serde_json::json;

use super::super::Failure;
use super::context::{self, ServiceContext};

/// What the check found.
pub(super) struct Report {
    /// Service names that would run.
    services: Vec<String>,
    ignored: Vec<(String, String)>,
    refused: Vec<String>,
    unset_vars: Vec<String>,
    /// Build contexts a deploy would ship.
    shipped: Vec<Shipped>,
}

/// A build context a deploy would ship.
struct Shipped {
    service: String,
    dir: PathBuf,
    files: usize,
    bytes: u64,
    sha256: String,
}

impl From<&ServiceContext> for Shipped {
    fn from(c: &ServiceContext) -> Self {
        Shipped {
            service: c.service.clone(),
            dir: c.dir.clone(),
            files: c.packed.files,
            bytes: c.packed.tar.len() as u64,
            sha256: c.packed.sha256.clone(),
        }
    }
}

/// Checks `file`, interpolating with the variables of `env_file` when given
/// (the values the encrypted env would carry), and packs the build
/// contexts it would ship (quietly with `quiet`).
pub(super) fn check_file(
    file: &Path,
    env_file: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let vars = match env_file {
        Some(path) => read_vars(path)?,
        None => Vars::new(),
    };
    // An app-compose.json measures its contexts; a compose YAML's are
    // measured when it is wrapped.
    let (yaml, measured) = if text.trim_start().starts_with('{') {
        match AppCompose::parse_manifest(&text) {
            Ok(app) => (
                app.docker_compose_file.unwrap_or_default(),
                Some(app.build_contexts),
            ),
            Err(e) => return Ok(Report::refused_manifest(&e)),
        }
    } else {
        (text, None)
    };
    let check = Compose::check(&yaml, &vars);
    let mut refused: Vec<String> = check.refused.iter().map(ToString::to_string).collect();
    let mut shipped = Vec::new();
    if let Some(compose) = &check.compose {
        let listed: BTreeSet<String> = measured.iter().flatten().map(|(s, _)| s.clone()).collect();
        let mut progress = super::pack_progress(quiet);
        for (_, packed) in context::pack_services(file, compose, &listed, &mut progress) {
            let checked = packed.and_then(|c| match &measured {
                Some(hashes) => context::check_measured(&c, hashes).map(|()| c),
                None => Ok(c),
            });
            match checked {
                Ok(c) => shipped.push(Shipped::from(&c)),
                Err(e) => refused.push(e.to_string()),
            }
        }
        refused.extend(stray_contexts(compose, measured.as_ref()));
    }
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
        refused,
        unset_vars: check.unset_vars,
        shipped,
    })
}

/// Entries of an app-compose.json's `build_contexts` that name no service
/// building its image (the guest refuses the file).
fn stray_contexts(compose: &Compose, measured: Option<&BTreeMap<String, String>>) -> Vec<String> {
    measured
        .into_iter()
        .flatten()
        .filter(|(service, _)| {
            compose
                .services
                .get(*service)
                .is_none_or(|s| s.build.is_none())
        })
        .map(|(service, _)| {
            format!("build_contexts.{service}: names no service that builds its image")
        })
        .collect()
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
            shipped: Vec::new(),
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
                "build_contexts": self.shipped.iter().map(|s| json!({
                    "service": s.service,
                    "dir": s.dir.display().to_string(),
                    "files": s.files,
                    "bytes": s.bytes,
                    "sha256": s.sha256,
                })).collect::<Vec<_>>(),
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
            for s in &self.shipped {
                println!(
                    "ships    services.{}.build: the context {} ({} files, {} packed, sha256 {}), measured in the app-compose",
                    s.service,
                    s.dir.display(),
                    s.files,
                    super::human_bytes(s.bytes),
                    s.sha256
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A compose file beside a context directory `web/` with a Dockerfile.
    fn app(dir: &Path, yaml: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("web")).unwrap();
        std::fs::write(dir.join("web/Dockerfile"), "FROM x\nCOPY page.html /www/\n").unwrap();
        std::fs::write(dir.join("web/page.html"), "<p>hi</p>\n").unwrap();
        let file = dir.join("compose.yml");
        std::fs::write(&file, yaml).unwrap();
        file
    }

    const YAML: &str = "services:\n  web:\n    build: {context: ./web, dockerfile: Dockerfile}\n";

    #[test]
    fn a_local_context_is_accepted_and_reported_as_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = app(dir.path(), YAML);
        let report = check_file(&file, None, true).unwrap();
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        let [shipped] = report.shipped.as_slice() else {
            panic!("one context")
        };
        assert_eq!(shipped.service, "web");
        assert_eq!(shipped.dir, dir.path().join("web").canonicalize().unwrap());
        assert_eq!(shipped.files, 2);
        // What a deploy measures: the same hash.
        let bundle = super::super::app_compose(&file, "app", false, true).unwrap();
        assert!(
            bundle.app_compose.contains(&format!(
                "\"build_contexts\":{{\"web\":\"{}\"}}",
                shipped.sha256
            )),
            "{}",
            bundle.app_compose
        );
        assert_eq!(bundle.contexts[0].packed.sha256, shipped.sha256);
        assert!(report.finish(&file, true).is_ok());
    }

    #[test]
    fn missing_contexts_and_dockerfiles_and_remote_ones_are_refused_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = app(
            dir.path(),
            "services:\n  web:\n    build: ./missing\n  api:\n    build: {context: ./web, dockerfile: Containerfile}\n",
        );
        let report = check_file(&file, None, true).unwrap();
        let missing = dir.path().join("./missing");
        let no_file = dir
            .path()
            .join("web")
            .canonicalize()
            .unwrap()
            .join("Containerfile");
        assert_eq!(
            report.refused,
            [
                format!(
                    "services.api.build.dockerfile: the Dockerfile {} does not exist",
                    no_file.display()
                ),
                format!(
                    "services.web.build.context: the build context {} does not exist",
                    missing.display()
                ),
            ]
        );
        assert!(report.shipped.is_empty());
        assert!(matches!(
            report.finish(&file, true),
            Err(Failure::Rejected(_))
        ));

        let file = app(
            dir.path(),
            "services:\n  web:\n    build: https://github.com/x/y.git#main\n",
        );
        let report = check_file(&file, None, true).unwrap();
        assert_eq!(report.refused.len(), 1);
        assert!(
            report.refused[0].starts_with(
                "services.web.build.context: not supported in a CVM: a remote build context"
            ),
            "{:?}",
            report.refused
        );
    }

    #[test]
    fn an_app_compose_json_must_measure_the_context_it_ships() {
        let dir = tempfile::tempdir().unwrap();
        app(dir.path(), YAML);
        let json = |contexts: serde_json::Value| {
            let file = dir.path().join("app-compose.json");
            let mut value = json!({
                "docker_compose_file": YAML, "manifest_version": 2, "name": "app",
                "runner": "docker-compose",
            });
            if !contexts.is_null() {
                value["build_contexts"] = contexts;
            }
            std::fs::write(&file, value.to_string()).unwrap();
            file
        };
        let packed = check_file(&dir.path().join("compose.yml"), None, true)
            .unwrap()
            .shipped[0]
            .sha256
            .clone();
        let report = check_file(&json(json!({ "web": packed })), None, true).unwrap();
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        assert_eq!(report.shipped.len(), 1);

        let report = check_file(&json(serde_json::Value::Null), None, true).unwrap();
        assert_eq!(report.refused.len(), 1);
        assert!(
            report.refused[0].contains(&format!("\"build_contexts\": {{\"web\": \"{packed}\"}}")),
            "{:?}",
            report.refused
        );
        let stale = "0".repeat(64);
        let report = check_file(&json(json!({ "web": stale, "db": stale })), None, true).unwrap();
        assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
        assert!(report.refused[0].starts_with("build_contexts.web: app-compose.json measures 000"));
        assert_eq!(
            report.refused[1],
            "build_contexts.db: names no service that builds its image"
        );
        // A deploy of that file is refused the same way.
        let err = super::super::app_compose(&json(json!({ "web": stale })), "app", false, true)
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("the context changed"),
            "{err:#}"
        );
    }
}
