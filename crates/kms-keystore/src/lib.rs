//! The KMS's root keys on disk: one file, `root-keys.json` (mode 0600),
//! written once with an atomic rename. A KMS therefore either has all of its
//! root keys or none of them — never the half state that upstream's
//! per-file writes could leave after a crash (dstack PRs #873, #1268) — and
//! a second bootstrap finds the file and is refused.
//!
//! In a KMS CVM the file is sealed: AES-256-GCM under a key the CVM's guest
//! API derives for the KMS (bound to its measurements under
//! `key_provider = local`), so the host that holds the disk reads nothing
//! and cannot plant keys of its own: a sealed store refuses an unsealed
//! file. On a development host the file is plain JSON (0600). This module
//! never logs a secret.
//!
//! `dstack-kms` serves from such a directory; `dstack simulator` reads one
//! (`--kms-root`) or keeps its own, in the same format, so a root made by
//! either works in both.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use dstack_keys::KmsRootKeys;
use dstack_proto::kms::{BootstrapResponse, ImportedKeys};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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
    /// The sealed file does not open with this CVM's sealing key.
    #[error("the root keys in {} do not unseal with this CVM's key (another CVM's, or altered)", path.display())]
    Unseal {
        /// The file.
        path: PathBuf,
    },
    /// Sealed keys on a host, or unsealed keys in a CVM.
    #[error("the root keys in {} are {found}, but this KMS {expected}", path.display())]
    SealMismatch {
        /// The file.
        path: PathBuf,
        /// What the file holds.
        found: &'static str,
        /// What this KMS requires.
        expected: &'static str,
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
        let ca_path = dir.join("root-ca.key");
        let temp_path = dir.join("tmp-ca.key");
        let k256_path = dir.join("root-k256.key");
        let k256 = std::fs::read(&k256_path).map_err(|source| KeyStoreError::Io {
            operation: "read",
            path: k256_path.clone(),
            source,
        })?;
        Self::from_upstream_parts(
            &ImportedKeys {
                root_ca_key: read_to_string(&ca_path)?,
                root_k256_key: k256,
                temp_ca_key: read_to_string(&temp_path)?,
            },
            &dir.display().to_string(),
        )
    }

    /// Root keys from the contents of an upstream KMS's three key files
    /// (`what` names where they came from, for errors).
    pub fn from_upstream_parts(parts: &ImportedKeys, what: &str) -> Result<Self, KeyStoreError> {
        let pem = |text: &str, name: &str| -> Result<p256::SecretKey, KeyStoreError> {
            p256::SecretKey::from_pkcs8_pem(text).map_err(|e| KeyStoreError::InvalidKey {
                what: format!("{what}/{name}"),
                reason: format!("not a P-256 PKCS#8 PEM key ({e})"),
            })
        };
        let ca_key = pem(&parts.root_ca_key, "root-ca.key")?;
        let temp_ca_key = pem(&parts.temp_ca_key, "tmp-ca.key")?;
        let k256_what = format!("{what}/root-k256.key");
        if parts.root_k256_key.len() != 32 {
            return Err(KeyStoreError::InvalidKey {
                what: k256_what,
                reason: format!("expected 32 raw bytes, found {}", parts.root_k256_key.len()),
            });
        }
        let root =
            KmsRootKeys::new(ca_key, &parts.root_k256_key).map_err(|e| invalid(&k256_what, e))?;
        Ok(Self { root, temp_ca_key })
    }
}

/// On-disk form of [`RootKeys`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKeys {
    /// The bootstrap answer (public keys and their attestation), kept with
    /// the keys so both are written in one step; absent for onboarded or
    /// imported keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bootstrap_info: Option<BootstrapResponse>,
    /// Root CA key, PKCS#8 PEM.
    root_ca_key: String,
    /// Root k256 key, hex.
    root_k256_key: String,
    /// Temporary CA key, PKCS#8 PEM.
    temp_ca_key: String,
}

