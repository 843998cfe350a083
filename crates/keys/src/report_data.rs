//! dstack's report_data rule: `Hash(tag ":" content)` zero-padded to 64
//! bytes, or the content itself for `raw` (`QuoteContentType` upstream).

use sha2::Digest;

use crate::KeyError;

/// The tag of app-chosen report_data (tappd `TdxQuote` without a prefix).
pub const TAG_APP_DATA: &str = "app-data";
/// The tag binding an RA-TLS certificate's public key.
pub const TAG_RA_TLS_CERT: &str = "ratls-cert";
/// The default hash, used when none is named.
pub const DEFAULT_HASH: HashAlgorithm = HashAlgorithm::Sha512;

/// The hashes tappd's `TdxQuote` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512 (the default).
    Sha512,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
    /// Keccak-256.
    Keccak256,
    /// Keccak-384.
    Keccak384,
    /// Keccak-512.
    Keccak512,
    /// No hash: the content is the report_data and must be 64 bytes.
    Raw,
}

impl HashAlgorithm {
    /// Parses dstack's names (`sha256` … `keccak512`, `raw`); `""` is SHA-512.
    pub fn parse(name: &str) -> Result<Self, KeyError> {
        Ok(match name {
            "" | "sha512" => Self::Sha512,
            "sha256" => Self::Sha256,
            "sha384" => Self::Sha384,
            "sha3-256" => Self::Sha3_256,
            "sha3-384" => Self::Sha3_384,
            "sha3-512" => Self::Sha3_512,
            "keccak256" => Self::Keccak256,
            "keccak384" => Self::Keccak384,
            "keccak512" => Self::Keccak512,
            "raw" => Self::Raw,
            other => return Err(KeyError::UnsupportedHash(other.to_owned())),
        })
    }

    /// The dstack name of this algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
            Self::Sha3_256 => "sha3-256",
            Self::Sha3_384 => "sha3-384",
            Self::Sha3_512 => "sha3-512",
            Self::Keccak256 => "keccak256",
            Self::Keccak384 => "keccak384",
            Self::Keccak512 => "keccak512",
            Self::Raw => "raw",
        }
    }
}

fn tagged<D: Digest>(tag: &str, content: &[u8]) -> [u8; 64] {
    let digest = D::new()
        .chain_update(tag.as_bytes())
        .chain_update(b":")
        .chain_update(content)
        .finalize();
    let mut out = [0u8; 64];
    // Every supported digest is at most 64 bytes.
    let n = digest.len().min(64);
    out[..n].copy_from_slice(&digest[..n]);
    out
}

/// `hash(tag ":" content)` zero-padded to 64 bytes; for [`HashAlgorithm::Raw`]
/// the content itself, which must be exactly 64 bytes.
pub fn report_data_with_hash(
    tag: &str,
    content: &[u8],
    hash: HashAlgorithm,
) -> Result<[u8; 64], KeyError> {
    Ok(match hash {
        HashAlgorithm::Sha256 => tagged::<sha2::Sha256>(tag, content),
        HashAlgorithm::Sha384 => tagged::<sha2::Sha384>(tag, content),
        HashAlgorithm::Sha512 => tagged::<sha2::Sha512>(tag, content),
        HashAlgorithm::Sha3_256 => tagged::<sha3::Sha3_256>(tag, content),
        HashAlgorithm::Sha3_384 => tagged::<sha3::Sha3_384>(tag, content),
        HashAlgorithm::Sha3_512 => tagged::<sha3::Sha3_512>(tag, content),
        HashAlgorithm::Keccak256 => tagged::<sha3::Keccak256>(tag, content),
        HashAlgorithm::Keccak384 => tagged::<sha3::Keccak384>(tag, content),
        HashAlgorithm::Keccak512 => tagged::<sha3::Keccak512>(tag, content),
        HashAlgorithm::Raw => content
            .try_into()
            .map_err(|_| KeyError::RawLength(content.len()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hash_is_tag_colon_content_padded() {
        let cases: [(&str, usize); 9] = [
            ("sha256", 32),
            ("sha384", 48),
            ("sha512", 64),
            ("sha3-256", 32),
            ("sha3-384", 48),
            ("sha3-512", 64),
            ("keccak256", 32),
            ("keccak384", 48),
            ("keccak512", 64),
        ];
        for (name, len) in cases {
            let hash = HashAlgorithm::parse(name).unwrap();
            assert_eq!(hash.name(), name);
            let rd = report_data_with_hash("app-data", b"hello", hash).unwrap();
            assert!(rd[len..].iter().all(|&b| b == 0), "{name}");
            assert_ne!(rd[..len], vec![0; len][..], "{name}");
        }
        // Known values.
        let rd = report_data_with_hash("app-data", b"hello", HashAlgorithm::Sha256).unwrap();
        assert_eq!(&rd[..32], &sha2::Sha256::digest(b"app-data:hello")[..]);
        let rd = report_data_with_hash("x", b"", HashAlgorithm::Keccak256).unwrap();
        // Keccak-256("x:")
        assert_eq!(&rd[..32], &sha3::Keccak256::digest(b"x:")[..]);
        assert_ne!(
            &rd[..32],
            &sha3::Sha3_256::digest(b"x:")[..],
            "keccak is not SHA3"
        );
        assert_eq!(HashAlgorithm::parse("").unwrap(), HashAlgorithm::Sha512);
    }

    #[test]
    fn raw_needs_64_bytes() {
        let rd = report_data_with_hash("ignored", &[9; 64], HashAlgorithm::Raw).unwrap();
        assert_eq!(rd, [9; 64]);
        assert_eq!(
            report_data_with_hash("", &[9; 63], HashAlgorithm::Raw).unwrap_err(),
            KeyError::RawLength(63)
        );
        assert_eq!(
            HashAlgorithm::parse("md5").unwrap_err(),
            KeyError::UnsupportedHash("md5".into())
        );
    }

    #[test]
    fn ra_tls_tag_matches_sha512_rule() {
        let rd = report_data_with_hash(TAG_RA_TLS_CERT, b"spki", DEFAULT_HASH).unwrap();
        assert_eq!(&rd[..], &sha2::Sha512::digest(b"ratls-cert:spki")[..]);
    }
}
