//! The KMS's root keys on disk: one file, `root-keys.json` (mode 0600),
//! written once with an atomic rename. A KMS therefore either has all of its
//! root keys or none of them — never the half state that upstream's
//! per-file writes could leave after a crash (dstack PRs #873, #1268) — and
//! a second bootstrap finds the file and is refused.
//!
//! The directory is the KMS CVM's own disk, which the guest seals with its
//! key provider; this crate never sees that key and never logs a secret.
//!
//! `dstack-kms` serves from such a directory; `dstack simulator` reads one
//! (`--kms-root`) or keeps its own, in the same format, so a root made by
//! either works in both.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use dstack_keys::KmsRootKeys;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};

/// The root-keys file inside the KMS state directory.
pub const ROOT_KEYS_FILE: &str = "root-keys.json";

/// Why the key store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// A second bootstrap, onboard or import over existing keys.
    #[error("this KMS already has root keys ({}); bootstrap is one-time", path.display())]
    AlreadyBootstrapped {
        /// The existing file.
        path: PathBuf,
    },
    /// The KMS has no root keys yet.
    #[error("this KMS has no root keys yet: bootstrap or onboard it first")]
    NotBootstrapped,
    /// Reading or writing a file failed.
    #[error("cannot {operation} {}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored or imported key is unusable.
    #[error("{what} is invalid: {reason}")]
    InvalidKey {
        /// Which key or file.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The KMS's long-lived secrets: the root CA key, the root secp256k1 key and
/// the temporary CA key (which signs callers' client certificates).
pub struct RootKeys {
    /// Root P-256 CA key and root k256 key (app keys derive from these).
    pub root: KmsRootKeys,
    /// The temporary client CA key.
    pub temp_ca_key: p256::SecretKey,
}

impl std::fmt::Debug for RootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKeys")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl RootKeys {
    /// Fresh random root keys.
    pub fn generate() -> Result<Self, KeyStoreError> {
        let mut rng = rand::rngs::OsRng;
        let ca_key = p256::SecretKey::random(&mut rng);
        let k256 = k256::SecretKey::random(&mut rng);
        let root = KmsRootKeys::new(ca_key, &k256.to_bytes()).map_err(|e| invalid("k256", e))?;
        Ok(Self {
            root,
            temp_ca_key: p256::SecretKey::random(&mut rng),
        })
    }

    /// Root keys as an upstream dstack KMS stores them in its cert dir:
    /// `root-ca.key` (PKCS#8 PEM), `root-k256.key` (32 raw bytes) and
    /// `tmp-ca.key` (PKCS#8 PEM). The same root keys give the same app keys.
    pub fn from_upstream_dir(dir: &Path) -> Result<Self, KeyStoreError> {
        let pem = |name: &str| -> Result<p256::SecretKey, KeyStoreError> {
            let path = dir.join(name);
            let text = read_to_string(&path)?;
            p256::SecretKey::from_pkcs8_pem(&text).map_err(|e| KeyStoreError::InvalidKey {
                what: path.display().to_string(),
                reason: format!("not a P-256 PKCS#8 PEM key ({e})"),
            })
        };
        let ca_key = pem("root-ca.key")?;
        let temp_ca_key = pem("tmp-ca.key")?;
        let k256_path = dir.join("root-k256.key");
        let k256 = std::fs::read(&k256_path).map_err(|source| KeyStoreError::Io {
            operation: "read",
            path: k256_path.clone(),
            source,
        })?;
        if k256.len() != 32 {
            return Err(KeyStoreError::InvalidKey {
                what: k256_path.display().to_string(),
                reason: format!("expected 32 raw bytes, found {}", k256.len()),
            });
        }
        let root = KmsRootKeys::new(ca_key, &k256)
            .map_err(|e| invalid(&k256_path.display().to_string(), e))?;
        Ok(Self { root, temp_ca_key })
    }
}

/// On-disk form of [`RootKeys`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeys {
    /// Root CA key, PKCS#8 PEM.
    root_ca_key: String,
    /// Root k256 key, hex.
    root_k256_key: String,
    /// Temporary CA key, PKCS#8 PEM.
    temp_ca_key: String,
}

/// The KMS state directory.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

/// Where a test may make a write fail, to check that no half state remains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Fail before anything is written.
    BeforeWrite,
    /// Fail after the temporary file is written, before the rename.
    BeforeRename,
}