/// The sealed form of the file: nonce and AES-256-GCM ciphertext of the
/// [`StoredKeys`] JSON, with [`SEAL_AAD`] as associated data.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedKeys {
    #[serde(with = "hex")]
    nonce: Vec<u8>,
    #[serde(with = "hex")]
    ciphertext: Vec<u8>,
}

/// What the file holds: sealed (in a CVM) or plain (on a host).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Sealed { sealed: SealedKeys },
    Plain(StoredKeys),
}

/// Associated data of the sealed file: names what the ciphertext is.
const SEAL_AAD: &[u8] = b"dstack-kms root keys v1";

/// The KMS state directory.
#[derive(Clone)]
pub struct KeyStore {
    dir: PathBuf,
    seal_key: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("sealed", &self.seal_key.is_some())
            .finish()
    }
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
            seal_key: None,
        })
    }

    /// Seal the root keys with `key` (the KMS CVM's sealing key): stored
    /// keys are encrypted, and only sealed keys are loaded.
    pub fn sealed_with(mut self, key: Zeroizing<[u8; 32]>) -> Self {
        self.seal_key = Some(key);
        self
    }

    /// Whether this store seals its keys.
    pub fn is_sealed(&self) -> bool {
        self.seal_key.is_some()
    }

    /// The store in `dir`, which must already be a directory: for readers of
    /// another tool's store, where a mistyped path must be reported rather
    /// than created.
    pub fn existing(dir: &Path) -> Result<Self, KeyStoreError> {
        let path = dir.to_path_buf();
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(Self {
                dir: path,
                seal_key: None,
            }),
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
        let stored = self.open_file(&path, &text)?;
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

    /// The bootstrap answer stored with the keys (`None` for keys that were
    /// onboarded or imported, or when there are no keys).
    pub fn bootstrap_info(&self) -> Result<Option<BootstrapResponse>, KeyStoreError> {
        let path = self.path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(self.open_file(&path, &text)?.bootstrap_info),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyStoreError::Io {
                operation: "read",
                path,
                source,
            }),
        }
    }

    fn open_file(&self, path: &Path, text: &str) -> Result<StoredKeys, KeyStoreError> {
        let invalid = |reason: String| KeyStoreError::InvalidKey {
            what: path.display().to_string(),
            reason,
        };
        let on_disk: OnDisk = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        match (on_disk, &self.seal_key) {
            (OnDisk::Plain(stored), None) => Ok(stored),
            (OnDisk::Sealed { sealed }, Some(key)) => {
                let plain = unseal(key, &sealed).ok_or_else(|| KeyStoreError::Unseal {
                    path: path.to_path_buf(),
                })?;
                serde_json::from_slice(&plain).map_err(|e| invalid(e.to_string()))
            }
            (OnDisk::Plain(_), Some(_)) => Err(KeyStoreError::SealMismatch {
                path: path.to_path_buf(),
                found: "not sealed",
                expected: "runs in a CVM and accepts only keys sealed by it",
            }),
            (OnDisk::Sealed { .. }, None) => Err(KeyStoreError::SealMismatch {
                path: path.to_path_buf(),
                found: "sealed to a CVM",
                expected: "has no sealing key (run it in its CVM, with --guest-api)",
            }),
        }
    }

    /// Stores `keys` once: refused if keys exist; all or nothing.
    pub fn store_new(&self, keys: &RootKeys) -> Result<(), KeyStoreError> {
        self.store_new_with_fault(keys, None, None)
    }

    /// Stores bootstrapped `keys` with their bootstrap answer, in one write.
    pub fn store_bootstrapped(
        &self,
        keys: &RootKeys,
        info: &BootstrapResponse,
    ) -> Result<(), KeyStoreError> {
        self.store_new_with_fault(keys, Some(info), None)
    }

    /// [`KeyStore::store_new`], failing at `fault` (for crash tests).
    pub fn store_new_with_fault(
        &self,
        keys: &RootKeys,
        bootstrap_info: Option<&BootstrapResponse>,
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
            bootstrap_info: bootstrap_info.cloned(),
            root_ca_key: pem(keys.root.ca_key(), "root CA key")?,
            root_k256_key: hex::encode(&keys.root.k256_key()[..]),
            temp_ca_key: pem(&keys.temp_ca_key, "temp CA key")?,
        };
        let plain = Zeroizing::new(to_json(&stored)?);
        let bytes = match &self.seal_key {
            None => plain,
            Some(key) => Zeroizing::new(to_json(&OnDisk::Sealed {
                sealed: seal(key, &plain)?,
            })?),
        };
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

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, KeyStoreError> {
    serde_json::to_vec_pretty(value).map_err(|e| KeyStoreError::InvalidKey {
        what: "root keys".into(),
        reason: e.to_string(),
    })
}

