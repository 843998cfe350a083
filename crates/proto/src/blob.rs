//! Blobs: files a VM is deployed with besides its app-compose (the build
//! contexts `dstack vm deploy` packs), each named by the SHA-256 of its
//! bytes. They travel CLI → supervisor → guest as raw bytes:
//!
//! - supervisor API: `PUT /v1/blobs/sha256/<hex>` ← the bytes → 204; the
//!   supervisor refuses bytes whose SHA-256 is not `<hex>`, and a deploy
//!   whose app-compose measures a blob that was not uploaded.
//! - host API: `GET /v1/blobs/sha256/<hex>` → the bytes of a blob of the
//!   calling VM; 404 for any other.
//!
//! The supervisor is untrusted: what makes a blob trustworthy is that the
//! app-compose (whose hash is measured into RTMR3) names its hash, and the
//! guest refuses bytes that do not match it.

/// The largest blob (a packed build context) anyone accepts.
pub const MAX_BLOB_BYTES: u64 = 64 << 20;

/// The path prefix of blobs on both APIs; a blob's path is this and its hex.
pub const BLOBS_PATH: &str = "/v1/blobs/sha256/";

/// The path of the blob whose SHA-256 is `sha256_hex`.
pub fn blob_path(sha256_hex: &str) -> String {
    format!("{BLOBS_PATH}{sha256_hex}")
}

/// Whether `text` names a blob: a SHA-256 in lowercase hex (64 digits).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_sha256_hex() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(is_sha256_hex(&hex));
        assert_eq!(blob_path(&hex), format!("/v1/blobs/sha256/{hex}"));
        assert!(!is_sha256_hex(&hex.to_uppercase()));
        assert!(!is_sha256_hex(&hex[1..]));
        assert!(!is_sha256_hex(&format!("{}../", &hex[3..])));
        assert!(!is_sha256_hex(""));
    }
}