impl KeyStore {
    /// A store in `dir` (created 0700 if missing).
    pub fn open(dir: &Path) -> Result<Self, KeyStoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeyStoreError::Io {
                operation: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The store in `dir`, which must already be a directory: for readers of
    /// another tool's store, where a mistyped path must be reported rather
    /// than created.
    pub fn existing(dir: &Path) -> Result<Self, KeyStoreError> {
        let path = dir.to_path_buf();
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(Self { dir: path }),
            Ok(_) => Err(KeyStoreError::Io {
                operation: "open",
                path,
                source: std::io::Error::other("not a directory"),
            }),
            Err(source) => Err(KeyStoreError::Io {
                operation: "open",
                path,
                source,
            }),
        }
    }

    /// The root-keys file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ROOT_KEYS_FILE)
    }

    /// Whether root keys exist.
    pub fn has_keys(&self) -> bool {
        self.path().exists()
    }

    /// The stored root keys.
    pub fn load(&self) -> Result<RootKeys, KeyStoreError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyStoreError::NotBootstrapped);
            }
            Err(source) => {
                return Err(KeyStoreError::Io {
                    operation: "read",
                    path,
                    source,
                });
            }
        };
        let what = path.display().to_string();
        let stored: StoredKeys =
            serde_json::from_str(&text).map_err(|e| KeyStoreError::InvalidKey {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        let pem = |text: &str, name: &str| {
            p256::SecretKey::from_pkcs8_pem(text).map_err(|e| KeyStoreError::InvalidKey {
                what: format!("{what}: {name}"),
                reason: e.to_string(),
            })
        };
        let k256 = hex::decode(&stored.root_k256_key).map_err(|e| KeyStoreError::InvalidKey {
            what: format!("{what}: root_k256_key"),
            reason: e.to_string(),
        })?;
        Ok(RootKeys {
            root: KmsRootKeys::new(pem(&stored.root_ca_key, "root_ca_key")?, &k256)
                .map_err(|e| invalid(&what, e))?,
            temp_ca_key: pem(&stored.temp_ca_key, "temp_ca_key")?,
        })
    }

    /// Stores `keys` once: refused if keys exist; all or nothing.
    pub fn store_new(&self, keys: &RootKeys) -> Result<(), KeyStoreError> {
        self.store_new_with_fault(keys, None)
    }

    /// [`KeyStore::store_new`], failing at `fault` (for crash tests).
    pub fn store_new_with_fault(
        &self,
        keys: &RootKeys,
        fault: Option<FaultPoint>,
    ) -> Result<(), KeyStoreError> {
        let path = self.path();
        if path.exists() {
            return Err(KeyStoreError::AlreadyBootstrapped { path });
        }
        let injected = |point| KeyStoreError::Io {
            operation: "write (injected fault)",
            path: path.clone(),
            source: std::io::Error::other(format!("fault injected at {point:?}")),
        };
        if fault == Some(FaultPoint::BeforeWrite) {
            return Err(injected(FaultPoint::BeforeWrite));
        }
        let pem = |key: &p256::SecretKey, name: &str| {
            key.to_pkcs8_pem(LineEnding::LF)
                .map(|p| p.to_string())
                .map_err(|e| KeyStoreError::InvalidKey {
                    what: name.into(),
                    reason: e.to_string(),
                })
        };
        let stored = StoredKeys {
            root_ca_key: pem(keys.root.ca_key(), "root CA key")?,
            root_k256_key: hex::encode(&keys.root.k256_key()[..]),
            temp_ca_key: pem(&keys.temp_ca_key, "temp CA key")?,
        };
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec_pretty(&stored).map_err(|e| {
            KeyStoreError::InvalidKey {
                what: "root keys".into(),
                reason: e.to_string(),
            }
        })?);
        if fault == Some(FaultPoint::BeforeRename) {
            // What a crash between writing and renaming leaves: a stray
            // temporary file next to no keys.
            let tmp = self.dir.join(format!(".{ROOT_KEYS_FILE}.tmp"));
            std::fs::write(&tmp, &bytes[..]).map_err(|source| KeyStoreError::Io {
                operation: "write",
                path: tmp,
                source,
            })?;
            return Err(injected(FaultPoint::BeforeRename));
        }
        dstack_fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| KeyStoreError::Io {
            operation: "write",
            path,
            source,
        })
    }
}