fn seal(key: &[u8; 32], plain: &[u8]) -> Result<SealedKeys, KeyStoreError> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let failed = |reason: &str| KeyStoreError::InvalidKey {
        what: "sealing key".into(),
        reason: reason.into(),
    };
    let mut nonce = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| failed("not an AES-256 key"))?,
    );
    let mut buffer = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(SEAL_AAD),
        &mut buffer,
    )
    .map_err(|_| failed("encryption failed"))?;
    Ok(SealedKeys {
        nonce: nonce.to_vec(),
        ciphertext: buffer,
    })
}

fn unseal(key: &[u8; 32], sealed: &SealedKeys) -> Option<Zeroizing<Vec<u8>>> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).ok()?;
    let mut buffer = Zeroizing::new(sealed.ciphertext.clone());
    let plain = key
        .open_in_place(nonce, Aad::from(SEAL_AAD), &mut buffer)
        .ok()?
        .to_vec();
    Some(Zeroizing::new(plain))
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
            assert!(
                store
                    .store_new_with_fault(&keys, None, Some(fault))
                    .is_err()
            );
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
    fn sealed_keys_open_only_with_their_key_and_never_mix_with_plain() {
        let dir = tempfile::tempdir().unwrap();
        let key = Zeroizing::new([0x33; 32]);
        let store = KeyStore::open(dir.path()).unwrap().sealed_with(key.clone());
        let keys = RootKeys::generate().unwrap();
        let info = BootstrapResponse {
            ca_pubkey: vec![1, 2],
            k256_pubkey: keys.root.k256_public_key().to_vec(),
            attestation: vec![3],
        };
        store.store_bootstrapped(&keys, &info).unwrap();
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"sealed\""), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&hex::encode(&keys.root.k256_key()[..])));
        let loaded = store.load().unwrap();
        assert_eq!(loaded.root.k256_public_key(), keys.root.k256_public_key());
        assert_eq!(store.bootstrap_info().unwrap(), Some(info));

        // Another CVM's key (or an altered file) does not open it.
        let other = KeyStore::open(dir.path())
            .unwrap()
            .sealed_with(Zeroizing::new([0x34; 32]));
        assert!(matches!(other.load(), Err(KeyStoreError::Unseal { .. })));
        let mut altered: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ct = altered["sealed"]["ciphertext"].as_str().unwrap().to_owned();
        let flipped = format!("{}{}", if &ct[..1] == "0" { "1" } else { "0" }, &ct[1..]);
        altered["sealed"]["ciphertext"] = flipped.into();
        std::fs::write(store.path(), altered.to_string()).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::Unseal { .. })));
        std::fs::write(store.path(), &text).unwrap();

        // A host cannot read sealed keys, and a CVM refuses plain ones
        // (which the host could have planted).
        let plain = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(
            plain.load(),
            Err(KeyStoreError::SealMismatch { .. })
        ));
        let planted = tempfile::tempdir().unwrap();
        KeyStore::open(planted.path())
            .unwrap()
            .store_new(&RootKeys::generate().unwrap())
            .unwrap();
        let cvm = KeyStore::open(planted.path()).unwrap().sealed_with(key);
        let err = cvm.load().unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
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
