//! Variable interpolation in a compose file, as docker compose does it
//! before reading the services: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`,
//! `${VAR+alt}`, nested defaults, and `$$` for a literal `$`.
//!
//! In a CVM the variables are the app's decrypted env (already filtered by
//! `allowed_envs`): the compose-hash covers the file as written, and the
//! values reach it only here, inside the guest. A `environment:` entry
//! without a value (`- FOO`, `FOO:`) takes the variable's value, or is
//! left out when the variable is unset, as docker compose does.

use std::collections::BTreeMap;

use yaml_serde::Value;

use crate::ComposeError;

/// The variables a compose file is interpolated with.
pub type Vars = BTreeMap<String, String>;

/// Interpolates every string value of a parsed compose document in place
/// (mapping keys are left as written), and resolves value-less
/// `environment` entries. Returns the names of variables that were used
/// but unset (they became empty strings; docker compose warns about them).
pub fn interpolate_document(doc: &mut Value, vars: &Vars) -> Result<Vec<String>, ComposeError> {
    let mut unset = Vec::new();
    if let Some(Value::Mapping(services)) = doc.get_mut("services") {
        for (name, service) in services.iter_mut() {
            let name = name.as_str().unwrap_or_default().to_owned();
            if let Some(env) = service.get_mut("environment") {
                resolve_bare_environment(env, vars);
            }
            walk(service, vars, &format!("services.{name}"), &mut unset)?;
        }
    }
    for section in ["volumes", "networks", "configs", "secrets"] {
        if let Some(value) = doc.get_mut(section) {
            walk(value, vars, section, &mut unset)?;
        }
    }
    unset.sort();
    unset.dedup();
    Ok(unset)
}

fn walk(
    value: &mut Value,
    vars: &Vars,
    path: &str,
    unset: &mut Vec<String>,
) -> Result<(), ComposeError> {
    match value {
        Value::String(text) => *text = interpolate(text, vars, path, unset)?,
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, vars, &format!("{path}[{i}]"), unset)?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key.as_str().map(str::to_owned).unwrap_or_default();
                walk(item, vars, &format!("{path}.{key}"), unset)?;
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, vars, path, unset)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// `- FOO` and `FOO:` take FOO's value, or disappear when FOO is unset.
fn resolve_bare_environment(env: &mut Value, vars: &Vars) {
    match env {
        Value::Sequence(items) => {
            items.retain_mut(|item| match item {
                Value::String(entry) if !entry.contains('=') => match vars.get(entry.as_str()) {
                    Some(value) => {
                        // `$$` keeps the value literal through interpolation.
                        *entry = format!("{entry}={}", value.replace('$', "$$"));
                        true
                    }
                    None => false,
                },
                _ => true,
            });
        }
        Value::Mapping(map) => {
            map.retain(|key, value| {
                if !value.is_null() {
                    return true;
                }
                match key.as_str().and_then(|k| vars.get(k)) {
                    Some(found) => {
                        *value = Value::String(found.replace('$', "$$"));
                        true
                    }
                    None => false,
                }
            });
        }
        _ => {}
    }
}

/// Interpolates one string; `field` names it in errors.
pub fn interpolate(
    text: &str,
    vars: &Vars,
    field: &str,
    unset: &mut Vec<String>,
) -> Result<String, ComposeError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = closing_brace(braced).ok_or_else(|| {
                invalid(
                    field,
                    format!("unterminated \"${{\" in {:?}", shorten(text)),
                )
            })?;
            out.push_str(&expand(&braced[..end], vars, field, unset)?);
            rest = &braced[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(invalid(
                    field,
                    format!(
                        "invalid interpolation in {:?}: write \"$$\" for a literal \"$\"",
                        shorten(text)
                    ),
                ));
            }
            out.push_str(&lookup(&after[..len], vars, unset));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `NAME[op word]` inside `${...}`.
fn expand(
    inner: &str,
    vars: &Vars,
    field: &str,
    unset: &mut Vec<String>,
) -> Result<String, ComposeError> {
    let len = name_len(inner);
    let name = &inner[..len];
    if len == 0 {
        return Err(invalid(
            field,
            format!("invalid variable name in \"${{{}}}\"", shorten(inner)),
        ));
    }
    let op = &inner[len..];
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let word = |w: &str, unset: &mut Vec<String>| interpolate(w, vars, field, unset);
    Ok(if op.is_empty() {
        lookup(name, vars, unset)
    } else if let Some(w) = op.strip_prefix(":-") {
        if set_nonempty {
            value.cloned().unwrap_or_default()
        } else {
            word(w, unset)?
        }
    } else if let Some(w) = op.strip_prefix('-') {
        match value {
            Some(v) => v.clone(),
            None => word(w, unset)?,
        }
    } else if let Some(w) = op.strip_prefix(":?") {
        if !set_nonempty {
            return Err(required(field, name, &word(w, unset)?));
        }
        value.cloned().unwrap_or_default()
    } else if let Some(w) = op.strip_prefix('?') {
        match value {
            Some(v) => v.clone(),
            None => return Err(required(field, name, &word(w, unset)?)),
        }
    } else if let Some(w) = op.strip_prefix(":+") {
        if set_nonempty {
            word(w, unset)?
        } else {
            String::new()
        }
    } else if let Some(w) = op.strip_prefix('+') {
        if value.is_some() {
            word(w, unset)?
        } else {
            String::new()
        }
    } else {
        return Err(invalid(
            field,
            format!(
                "invalid interpolation \"${{{}}}\": expected one of :- - :? ? :+ + after the name",
                shorten(inner)
            ),
        ));
    })
}

