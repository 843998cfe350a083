//! `build:`: what a service's image is built from. The CVM builds it with
//! its container engine, so the measured compose file covers the recipe: an
//! inline Dockerfile is in the compose file itself, and a Dockerfile file
//! with its context is shipped as a tar whose SHA-256 the app-compose
//! measures (`build_contexts`).

use std::path::{Component, Path};

use crate::mounts::{APP_DIR, normalize_absolute};
use crate::service::BuildSpec;
use crate::yaml::{Value, boolean, key_text, list_or_dict, scalar};
use crate::{ComposeError, Findings};

/// Reads `build:` (a context path, or the long form).
pub(crate) fn parse_build(
    field: &str,
    value: &Value,
    findings: &mut Findings,
) -> Result<BuildSpec, ComposeError> {
    let mut spec = BuildSpec {
        context: APP_DIR.to_string(),
        source_context: ".".to_string(),
        shipped_context: None,
        dockerfile: None,
        dockerfile_inline: None,
        args: Default::default(),
        target: None,
        no_cache: false,
    };
    let context = match value {
        Value::String(context) => context.clone(),
        Value::Mapping(m) => {
            for (key, v) in m {
                let key = key_text(key);
                let f = format!("{field}.{key}");
                match key.as_str() {
                    "context" => {}
                    "dockerfile" => spec.dockerfile = Some(scalar(&f, v)?),
                    "dockerfile_inline" => spec.dockerfile_inline = Some(scalar(&f, v)?),
                    "args" => {
                        for (name, value) in list_or_dict(&f, v, '=')? {
                            // A value-less arg was resolved from the app's
                            // env by interpolation, or is left out.
                            if let Some(value) = value {
                                spec.args.insert(name, value);
                            }
                        }
                    }
                    "target" => spec.target = Some(scalar(&f, v)?),
                    "no_cache" => spec.no_cache = boolean(&f, v)?,
                    "labels" | "cache_from" | "cache_to" | "pull" | "tags" | "network" | "shm_size"
                    | "isolation" | "privileged" | "extra_hosts" | "ulimits" => findings.ignore(
                        f,
                        "builds run in the CVM's engine with its defaults (layers cached on the data disk)",
                    ),
                    "platforms" => {
                        for platform in crate::yaml::one_or_many(&f, v)? {
                            if !crate::PLATFORMS.contains(&platform.as_str()) {
                                return Err(ComposeError::UnsupportedPlatform { field: f, platform });
                            }
                        }
                    }
                    "ssh" | "secrets" | "additional_contexts" | "entitlements" => {
                        return Err(ComposeError::Unsupported {
                            field: f,
                            reason: "build secrets, ssh agents and extra contexts are on your machine, not in the CVM".into(),
                        });
                    }
                    k if k.starts_with("x-") => {}
                    _ => return Err(ComposeError::invalid(f, "is not a build key this platform knows")),
                }
            }
            match m.get("context") {
                Some(c) => scalar(&format!("{field}.context"), c)?,
                None => ".".into(),
            }
        }
        _ => return Err(ComposeError::invalid(field, "must be a path or a mapping")),
    };
    if context.contains("://") || context.starts_with("git@") {
        return Err(ComposeError::Unsupported {
            field: format!("{field}.context"),
            reason: "a remote build context is not fetched by the CVM; use a local directory (dstack vm deploy ships it) or dockerfile_inline".into(),
        });
    }
    if spec.dockerfile.is_some() && spec.dockerfile_inline.is_some() {
        return Err(ComposeError::invalid(
            field,
            "dockerfile and dockerfile_inline cannot both be set",
        ));
    }
    if let Some(dockerfile) = &spec.dockerfile
        && !inside_context(dockerfile)
    {
        // What is shipped is the context directory: a Dockerfile elsewhere
        // on the developer's machine would not be in it.
        return Err(ComposeError::Unsupported {
            field: format!("{field}.dockerfile"),
            reason: format!(
                "{dockerfile:?} is outside the build context; only the context directory is shipped to the CVM: move the Dockerfile into it"
            ),
        });
    }
    spec.source_context = context.clone();
    let absolute = if context.starts_with('/') {
        context.clone()
    } else {
        format!("{APP_DIR}/{context}")
    };
    match normalize_absolute(&absolute) {
        Some(path) => spec.context = path,
        // Only an inline Dockerfile is built in a directory of the CVM; a
        // Dockerfile file's context is the shipped one.
        None if spec.dockerfile_inline.is_some() => {
            return Err(ComposeError::invalid(
                format!("{field}.context"),
                format!("{context:?} leaves /"),
            ));
        }
        None => {}
    }
    Ok(spec)
}

