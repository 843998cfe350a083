//! Reading a compose document: YAML (through `yaml_serde`, the YAML
//! organisation's maintained successor of the archived `serde_yaml`) with
//! anchors and `<<` merge keys resolved as docker compose resolves them,
//! and the typed readers every section uses. Each reader names the field
//! it was given in its error.

use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) use yaml_serde::{Mapping, Value};

use crate::{ComposeError, parse_duration};

/// Parses YAML text into a document with merge keys applied. Duplicate
/// keys are an error (as in docker compose).
pub(crate) fn load(text: &str) -> Result<Value, ComposeError> {
    let mut doc: Value =
        yaml_serde::from_str(text).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    doc.apply_merge()
        .map_err(|e| ComposeError::Yaml(e.to_string()))?;
    Ok(doc)
}

/// A mapping key as text (compose keys are strings; a number key such as
/// a sysctl value's name is read as written).
pub(crate) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// A scalar as text; null is the empty string.
pub(crate) fn scalar(field: &str, value: &Value) -> Result<String, ComposeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(ComposeError::invalid(field, "must be a scalar")),
    }
}

/// A command line: a list of strings, or one string split as a shell would.
pub(crate) fn string_list(field: &str, value: &Value) -> Result<Vec<String>, ComposeError> {
    match value {
        Value::String(s) => {
            shell_words::split(s).map_err(|e| ComposeError::invalid(field, e.to_string()))
        }
        Value::Sequence(items) => items.iter().map(|v| scalar(field, v)).collect(),
        _ => Err(ComposeError::invalid(
            field,
            "must be a string or a list of strings",
        )),
    }
}

/// A list of scalars, or one scalar taken as a one-item list.
pub(crate) fn one_or_many(field: &str, value: &Value) -> Result<Vec<String>, ComposeError> {
    match value {
        Value::Sequence(items) => items.iter().map(|v| scalar(field, v)).collect(),
        Value::Null => Ok(Vec::new()),
        other => Ok(vec![scalar(field, other)?]),
    }
}

/// A list of scalars.
pub(crate) fn list(field: &str, value: &Value) -> Result<Vec<String>, ComposeError> {
    match value {
        Value::Sequence(items) => items.iter().map(|v| scalar(field, v)).collect(),
        _ => Err(ComposeError::invalid(field, "must be a list")),
    }
}

/// Compose's "list or dict": `{K: v}` or `["K=v", "K"]`, with `sep` between
/// key and value in the list form (`=`, or `:` for extra_hosts). A key
/// without a value maps to `None`.
pub(crate) fn list_or_dict(
    field: &str,
    value: &Value,
    sep: char,
) -> Result<BTreeMap<String, Option<String>>, ComposeError> {
    match value {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::Null => None,
                    v => Some(scalar(&format!("{field}.{}", key_text(k)), v)?),
                };
                Ok((key_text(k), value))
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let s = scalar(field, item)?;
                Ok(match s.split_once(sep) {
                    Some((k, v)) => (k.trim().to_string(), Some(v.to_string())),
                    None => (s.trim().to_string(), None),
                })
            })
            .collect(),
        Value::Null => Ok(BTreeMap::new()),
        _ => Err(ComposeError::invalid(field, "must be a mapping or a list")),
    }
}

/// A boolean (`true`/`false`; YAML 1.1's `yes`/`no` are strings and refused).
pub(crate) fn boolean(field: &str, value: &Value) -> Result<bool, ComposeError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
        _ => Err(ComposeError::invalid(field, "must be true or false")),
    }
}

/// A non-negative integer.
pub(crate) fn unsigned(field: &str, value: &Value) -> Result<u64, ComposeError> {
    let text = scalar(field, value)?;
    text.trim()
        .parse()
        .map_err(|_| ComposeError::invalid(field, format!("{text:?} is not a whole number")))
}

