//! Turning HTTP requests into [`super::Command`]s, one file per resource.

pub mod kms;
pub mod logs;
pub mod vms;

use serde::de::DeserializeOwned;

use crate::error::VmmError;

/// Parses a JSON request body; an error names the field at fault.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, VmmError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner().to_string();
        // "." is the whole body, "?" a place serde could not name (e.g. at EOF).
        if path == "." || path == "?" {
            VmmError::invalid("body", reason)
        } else {
            VmmError::invalid(path, reason)
        }
    })
}
