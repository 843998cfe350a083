//! How pRPC calls carry their arguments (UPSTREAM §1.2), shared by every
//! server that speaks it (the guest API, the KMS): a GET's query string
//! (serde_qs), or a POST's JSON body where an empty body means `{}`; missing
//! fields take their defaults, and a bad value's error names its field.

use serde::de::DeserializeOwned;

/// Decodes a call's arguments; the error text is meant for `{"error": ..}`.
pub fn decode_args<T: DeserializeOwned>(get: bool, query: &str, body: &[u8]) -> Result<T, String> {
    if get {
        let config = serde_qs::Config::new(5, false);
        return config
            .deserialize_str(query)
            .map_err(|e| format!("invalid query string: {e}"));
    }
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    // The path names the field a bad value was in, e.g. `report_data`.
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            format!("invalid JSON body: {inner}")
        } else {
            format!("invalid {path}: {inner}")
        }
    })
}

/// The method a pRPC path names: `/prpc/<Service>.<Method>` or
/// `/prpc/<Method>` (upstream trims the service prefix) for `service`.
pub fn method_name<'a>(path: &'a str, service: &str) -> Option<&'a str> {
    let rest = path.strip_prefix("/prpc/")?;
    let name = rest
        .strip_prefix(service)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(rest);
    (!name.is_empty() && !name.contains('/') && !name.contains('.')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, Default, PartialEq)]
    #[serde(default)]
    struct Args {
        n: u32,
        s: String,
    }

    #[test]
    fn arguments_decode_from_json_or_query() {
        assert_eq!(
            decode_args::<Args>(false, "", b"").unwrap(),
            Args::default()
        );
        let a: Args = decode_args(false, "", br#"{"n":3}"#).unwrap();
        assert_eq!(a.n, 3);
        let a: Args = decode_args(true, "n=4&s=x", b"").unwrap();
        assert_eq!((a.n, a.s.as_str()), (4, "x"));
        let err = decode_args::<Args>(false, "", br#"{"n":"x"}"#).unwrap_err();
        assert!(err.starts_with("invalid n:"), "{err}");
        assert!(
            decode_args::<Args>(false, "", b"{")
                .unwrap_err()
                .contains("JSON")
        );
    }

    #[test]
    fn method_names_with_and_without_the_service_prefix() {
        assert_eq!(method_name("/prpc/KMS.GetMeta", "KMS"), Some("GetMeta"));
        assert_eq!(method_name("/prpc/GetMeta", "KMS"), Some("GetMeta"));
        assert_eq!(method_name("/prpc/Onboard.Bootstrap", "KMS"), None);
        assert_eq!(
            method_name("/prpc/Onboard.Bootstrap", "Onboard"),
            Some("Bootstrap")
        );
        assert_eq!(method_name("/GetMeta", "KMS"), None);
        assert_eq!(method_name("/prpc/", "KMS"), None);
    }
}