fn lookup(name: &str, vars: &Vars, unset: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(value) => value.clone(),
        None => {
            unset.push(name.to_owned());
            String::new()
        }
    }
}

/// Length of the variable name at the start of `text` (`[A-Za-z_][A-Za-z0-9_]*`).
fn name_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if !bytes
        .first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
    {
        return 0;
    }
    bytes
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(bytes.len())
}

/// Index of the `}` closing a `${`, counting nested `${...}`.
fn closing_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn invalid(field: &str, reason: String) -> ComposeError {
    ComposeError::invalid(field, reason)
}

/// A required variable is unset; the message is the compose author's
/// (never a value: the variable has none).
fn required(field: &str, name: &str, message: &str) -> ComposeError {
    let reason = if message.is_empty() {
        format!("required variable {name} is not set")
    } else {
        format!("required variable {name} is not set: {message}")
    };
    ComposeError::invalid(field, reason)
}

/// Errors quote the text as written (before interpolation, so no value),
/// cut short.
fn shorten(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("NAME", "web"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn run(text: &str) -> Result<String, ComposeError> {
        interpolate(text, &vars(), "f", &mut Vec::new())
    }

    #[test]
    fn expands_every_form_docker_compose_documents() {
        assert_eq!(run("$NAME-${NAME}").unwrap(), "web-web");
        assert_eq!(run("${MISSING:-dflt} ${EMPTY:-dflt}").unwrap(), "dflt dflt");
        assert_eq!(run("${MISSING-dflt} [${EMPTY-dflt}]").unwrap(), "dflt []");
        assert_eq!(run("${NAME:+alt} [${EMPTY:+alt}]").unwrap(), "alt []");
        assert_eq!(run("${EMPTY+alt} [${MISSING+alt}]").unwrap(), "alt []");
        assert_eq!(run("${NAME:?needed}").unwrap(), "web");
        assert_eq!(
            run("cost: $$5 and $${NAME}").unwrap(),
            "cost: $5 and ${NAME}"
        );
        assert_eq!(run("${MISSING:-${PORT}}").unwrap(), "8080");
        assert_eq!(run("${MISSING:-${ALSO:-x}y}").unwrap(), "xy");
        assert_eq!(run("0.0.0.0:${PORT}:80").unwrap(), "0.0.0.0:8080:80");
        assert_eq!(run("no variables").unwrap(), "no variables");
    }

    #[test]
    fn unset_variables_become_empty_and_are_reported() {
        let mut unset = Vec::new();
        assert_eq!(
            interpolate("a${MISSING}b$OTHER", &vars(), "f", &mut unset).unwrap(),
            "ab"
        );
        assert_eq!(unset, ["MISSING", "OTHER"]);
    }

    #[test]
    fn required_variables_stop_with_the_authors_message() {
        let err = run("${MISSING:?set the API key}").unwrap_err().to_string();
        assert_eq!(
            err,
            "f: required variable MISSING is not set: set the API key"
        );
        let err = run("${EMPTY:?}").unwrap_err().to_string();
        assert_eq!(err, "f: required variable EMPTY is not set");
        assert_eq!(run("${EMPTY?}").unwrap(), "");
    }

    #[test]
    fn malformed_templates_are_refused_by_field() {
        for bad in ["${NAME", "$1", "a $ b", "${}", "${1X}", "${NAME!x}"] {
            let err = run(bad).unwrap_err().to_string();
            assert!(err.starts_with("f: "), "{bad}: {err}");
        }
    }

    #[test]
    fn a_value_containing_a_dollar_is_not_expanded_again() {
        let vars: Vars = [("A".to_owned(), "x$B".to_owned())].into();
        assert_eq!(
            interpolate("${A}", &vars, "f", &mut Vec::new()).unwrap(),
            "x$B"
        );
    }

    #[test]
    fn documents_are_interpolated_and_bare_environment_entries_resolved() {
        let mut doc: Value = yaml_serde::from_str(
            r#"
services:
  web:
    image: "nginx:${TAG:-latest}"
    environment:
      - NAME
      - MISSING
      - FIXED=$PORT
    ports: ["${PORT}:80"]
  api:
    image: api
    environment:
      NAME:
      MISSING:
      COST: $$5
"#,
        )
        .unwrap();
        let unset = interpolate_document(&mut doc, &vars()).unwrap();
        assert!(unset.is_empty(), "{unset:?}");
        let web = &doc["services"]["web"];
        assert_eq!(web["image"], "nginx:latest");
        assert_eq!(
            web["environment"],
            yaml_serde::from_str::<Value>("[NAME=web, FIXED=8080]").unwrap()
        );
        assert_eq!(web["ports"][0], "8080:80");
        let api = &doc["services"]["api"]["environment"];
        assert_eq!(api["NAME"], "web");
        assert!(api.get("MISSING").is_none());
        assert_eq!(api["COST"], "$5");
    }

    #[test]
    fn errors_name_the_field() {
        let mut doc: Value =
            yaml_serde::from_str("services:\n  web:\n    image: ${IMAGE:?which image}\n").unwrap();
        let err = interpolate_document(&mut doc, &Vars::new())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "services.web.image: required variable IMAGE is not set: which image"
        );
    }
}
