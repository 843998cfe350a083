//! What `dstack simulator` keeps between runs, in its state directory, so
//! that a restart is the same TD of the same app with the same keys:
//!
//! - `sim-tee.json`: the simulated TEE's authority (root CA, quoting key);
//! - `kms/root-keys.json`: the simulator's own KMS root, in `dstack-kms`'s
//!   key-store format (so `dstack-kms --state-dir <state-dir>/kms serve`
//!   serves the same root to real CVMs);
//! - `instance.json`: the instance-id seed, as the host keeps
//!   `.instance_info` for a CVM.
//!
//! Each is created on first use, atomically and with mode 0600 (the
//! directories 0700). `--kms-root DIR` reads another KMS's root keys instead
//! of the simulator's own and never writes there.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use dstack_attest::SimAuthority;
use dstack_keys::KmsRootKeys;
use dstack_kms_keystore::{KeyStore, KeyStoreError, RootKeys};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The simulated TEE's authority inside the state directory.
pub(crate) const AUTHORITY_FILE: &str = "sim-tee.json";
/// The simulator's own KMS state directory inside its state directory.
pub(crate) const LOCAL_KMS_DIR: &str = "kms";
/// The instance-id seed inside the state directory.
pub(crate) const INSTANCE_FILE: &str = "instance.json";

/// Why the simulator's state could not be read or created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    /// `--kms-root` names no usable dstack-kms state directory.
    #[error(
        "--kms-root {}: no usable KMS root keys (a dstack-kms state directory holds root-keys.json; make one with `dstack-kms --state-dir DIR bootstrap`)",
        dir.display()
    )]
    KmsRoot {
        /// The directory given.
        dir: PathBuf,
        /// Why it was refused.
        #[source]
        source: KeyStoreError,
    },
    /// The simulator's own KMS root could not be loaded or created.
    #[error("the simulator's KMS root in {} is unusable", dir.display())]
    LocalKmsRoot {
        /// Its directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: KeyStoreError,
    },
    /// The simulated TEE could not be loaded or created.
    #[error("cannot load the simulated TEE from {}", path.display())]
    Authority {
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: dstack_attest::SimError,
    },
    /// A state file or directory could not be read or written.
    #[error("cannot {operation} {}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not what the simulator wrote.
    #[error("{} is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

/// On-disk form of the instance-id seed (`instance.json`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceFile {
    /// 20 bytes, hex, as upstream's `.instance_info` `instance_id_seed`.
    instance_id_seed: String,
}

