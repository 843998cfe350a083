//! The sealed plaintext: `{"env":[{"key":"FOO","value":"bar"},…]}`.
//! Upstream's SDKs write it with their JSON libraries (Python's escapes
//! non-ASCII as `\uXXXX` and puts spaces after `,` and `:`); any JSON of
//! that shape is read, extra fields are ignored (as upstream's guest does).

use std::io::Write;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{EnvVar, PlaintextError};

#[derive(Serialize)]
struct EnvOut<'a> {
    env: Vec<VarOut<'a>>,
}

#[derive(Serialize)]
struct VarOut<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Deserialize)]
struct EnvIn {
    env: Vec<VarIn>,
}

#[derive(Deserialize)]
struct VarIn {
    key: String,
    value: Zeroizing<String>,
}

/// The JSON of `vars`, in a buffer sized exactly (so it never reallocates
/// and leaves no unwiped copy behind) and wiped when dropped.
pub(crate) fn encode(vars: &[EnvVar]) -> Zeroizing<Vec<u8>> {
    let out = EnvOut {
        env: vars
            .iter()
            .map(|var| VarOut {
                key: &var.key,
                value: &var.value,
            })
            .collect(),
    };
    let mut counter = Counter(0);
    // Writing into these sinks cannot fail, nor can serialising strings.
    serde_json::to_writer(&mut counter, &out).expect("JSON of strings into a counter");
    let mut json = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *json, &out).expect("JSON of strings into a Vec");
    json
}

/// The variables of a decrypted env, in their order (repeats kept).
pub(crate) fn decode(json: &[u8]) -> Result<Vec<EnvVar>, PlaintextError> {
    let env: EnvIn = serde_json::from_slice(json).map_err(|e| PlaintextError {
        kind: match e.classify() {
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
            serde_json::error::Category::Io => "io",
        },
        line: e.line(),
        column: e.column(),
    })?;
    Ok(env
        .env
        .into_iter()
        .map(|var| EnvVar {
            key: var.key,
            value: var.value,
        })
        .collect())
}

/// Counts the bytes written to it.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_upstreams_shape_exactly_sized() {
        let json = encode(&[EnvVar::new("FOO", "bar"), EnvVar::new("Q", "a\"\n\u{e9}")]);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"env":[{"key":"FOO","value":"bar"},{"key":"Q","value":"a\"\né"}]}"#
        );
        assert_eq!(json.capacity(), json.len());
    }

    #[test]
    fn decodes_what_the_sdks_write() {
        // Python's json.dumps: spaces, \u escapes (a surrogate pair too).
        let python = br#"{"env": [{"key": "A", "value": "caf\u00e9 \ud83d\ude00"}, {"key": "B", "value": ""}]}"#;
        let vars = decode(python).unwrap();
        assert_eq!(
            vars,
            vec![
                EnvVar::new("A", "caf\u{e9} \u{1f600}"),
                EnvVar::new("B", "")
            ]
        );
        // Extra fields are ignored, an empty list is fine.
        let extra = br#"{"env":[{"key":"A","value":"1","note":2}],"version":1}"#;
        assert_eq!(decode(extra).unwrap(), vec![EnvVar::new("A", "1")]);
        assert_eq!(decode(br#"{"env":[]}"#).unwrap(), vec![]);
    }

    #[test]
    fn refuses_other_shapes_without_quoting_them() {
        for (json, kind) in [
            (&br#"{"env":"SECRET-VALUE"}"#[..], "data"),
            (br#"{"env":[{"key":"A","value":12345678}]}"#, "data"),
            (br#"{"env":[{"key":"A"}]}"#, "data"),
            (br#"[{"key":"A","value":"SECRET-VALUE"}]"#, "data"),
            (br#"{"env":[{"key":"A","value":"SECRET-VALUE"#, "eof"),
            (b"SECRET-VALUE", "syntax"),
            (
                b"{\"env\":[{\"key\":\"A\",\"value\":\"\xff SECRET-VALUE\"}]}",
                "syntax",
            ),
        ] {
            let err = decode(json).unwrap_err();
            assert_eq!(err.kind, kind, "{}", String::from_utf8_lossy(json));
            let text = format!("{err} {err:?}");
            assert!(!text.contains("SECRET"), "{text}");
            assert!(!text.contains("12345678"), "{text}");
        }
    }
}
