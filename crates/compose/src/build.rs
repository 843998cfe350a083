//! `build:`: what a service's image is built from. The CVM builds it with
//! its container engine, so the measured compose file covers the recipe.

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
            reason: "a remote build context is not fetched by the CVM; inline the Dockerfile with dockerfile_inline".into(),
        });
    }
    let absolute = if context.starts_with('/') {
        context.clone()
    } else {
        format!("{APP_DIR}/{context}")
    };
    spec.context = normalize_absolute(&absolute).ok_or_else(|| {
        ComposeError::invalid(format!("{field}.context"), format!("{context:?} leaves /"))
    })?;
    if spec.dockerfile.is_some() && spec.dockerfile_inline.is_some() {
        return Err(ComposeError::invalid(
            field,
            "dockerfile and dockerfile_inline cannot both be set",
        ));
    }
    if spec.dockerfile_inline.is_none() {
        // The CVM receives only the compose file: a Dockerfile beside it on
        // the developer's machine is not there.
        return Err(ComposeError::Unsupported {
            field: field.to_string(),
            reason: format!(
                "the Dockerfile ({}) is a file on your machine, which the CVM does not receive: put its text under dockerfile_inline",
                spec.dockerfile.as_deref().unwrap_or("Dockerfile")
            ),
        });
    }
    Ok(spec)
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
    fn files_and_remote_contexts_the_cvm_lacks_are_refused() {
        assert!(matches!(
            build("context: .\n"),
            Err(ComposeError::Unsupported { .. })
        ));
        assert!(
            build("context: .\ndockerfile: Dockerfile\n")
                .unwrap_err()
                .to_string()
                .contains("dockerfile_inline")
        );
        assert!(matches!(
            build("context: https://github.com/x/y.git\ndockerfile_inline: FROM x\n"),
            Err(ComposeError::Unsupported { .. })
        ));
        assert!(build("context: ..\ndockerfile_inline: FROM x\n").is_ok());
        assert!(build("context: ../..\ndockerfile_inline: FROM x\n").is_err());
        assert!(matches!(
            build("dockerfile_inline: FROM x\nplatforms: [linux/arm64]\n"),
            Err(ComposeError::UnsupportedPlatform { .. })
        ));
    }
}