impl StateDir {
    /// The state directory `dir` (created 0700 if missing).
    pub(crate) fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StateError::Io {
                operation: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The simulated TEE's authority, created on first use.
    pub(crate) fn authority(&self) -> Result<SimAuthority, StateError> {
        let path = self.dir.join(AUTHORITY_FILE);
        SimAuthority::load_or_generate(&path)
            .map_err(|source| StateError::Authority { path, source })
    }

    /// The directory of the simulator's own KMS root.
    pub(crate) fn local_kms_dir(&self) -> PathBuf {
        self.dir.join(LOCAL_KMS_DIR)
    }

    /// The simulator's own KMS root, bootstrapped on first use.
    pub(crate) fn local_kms_root(&self) -> Result<KmsRootKeys, StateError> {
        let dir = self.local_kms_dir();
        let wrap = |source| StateError::LocalKmsRoot {
            dir: dir.clone(),
            source,
        };
        let store = KeyStore::open(&dir).map_err(wrap)?;
        let keys = match store.load() {
            Ok(keys) => keys,
            Err(KeyStoreError::NotBootstrapped) => {
                match store.store_new(&RootKeys::generate().map_err(wrap)?) {
                    // Another simulator bootstrapped it first: use theirs.
                    Ok(()) | Err(KeyStoreError::AlreadyBootstrapped { .. }) => {}
                    Err(e) => return Err(wrap(e)),
                }
                // What is on disk is what later runs will use.
                store.load().map_err(wrap)?
            }
            Err(e) => return Err(wrap(e)),
        };
        Ok(keys.root)
    }

    /// The instance-id seed, created on first use.
    pub(crate) fn instance_seed(&self) -> Result<[u8; 20], StateError> {
        let path = self.dir.join(INSTANCE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_instance_seed(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 20];
                rand::rngs::OsRng.fill_bytes(&mut seed);
                let file = InstanceFile {
                    instance_id_seed: hex::encode(seed),
                };
                let bytes =
                    serde_json::to_vec_pretty(&file).map_err(|e| StateError::Malformed {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                dstack_fsutil::write_atomic(&path, &bytes, 0o600).map_err(|source| {
                    StateError::Io {
                        operation: "write",
                        path,
                        source,
                    }
                })?;
                Ok(seed)
            }
            Err(source) => Err(StateError::Io {
                operation: "read",
                path,
                source,
            }),
        }
    }
}

fn parse_instance_seed(path: &Path, text: &str) -> Result<[u8; 20], StateError> {
    let malformed = |reason: String| StateError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let file: InstanceFile = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    let seed = hex::decode(&file.instance_id_seed).map_err(|e| malformed(e.to_string()))?;
    seed.try_into().map_err(|seed: Vec<u8>| {
        malformed(format!("instance_id_seed has {} bytes, not 20", seed.len()))
    })
}

/// The root keys of the dstack-kms state directory `dir` (its
/// `root-keys.json`), read only: a missing directory or file is an error,
/// never created.
pub(crate) fn kms_root_from(dir: &Path) -> Result<KmsRootKeys, StateError> {
    let wrap = |source| StateError::KmsRoot {
        dir: dir.to_path_buf(),
        source,
    };
    let keys = KeyStore::existing(dir)
        .map_err(wrap)?
        .load()
        .map_err(wrap)?;
    Ok(keys.root)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_is_created_once_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("state")).unwrap();
        let root = state.local_kms_root().unwrap();
        let seed = state.instance_seed().unwrap();
        state.authority().unwrap();
        assert_eq!(mode(state.path()), 0o700);
        for file in [
            state.path().join(AUTHORITY_FILE),
            state
                .local_kms_dir()
                .join(dstack_kms_keystore::ROOT_KEYS_FILE),
            state.path().join(INSTANCE_FILE),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }

        // A second open (a restart) reads what the first one wrote.
        let again = StateDir::open(state.path()).unwrap();
        assert_eq!(
            again.local_kms_root().unwrap().k256_public_key(),
            root.k256_public_key()
        );
        assert_eq!(again.instance_seed().unwrap(), seed);

        // Another state directory is another root and another instance.
        let other = StateDir::open(&tmp.path().join("other")).unwrap();
        assert_ne!(
            other.local_kms_root().unwrap().k256_public_key(),
            root.k256_public_key()
        );
        assert_ne!(other.instance_seed().unwrap(), seed);
    }

    /// The simulator's own root is a dstack-kms state directory: the KMS's
    /// loader reads it, and `--kms-root` takes it.
    #[test]
    fn the_local_root_is_a_dstack_kms_state_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let root = state.local_kms_root().unwrap();
        let loaded = KeyStore::existing(&state.local_kms_dir())
            .unwrap()
            .load()
            .unwrap();
        assert_eq!(loaded.root.k256_public_key(), root.k256_public_key());
        assert_eq!(
            kms_root_from(&state.local_kms_dir())
                .unwrap()
                .ca_spki()
                .unwrap(),
            root.ca_spki().unwrap()
        );
    }

    #[test]
    fn a_missing_or_empty_kms_root_is_named_and_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-kms");
        let err = kms_root_from(&missing).unwrap_err();
        assert!(
            matches!(&err, StateError::KmsRoot { dir, .. } if *dir == missing),
            "{err}"
        );
        assert!(err.to_string().contains("--kms-root"), "{err}");
        assert!(!missing.exists(), "a reader creates nothing");

        // A directory without root-keys.json.
        let err = kms_root_from(tmp.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                StateError::KmsRoot {
                    source: KeyStoreError::NotBootstrapped,
                    ..
                }
            ),
            "{err}"
        );

        // A root-keys.json that is not one.
        std::fs::write(tmp.path().join("root-keys.json"), "{}").unwrap();
        let err = kms_root_from(tmp.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                StateError::KmsRoot {
                    source: KeyStoreError::InvalidKey { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_instance_file_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let path = tmp.path().join(INSTANCE_FILE);
        std::fs::write(&path, r#"{"instance_id_seed":"abcd"}"#).unwrap();
        let err = state.instance_seed().unwrap_err();
        assert!(matches!(err, StateError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("20"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            r#"{"instance_id_seed":"abcd"}"#
        );
    }
}
