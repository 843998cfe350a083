//! Build contexts shipped from the developer's machine: for each service
//! whose app-compose measures one (`build_contexts`), the tar is fetched
//! from the host, checked against the measured SHA-256 (the host is not
//! trusted: other bytes stop the boot), and unpacked where the container
//! engine builds from it.
//!
//! The tar was made by `dstack vm deploy`, so a well-formed one holds only
//! relative paths, directories, regular files and symlinks that stay inside
//! it; anything else is refused rather than skipped, since the measured
//! bytes are exactly what the developer packed.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use dstack_compose::{Compose, ENGINE_SERVICE};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::hostapi::{HostApiError, HostClient};

/// Where the engine's volume is mounted in the engine.
pub(crate) const ENGINE_STORAGE: &str = "/var/lib/containers";

/// Why a service's build context could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The host did not hand over the blob.
    #[error("service {service}: fetching its build context {sha256} from the host failed")]
    Fetch {
        /// The service.
        service: String,
        /// The measured hash.
        sha256: String,
        /// The cause.
        #[source]
        source: HostApiError,
    },
    /// The host handed over other bytes than the app-compose measures.
    #[error(
        "service {service}: the build context the host sent has SHA-256 {actual}, but the app-compose measures {expected}: refused"
    )]
    Mismatch {
        /// The service.
        service: String,
        /// The measured hash.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The tar holds an entry no packed context has.
    #[error("build context entry {entry:?} is refused: {reason}")]
    Unsafe {
        /// The entry's path as written in the tar.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// The tar could not be read.
    #[error("reading the build context tar")]
    Read(#[source] io::Error),
    /// Writing the unpacked context failed.
    #[error("writing {}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The work directory of service `service`'s build on the engine's volume
/// (under `data_dir`): it holds the Dockerfile, the log, the exported image
/// and the unpacked context.
pub(crate) fn work_dir(data_dir: &Path, service: &str) -> PathBuf {
    data_dir
        .join("volumes")
        .join(ENGINE_SERVICE)
        .join(work_rel(service))
}

/// [`work_dir`] relative to the engine's volume.
pub(crate) fn work_rel(service: &str) -> String {
    format!("dstack-build/{service}")
}

/// The unpacked context of service `service`, as the guest sees it.
pub(crate) fn context_dir(data_dir: &Path, service: &str) -> PathBuf {
    work_dir(data_dir, service).join("context")
}

/// The unpacked context of service `service`, as the engine sees it.
pub(crate) fn engine_context_dir(service: &str) -> String {
    format!("{ENGINE_STORAGE}/{}/context", work_rel(service))
}

/// What one service's context came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provided {
    /// The service.
    pub service: String,
    /// The measured hash.
    pub sha256: String,
    /// Size of the tar.
    pub bytes: u64,
    /// Entries unpacked.
    pub entries: u64,
}

/// Fetches, checks and unpacks every shipped build context of `compose`
/// into the engine's volume on the data disk (`data_dir`); `progress` gets
/// a line per context.
pub async fn provide_all(
    client: &HostClient,
    compose: &Compose,
    data_dir: &Path,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Vec<Provided>, ContextError> {
    let mut provided = Vec::new();
    for (service, spec) in &compose.services {
        let Some(sha256) = spec.build.as_ref().and_then(|b| b.shipped_context.clone()) else {
            continue;
        };
        progress(format!(
            "fetching the build context of {service} ({sha256})"
        ));
        let work = work_dir(data_dir, service);
        fs::create_dir_all(&work).map_err(write_err(&work))?;
        let tar = work.join("context.tar");
        let actual =
            client
                .get_blob(&sha256, &tar)
                .await
                .map_err(|source| ContextError::Fetch {
                    service: service.clone(),
                    sha256: sha256.clone(),
                    source,
                })?;
        let bytes = fs::metadata(&tar).map(|m| m.len()).unwrap_or_default();
        let checked = check(service, &sha256, &actual);
        if checked.is_err() {
            let _ = fs::remove_file(&tar);
        }
        checked?;
        let dir = context_dir(data_dir, service);
        let (tar_path, dir_path) = (tar.clone(), dir.clone());
        let entries = tokio::task::spawn_blocking(move || {
            let file = fs::File::open(&tar_path).map_err(ContextError::Read)?;
            unpack(file, &dir_path)
        })
        .await
        .map_err(|e| ContextError::Read(io::Error::other(e)))??;
        let _ = fs::remove_file(&tar);
        progress(format!(
            "build context of {service}: {entries} entries, {bytes} bytes, sha256 {sha256} checked"
        ));
        provided.push(Provided {
            service: service.clone(),
            sha256,
            bytes,
            entries,
        });
    }
    Ok(provided)
}

/// The hash of what arrived must be the measured one.
fn check(service: &str, expected: &str, actual: &str) -> Result<(), ContextError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ContextError::Mismatch {
            service: service.to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        })
    }
}