fn read_to_string(path: &Path) -> Result<String, KeyStoreError> {
    std::fs::read_to_string(path).map_err(|source| KeyStoreError::Io {
        operation: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(what: &str, e: dstack_keys::KeyError) -> KeyStoreError {
    KeyStoreError::InvalidKey {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_a_second_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::NotBootstrapped)));
        let keys = RootKeys::generate().unwrap();
        store.store_new(&keys).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.root.k256_public_key(), keys.root.k256_public_key());
        assert_eq!(
            loaded.root.ca_key().to_bytes(),
            keys.root.ca_key().to_bytes()
        );
        assert_eq!(loaded.temp_ca_key.to_bytes(), keys.temp_ca_key.to_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let before = std::fs::read(store.path()).unwrap();
        let err = store.store_new(&RootKeys::generate().unwrap()).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::AlreadyBootstrapped { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(store.path()).unwrap(), before, "untouched");
    }

    /// A fault at each write step leaves either no keys (and bootstrap
    /// works afterwards) or all of them — never a half state.
    #[test]
    fn a_fault_at_any_step_leaves_no_keys_or_all_keys() {
        for fault in [FaultPoint::BeforeWrite, FaultPoint::BeforeRename] {
            let dir = tempfile::tempdir().unwrap();
            let store = KeyStore::open(dir.path()).unwrap();
            let keys = RootKeys::generate().unwrap();
            assert!(store.store_new_with_fault(&keys, Some(fault)).is_err());
            assert!(!store.has_keys(), "{fault:?}");
            assert!(matches!(store.load(), Err(KeyStoreError::NotBootstrapped)));
            // Bootstrap can run again and then serves all keys.
            let again = RootKeys::generate().unwrap();
            store.store_new(&again).unwrap();
            let loaded = store.load().unwrap();
            assert_eq!(loaded.root.k256_public_key(), again.root.k256_public_key());
        }
    }

    #[test]
    fn upstream_key_files_import_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = p256::SecretKey::from_slice(&[0x5a; 32]).unwrap();
        let tmp = p256::SecretKey::from_slice(&[0x3c; 32]).unwrap();
        let write_pem = |name: &str, key: &p256::SecretKey| {
            std::fs::write(
                dir.path().join(name),
                key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
            )
            .unwrap()
        };
        write_pem("root-ca.key", &ca);
        write_pem("tmp-ca.key", &tmp);
        std::fs::write(dir.path().join("root-k256.key"), [0x6b; 32]).unwrap();
        let keys = RootKeys::from_upstream_dir(dir.path()).unwrap();
        let expected = KmsRootKeys::new(ca, &[0x6b; 32]).unwrap();
        assert_eq!(keys.root.k256_public_key(), expected.k256_public_key());
        let app = keys.root.app_keys(&[0x11; 20], &[0x22; 20]).unwrap();
        assert_eq!(
            hex::encode(&app.k256_key[..]),
            "3095e0d0135227822c9084c79751d9a196a77946d7d7e995f8f324917dbbb024"
        );

        std::fs::write(dir.path().join("root-k256.key"), [0x6b; 31]).unwrap();
        let err = RootKeys::from_upstream_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("expected 32 raw bytes"), "{err}");
        std::fs::write(dir.path().join("root-ca.key"), "not a key").unwrap();
        let err = RootKeys::from_upstream_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("root-ca.key"), "{err}");
    }

    #[test]
    fn existing_creates_nothing_and_names_a_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = KeyStore::existing(&missing).unwrap_err();
        assert!(
            matches!(&err, KeyStoreError::Io { operation: "open", path, .. } if *path == missing),
            "{err}"
        );
        assert!(!missing.exists());
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(KeyStore::existing(&file).is_err());
        // An existing directory without keys is a store that is not bootstrapped.
        let store = KeyStore::existing(dir.path()).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::NotBootstrapped)));
        KeyStore::open(dir.path())
            .unwrap()
            .store_new(&RootKeys::generate().unwrap())
            .unwrap();
        store.load().unwrap();
    }

    #[test]
    fn debug_prints_no_secret() {
        let keys = RootKeys::generate().unwrap();
        let text = format!("{keys:?}");
        assert!(
            !text.contains(&hex::encode(&keys.root.k256_key()[..])),
            "{text}"
        );
    }
}
