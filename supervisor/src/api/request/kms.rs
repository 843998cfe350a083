//! `/v1/env-key` and `/v1/kms-meta`: what the supervisor relays to a KMS.

use dstack_proto::supervisor::{EnvKeyRequest, KmsMetaRequest};

use super::parse_json;
use crate::api::Command;
use crate::error::VmmError;

/// `POST /v1/env-key` with an [`EnvKeyRequest`] body (unknown fields refused).
pub fn env_key(body: &[u8]) -> Result<Command, VmmError> {
    parse_json::<EnvKeyRequest>(body).map(Command::EnvKey)
}

/// `POST /v1/kms-meta` with a [`KmsMetaRequest`] body; an empty body is
/// the supervisor's default KMS.
pub fn meta(body: &[u8]) -> Result<Command, VmmError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Command::KmsMeta(KmsMetaRequest::default()));
    }
    parse_json::<KmsMetaRequest>(body).map(Command::KmsMeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_parsed_and_unknown_fields_refused() {
        match env_key(br#"{"app_id":"11","kms_url":"https://10.0.2.2:8000"}"#).unwrap() {
            Command::EnvKey(req) => {
                assert_eq!(req.app_id, "11");
                assert_eq!(req.kms_url, "https://10.0.2.2:8000");
            }
            other => panic!("{other:?}"),
        }
        let err = env_key(br#"{"kms_url":""}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `app_id`"), "{err}");
        let err = env_key(br#"{"app_id":"11","x":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `x`"), "{err}");
        assert!(matches!(
            meta(b"").unwrap(),
            Command::KmsMeta(KmsMetaRequest { kms_url }) if kms_url.is_empty()
        ));
        assert!(matches!(
            meta(br#"{"kms_url":"https://k:1"}"#).unwrap(),
            Command::KmsMeta(KmsMetaRequest { kms_url }) if kms_url == "https://k:1"
        ));
        assert!(meta(b"{").unwrap_err().to_string().starts_with("body: "));
    }
}