/// Whether a Dockerfile path stays inside its context: relative, and never
/// above it.
fn inside_context(path: &str) -> bool {
    if path.is_empty() || path.starts_with('/') {
        return false;
    }
    let mut depth = 0usize;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    depth > 0
}

/// A shipped build context's rule for symlinks, applied alike by the CLI
/// that packs it and the guest that unpacks it: a link at `link` (relative
/// to the context) pointing at `target` must resolve inside the context,
/// judged lexically (no absolute target, no `..` above the context root).
pub fn context_link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<BuildSpec, ComposeError> {
        parse_build(
            "services.s.build",
            &crate::yaml::load(yaml).unwrap(),
            &mut Findings::default(),
        )
    }

    #[test]
    fn an_inline_dockerfile_with_args_and_target() {
        let b = build("context: .\ndockerfile_inline: |\n  FROM x\nargs:\n  A: 1\n  B:\ntarget: final\nno_cache: true\n").unwrap();
        assert_eq!(b.context, "/dstack");
        assert_eq!(b.dockerfile_inline.as_deref(), Some("FROM x\n"));
        assert_eq!(b.args.len(), 1);
        assert_eq!(b.args["A"], "1");
        assert_eq!(b.target.as_deref(), Some("final"));
        assert!(b.no_cache);
    }

    #[test]
    fn a_dockerfile_file_is_read_with_its_context_as_written() {
        let b = build("context: ./app\ndockerfile: docker/Dockerfile.prod\nargs: {SOURCE_DATE_EPOCH: \"0\"}\n").unwrap();
        assert_eq!(b.source_context, "./app");
        assert_eq!(b.context, "/dstack/app");
        assert_eq!(b.dockerfile_path(), "docker/Dockerfile.prod");
        assert!(b.reads_local_files());
        assert_eq!(b.shipped_context, None);
        assert_eq!(b.args["SOURCE_DATE_EPOCH"], "0");
        // The short form, and the default Dockerfile.
        let b = build(".").unwrap();
        assert_eq!(
            (b.source_context.as_str(), b.dockerfile_path()),
            (".", "Dockerfile")
        );
        // A context above / is fine on the developer's machine: it is shipped.
        assert_eq!(build("../../..").unwrap().source_context, "../../..");
        assert!(
            !build("dockerfile_inline: FROM x\n")
                .unwrap()
                .reads_local_files()
        );
    }

    #[test]
    fn remote_contexts_and_dockerfiles_outside_the_context_are_refused() {
        for yaml in [
            "context: https://github.com/x/y.git\ndockerfile_inline: FROM x\n",
            "git@github.com:x/y.git",
            "context: .\ndockerfile: ../Dockerfile\n",
            "context: .\ndockerfile: /etc/Dockerfile\n",
            "context: .\ndockerfile: a/../../Dockerfile\n",
        ] {
            assert!(
                matches!(build(yaml), Err(ComposeError::Unsupported { .. })),
                "{yaml}"
            );
        }
        assert!(build("context: .\ndockerfile: a/../Dockerfile\n").is_ok());
        assert!(build("context: ..\ndockerfile_inline: FROM x\n").is_ok());
        assert!(build("context: ../..\ndockerfile_inline: FROM x\n").is_err());
        assert!(build("dockerfile: D\ndockerfile_inline: FROM x\n").is_err());
        assert!(matches!(
            build("dockerfile_inline: FROM x\nplatforms: [linux/arm64]\n"),
            Err(ComposeError::UnsupportedPlatform { .. })
        ));
    }
}
