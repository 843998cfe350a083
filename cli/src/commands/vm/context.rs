//! Build contexts shipped from this machine: for each service whose build
//! reads a Dockerfile file, the context directory (relative to the compose
//! file's) is packed into a deterministic tar whose SHA-256 the
//! app-compose measures (`build_contexts`), and the tar goes to the CVM
//! through the supervisor, which is not trusted with it: the guest refuses
//! other bytes.
//!
//! Deterministic: entries sorted by path; mtime 0, uid/gid 0, no user or
//! group names; mode 0755 for directories and files with an executable
//! bit, else 0644; symlinks stored as symlinks, never followed, and only
//! when they stay inside the context. `.dockerignore` is honoured as docker
//! honours it; the Dockerfile and the `.dockerignore` itself are always
//! shipped (the engine reads both, as docker's daemon does).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use dstack_compose::{BuildSpec, Compose};
use dstack_proto::blob::MAX_BLOB_BYTES;
use sha2::{Digest, Sha256};

use super::dockerignore::{Dockerignore, PatternError};

/// Why a service's build context cannot be shipped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContextError {
    /// The compose file came from a pipe or a descriptor: no directory.
    #[error(
        "services.{service}.build.context: {} is not a file in a directory, so the build context {context:?} has nowhere to be found: pass the compose file by its path",
        file.display()
    )]
    NoDirectory {
        /// The service.
        service: String,
        /// The compose file as given.
        file: PathBuf,
        /// The context as written.
        context: String,
    },
    /// The context directory does not exist.
    #[error("services.{service}.build.context: the build context {} does not exist", path.display())]
    ContextMissing {
        /// The service.
        service: String,
        /// The directory looked for.
        path: PathBuf,
    },
    /// The context is not a directory.
    #[error("services.{service}.build.context: {} is not a directory", path.display())]
    NotADirectory {
        /// The service.
        service: String,
        /// The path.
        path: PathBuf,
    },
    /// The Dockerfile is not in the context.
    #[error("services.{service}.build.dockerfile: the Dockerfile {} does not exist", path.display())]
    DockerfileMissing {
        /// The service.
        service: String,
        /// The file looked for.
        path: PathBuf,
    },
    /// A symlink points out of the context (or is absolute).
    #[error(
        "the symlink {} points out of the build context (to {target:?}); only the context is shipped: replace it with what it points to, or add it to .dockerignore",
        path.display()
    )]
    SymlinkEscape {
        /// The link.
        path: PathBuf,
        /// Its target as stored.
        target: PathBuf,
    },
    /// A socket, FIFO or device node in the context.
    #[error("{} is a {kind}, which a build context cannot hold: add it to .dockerignore", path.display())]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The packed context would be larger than a CVM accepts.
    #[error(
        "the build context {} is over {} MiB packed (the limit of a shipped context) at {}: add what the build does not need to its .dockerignore",
        dir.display(), limit >> 20, at.display()
    )]
    TooLarge {
        /// The context.
        dir: PathBuf,
        /// The limit in bytes.
        limit: u64,
        /// The entry that went over.
        at: PathBuf,
    },
    /// The `.dockerignore` does not parse.
    #[error("{}: {source}", path.display())]
    Dockerignore {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: PatternError,
    },
    /// An app-compose.json that measures no context for a service whose
    /// build reads one.
    #[error(
        "services.{service}.build: app-compose.json measures no build context for the service; its context packs to {sha256}: add \"build_contexts\": {{\"{service}\": \"{sha256}\"}} to it (a new compose-hash), or deploy the compose YAML, which does that"
    )]
    NotMeasured {
        /// The service.
        service: String,
        /// What its context packs to now.
        sha256: String,
    },
    /// The context on this machine is not the one app-compose.json measures.
    #[error(
        "build_contexts.{service}: app-compose.json measures {measured}, but {} packs to {packed}: the context changed since the app-compose was written",
        dir.display()
    )]
    Changed {
        /// The service.
        service: String,
        /// The hash in app-compose.json.
        measured: String,
        /// What the context packs to.
        packed: String,
        /// The context.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Read {
        path: path.to_owned(),
        source,
    }
}

/// A packed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packed {
    /// The tar.
    pub(crate) tar: Vec<u8>,
    /// Its SHA-256, hex.
    pub(crate) sha256: String,
    /// Regular files in it.
    pub(crate) files: usize,
    /// Bytes of file content in it.
    pub(crate) content_bytes: u64,
}