/// The entry's path, checked: relative, no `..`, not empty.
fn entry_path(raw: &Path) -> Result<PathBuf, ContextError> {
    let unsafe_entry = |reason| ContextError::Unsafe {
        entry: raw.display().to_string(),
        reason,
    };
    let mut clean = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("it has a .. component")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry("it is an absolute path"));
            }
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(unsafe_entry("it names the context itself"));
    }
    Ok(clean)
}

/// Unpacks a context tar into `dir` (replacing what was there), refusing
/// absolute paths, `..`, links out of the context, hard links, devices and
/// FIFOs, and any entry under a symlink; modes keep only the permission
/// bits, and every time is 0, so the same tar gives the same tree every
/// boot (the engine's layer cache keys on it). Returns the entry count.
pub fn unpack(reader: impl Read, dir: &Path) -> Result<u64, ContextError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(dir)(e)),
    }
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut archive = tar::Archive::new(reader);
    let mut links: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<PathBuf> = vec![dir.to_owned()];
    let mut written = Vec::new();
    let mut count = 0;
    for entry in archive.entries().map_err(ContextError::Read)? {
        let mut entry = entry.map_err(ContextError::Read)?;
        let raw = entry.path().map_err(ContextError::Read)?.into_owned();
        let rel = entry_path(&raw)?;
        let unsafe_entry = |reason| ContextError::Unsafe {
            entry: raw.display().to_string(),
            reason,
        };
        // Nothing is written through a link the tar made (its parent
        // directories are real directories of this unpack).
        if rel.ancestors().skip(1).any(|a| links.contains(a)) {
            return Err(unsafe_entry("it is under a symlink"));
        }
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        let mode = entry.header().mode().map_err(ContextError::Read)? & 0o777;
        match entry.header().entry_type() {
            EntryType::Directory => {
                match fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(write_err(&path)(e)),
                }
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(write_err(&path))?;
                dirs.push(path.clone());
            }
            EntryType::Regular | EntryType::Continuous => {
                // create_new: a second entry for the same path (or one
                // over a symlink) fails instead of writing through it.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(write_err(&path))?;
                io::copy(&mut entry, &mut file).map_err(write_err(&path))?;
                // The umask may have cut the mode.
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(write_err(&path))?;
                written.push(path.clone());
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ContextError::Read)?
                    .ok_or_else(|| unsafe_entry("a symlink without a target"))?
                    .into_owned();
                if !dstack_compose::context_link_stays_inside(&rel, &target) {
                    return Err(unsafe_entry("a symlink that points out of the context"));
                }
                symlink(&target, &path).map_err(write_err(&path))?;
                links.insert(rel.clone());
                written.push(path.clone());
            }
            EntryType::Link => return Err(unsafe_entry("hard links are not packed")),
            EntryType::Char | EntryType::Block => {
                return Err(unsafe_entry("device nodes are not packed"));
            }
            EntryType::Fifo => return Err(unsafe_entry("FIFOs are not packed")),
            _ => {
                return Err(unsafe_entry(
                    "only files, directories and symlinks are packed",
                ));
            }
        }
        count += 1;
    }
    // Directories last (writing into them changes their times), deepest first.
    for path in written.iter().chain(dirs.iter().rev()) {
        zero_times(path)?;
    }
    Ok(count)
}

/// Sets a path's access and modification times to the epoch, without
/// following a symlink.
fn zero_times(path: &Path) -> Result<(), ContextError> {
    let zero = TimeSpec::new(0, 0);
    utimensat(None, path, &zero, &zero, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| write_err(path)(io::Error::from(e)))
}

#[cfg(test)]
#[path = "build_context_tests.rs"]
mod tests;