/// A duration such as `30s` or `1m30s`, or `default` when absent.
pub(crate) fn duration(
    field: &str,
    value: Option<&Value>,
    default: Duration,
) -> Result<Duration, ComposeError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let text = scalar(field, v)?;
            parse_duration(&text).ok_or_else(|| {
                ComposeError::invalid(
                    field,
                    format!("{text:?} is not a duration like 30s or 1m30s"),
                )
            })
        }
    }
}

/// A byte size as docker reads it: a number of bytes, or a number with a
/// unit `b`, `k`, `m`, `g`, `t` (powers of 1024, optionally followed by `b`
/// or `ib`, any case): `512m`, `1.5g`, `64MiB`.
pub(crate) fn bytes(field: &str, value: &Value) -> Result<u64, ComposeError> {
    let text = scalar(field, value)?;
    parse_bytes(&text).ok_or_else(|| {
        ComposeError::invalid(
            field,
            format!("{text:?} is not a size like 512m, 1g or 1048576"),
        )
    })
}

/// See [`bytes`].
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    let total = number * scale as f64;
    (total.is_finite() && total >= 0.0 && total < u64::MAX as f64).then(|| whole(total))
}

/// A non-negative float rounded down to a whole number. Rust's float to
/// integer casts saturate (and NaN gives 0), so nothing here can wrap.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn whole(value: f64) -> u64 {
    value as u64
}

/// A file mode: an integer (decimal, as YAML gives it: `493` is 0755), or
/// a string read as octal (`"0440"`, or `0440` unquoted, which YAML keeps as
/// text).
pub(crate) fn file_mode(field: &str, value: &Value) -> Result<u32, ComposeError> {
    let mode = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => {
            let s = s.trim();
            let digits = s.strip_prefix("0o").unwrap_or(s);
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    };
    match mode {
        Some(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(ComposeError::invalid(
            field,
            "must be a file mode such as 0440 or 0755",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_and_anchors_resolve() {
        let doc =
            load("x-base: &base\n  image: a\n  restart: always\nweb:\n  <<: *base\n  image: b\n")
                .unwrap();
        assert_eq!(doc["web"]["image"], Value::String("b".into()));
        assert_eq!(doc["web"]["restart"], Value::String("always".into()));
        assert!(doc["web"].get("<<").is_none());
        assert!(
            load("a: 1\na: 2\n")
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        for (text, want) in [
            ("1024", 1024),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("1g", 1 << 30),
            ("1gb", 1 << 30),
            ("64MiB", 64 << 20),
            ("1.5g", 3 << 29),
            ("100k", 100 << 10),
            ("10b", 10),
        ] {
            assert_eq!(parse_bytes(text), Some(want), "{text}");
        }
        for bad in ["", "m", "12q", "-1m", "1..2g"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_modes_read_octal_text_and_decimal_numbers() {
        let doc = load("a: 0440\nb: '0755'\nc: 493\nd: 0o600\ne: 99999\nf: '09'\n").unwrap();
        assert_eq!(file_mode("a", &doc["a"]).unwrap(), 0o440);
        assert_eq!(file_mode("b", &doc["b"]).unwrap(), 0o755);
        assert_eq!(file_mode("c", &doc["c"]).unwrap(), 0o755);
        assert_eq!(file_mode("d", &doc["d"]).unwrap(), 0o600);
        assert!(file_mode("e", &doc["e"]).is_err());
        assert!(file_mode("f", &doc["f"]).is_err());
    }

    #[test]
    fn list_or_dict_reads_both_forms() {
        let doc = load("a: {X: 1, Y: null}\nb: [\"X=1\", \"Y\"]\n").unwrap();
        let a = list_or_dict("a", &doc["a"], '=').unwrap();
        let b = list_or_dict("b", &doc["b"], '=').unwrap();
        assert_eq!(a, b);
        assert_eq!(a["X"].as_deref(), Some("1"));
        assert_eq!(a["Y"], None);
    }
}