/// A service's context, packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceContext {
    /// The service.
    pub(crate) service: String,
    /// The context directory on this machine.
    pub(crate) dir: PathBuf,
    /// The tar.
    pub(crate) packed: Packed,
}

/// The directory a compose file's relative paths are resolved from; `None`
/// for a file that is a pipe or descriptor (`/dev/stdin`, `/dev/fd/N`,
/// `/proc/self/fd/N`), which has none.
pub(crate) fn compose_dir(file: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(file).ok()?;
    if absolute.starts_with("/dev") || absolute.starts_with("/proc") {
        return None;
    }
    if !fs::metadata(&absolute).is_ok_and(|m| m.is_file()) {
        return None;
    }
    absolute.parent().map(Path::to_owned)
}

/// Every service of `compose` whose build needs its context shipped (a
/// Dockerfile file), or that `measured` lists: packed, in service order.
/// `progress` gets (service, bytes packed, bytes in all).
pub(crate) fn pack_services(
    file: &Path,
    compose: &Compose,
    measured: &BTreeSet<String>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Vec<(String, Result<ServiceContext, ContextError>)> {
    let base = compose_dir(file);
    compose
        .services
        .iter()
        .filter_map(|(name, service)| {
            let build = service.build.as_ref()?;
            (build.reads_local_files() || measured.contains(name)).then_some((name, build))
        })
        .map(|(name, build)| {
            let packed = pack_service(name, build, file, base.as_deref(), &mut |done, all| {
                progress(name, done, all)
            });
            (name.clone(), packed)
        })
        .collect()
}

/// Checks a packed context against the hash an app-compose.json measures
/// for its service.
pub(crate) fn check_measured(
    context: &ServiceContext,
    measured: &std::collections::BTreeMap<String, String>,
) -> Result<(), ContextError> {
    match measured.get(&context.service) {
        None => Err(ContextError::NotMeasured {
            service: context.service.clone(),
            sha256: context.packed.sha256.clone(),
        }),
        Some(hash) if *hash != context.packed.sha256 => Err(ContextError::Changed {
            service: context.service.clone(),
            measured: hash.clone(),
            packed: context.packed.sha256.clone(),
            dir: context.dir.clone(),
        }),
        Some(_) => Ok(()),
    }
}

/// Resolves and packs one service's context.
fn pack_service(
    service: &str,
    build: &BuildSpec,
    file: &Path,
    base: Option<&Path>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ServiceContext, ContextError> {
    let Some(base) = base else {
        return Err(ContextError::NoDirectory {
            service: service.to_owned(),
            file: file.to_owned(),
            context: build.source_context.clone(),
        });
    };
    let dir = base.join(&build.source_context);
    let meta = fs::metadata(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ContextError::ContextMissing {
            service: service.to_owned(),
            path: dir.clone(),
        },
        _ => read_err(&dir)(e),
    })?;
    if !meta.is_dir() {
        return Err(ContextError::NotADirectory {
            service: service.to_owned(),
            path: dir,
        });
    }
    // The context itself may be reached through a link; inside it, no link
    // is followed.
    let dir = dir.canonicalize().map_err(read_err(&dir))?;
    let dockerfile = build
        .dockerfile_inline
        .is_none()
        .then(|| build.dockerfile_path().to_owned());
    if let Some(name) = &dockerfile
        && !fs::symlink_metadata(dir.join(name)).is_ok_and(|m| !m.is_dir())
    {
        return Err(ContextError::DockerfileMissing {
            service: service.to_owned(),
            path: dir.join(name),
        });
    }
    let packed = pack_dir(&dir, dockerfile.as_deref(), MAX_BLOB_BYTES, progress)?;
    Ok(ServiceContext {
        service: service.to_owned(),
        dir,
        packed,
    })
}

/// One thing to put in the tar.
#[derive(Debug)]
enum Item {
    Dir,
    File { size: u64, executable: bool },
    Link(PathBuf),
}

/// A relative path as `/`-separated text, for patterns and sorting.
fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Packs directory `dir` (whose `dockerfile`, when given, is always
/// included) into a deterministic tar of at most `limit` bytes.
pub(crate) fn pack_dir(
    dir: &Path,
    dockerfile: Option<&str>,
    limit: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Packed, ContextError> {
    let ignore_file = dir.join(".dockerignore");
    let ignore = match fs::read_to_string(&ignore_file) {
        Ok(text) => Dockerignore::parse(&text).map_err(|source| ContextError::Dockerignore {
            path: ignore_file.clone(),
            source,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Dockerignore::default(),
        Err(e) => return Err(read_err(&ignore_file)(e)),
    };
    // What the engine reads whatever the patterns say.
    let mut forced: BTreeSet<PathBuf> = BTreeSet::new();
    if ignore_file.exists() {
        forced.insert(PathBuf::from(".dockerignore"));
    }
    if let Some(name) = dockerfile {
        let rel: PathBuf = Path::new(name)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        forced.insert(rel);
    }
    let keeps = |rel: &Path| forced.iter().any(|f| f.starts_with(rel));
    let mut items: Vec<(PathBuf, Item)> = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        let abs_dir = dir.join(&rel_dir);
        for entry in fs::read_dir(&abs_dir).map_err(read_err(&abs_dir))? {
            let entry = entry.map_err(read_err(&abs_dir))?;
            let rel = rel_dir.join(entry.file_name());
            let abs = dir.join(&rel);
            let excluded = ignore.excludes(&slash_path(&rel)) && !keeps(&rel);
            let meta = fs::symlink_metadata(&abs).map_err(read_err(&abs))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                // An excluded directory is walked only if something under
                // it may be re-included (and then kept as their parent).
                if !excluded || ignore.has_exceptions() || keeps(&rel) {
                    pending.push(rel.clone());
                    items.push((rel, Item::Dir));
                }
                continue;
            }
            if excluded {
                continue;
            }
            let item = if kind.is_file() {
                Item::File {
                    size: meta.len(),
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else if kind.is_symlink() {
                let target = fs::read_link(&abs).map_err(read_err(&abs))?;
                if !dstack_compose::context_link_stays_inside(&rel, &target) {
                    return Err(ContextError::SymlinkEscape { path: abs, target });
                }
                Item::Link(target)
            } else {
                use std::os::unix::fs::FileTypeExt;
                let kind = if kind.is_socket() {
                    "socket"
                } else if kind.is_fifo() {
                    "FIFO"
                } else {
                    "device node"
                };
                return Err(ContextError::UnsupportedFile { path: abs, kind });
            };
            items.push((rel, item));
        }
    }
    // A directory walked only for what an exception might re-include is
    // kept only if something under it was.
    let kept_dirs: BTreeSet<PathBuf> = items
        .iter()
        .filter(|(_, item)| !matches!(item, Item::Dir))
        .flat_map(|(rel, _)| {
            rel.ancestors()
                .skip(1)
                .map(Path::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    items.retain(|(rel, item)| {
        !matches!(item, Item::Dir)
            || kept_dirs.contains(rel)
            || !ignore.excludes(&slash_path(rel))
            || keeps(rel)
    });
    items.sort_by(|(a, _), (b, _)| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));

    let total: u64 = items
        .iter()
        .map(|(_, item)| match item {
            Item::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    let mut builder = tar::Builder::new(Vec::new());
    let (mut done, mut files) = (0u64, 0usize);
    for (rel, item) in &items {
        let abs = dir.join(rel);
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let data = match item {
            Item::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                Vec::new()
            }
            Item::Link(_) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                Vec::new()
            }
            Item::File { size, executable } => {
                let projected = builder.get_ref().len() as u64 + 1024 + size;
                if projected > limit {
                    return Err(ContextError::TooLarge {
                        dir: dir.to_owned(),
                        limit,
                        at: abs,
                    });
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                // Read whole, so the header's size is what is written even
                // if the file changes meanwhile.
                fs::read(&abs).map_err(read_err(&abs))?
            }
        };
        header.set_size(data.len() as u64);
        let written = match item {
            Item::Link(target) => builder.append_link(&mut header, rel, target),
            _ => builder.append_data(&mut header, rel, &data[..]),
        };
        written.map_err(read_err(&abs))?;
        if let Item::File { .. } = item {
            files += 1;
            done += data.len() as u64;
            progress(done, total);
        }
        if builder.get_ref().len() as u64 > limit {
            return Err(ContextError::TooLarge {
                dir: dir.to_owned(),
                limit,
                at: abs,
            });
        }
    }
    let tar = builder.into_inner().map_err(read_err(dir))?;
    if tar.len() as u64 > limit {
        return Err(ContextError::TooLarge {
            dir: dir.to_owned(),
            limit,
            at: dir.to_owned(),
        });
    }
    let sha256 = hex::encode(Sha256::digest(&tar));
    Ok(Packed {
        tar,
        sha256,
        files,
        content_bytes: done,
    })
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
