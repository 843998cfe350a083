//! Applying OCI image layers (tar, optionally gzip) to a directory.
//!
//! A layer comes from a registry and is hostile until proven otherwise, so no
//! path is trusted: `..` components are refused, and every parent directory
//! is resolved component by component *inside* the root (a symlink in an
//! earlier layer, absolute or relative, is followed as if the root were `/`),
//! so no entry can be written outside it. Nothing else writes to the target
//! while a layer is applied (it is a private temporary directory), which is
//! what makes this lstat-based resolution free of races.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The archive is truncated or not a tar stream.
    #[error("reading the layer archive")]
    Read(#[source] io::Error),
    /// An entry's path, or a hardlink's target, would land outside the root.
    #[error("entry {path:?} escapes the image root")]
    Escape {
        /// The path as written in the archive.
        path: String,
    },
    /// Symlinks in the image form a loop (or a chain longer than 40).
    #[error("too many levels of symbolic links resolving {path:?}")]
    SymlinkLoop {
        /// The path being resolved.
        path: String,
    },
    /// The layer uses a compression this guest does not unpack.
    #[error("layer compression {0} is not supported (only tar and gzip)")]
    Compression(&'static str),
    /// Writing into the root failed.
    #[error("writing {path}")]
    Write {
        /// The path on disk.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What applying one layer did, for the progress line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerStats {
    /// Entries written (files, directories, links).
    pub(crate) written: u64,
    /// Whiteouts applied.
    pub(crate) whiteouts: u64,
    /// Device nodes and FIFOs skipped (a container gets its own /dev).
    pub(crate) skipped: u64,
}

const MAX_SYMLINKS: usize = 40;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a layer blob, choosing the decompressor from its first bytes rather
/// than its media type: registries and tools disagree on media types, never
/// on magic numbers.
pub(crate) fn open_layer(path: &Path) -> Result<Box<dyn Read>, UnpackError> {
    let file = fs::File::open(path).map_err(UnpackError::Read)?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(UnpackError::Read)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(UnpackError::Compression("zstd"))
    } else {
        Ok(Box::new(reader))
    }
}

/// Turns an archive path into a relative path with only normal components;
/// `None` for the root itself.
fn clean_path(raw: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Escape {
                    path: raw.display().to_string(),
                });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Resolves `rel` (relative to `root`) to a path on disk that is inside
/// `root`, following every symlink as if `root` were `/`. Missing components
/// are kept as they are (they will be created).
pub(crate) fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop(); // clamped at the root, like `/..`
            continue;
        }
        let candidate: PathBuf = resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let candidate = candidate.join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(UnpackError::SymlinkLoop {
                        path: rel.display().to_string(),
                    });
                }
                let target = fs::read_link(&candidate).map_err(write_err(&candidate))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(p) => pending.push_front(p.to_os_string()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

/// The on-disk path for an entry: its parent resolved inside the root, its
/// last component not followed (the entry replaces whatever is there).
fn entry_target(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().ok_or_else(|| UnpackError::Escape {
        path: rel.display().to_string(),
    })?;
    Ok(resolve_in_root(root, parent)?.join(name))
}

/// Removes whatever is at `path` (file, symlink or whole directory).
fn remove_any(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(write_err(path))
}

fn set_owner_and_mode(path: &Path, header: &tar::Header, is_symlink: bool) -> io::Result<()> {
    // Ownership only matters (and only works) when PID1 runs as root; tests may not.
    if nix::unistd::geteuid().is_root() {
        let uid = header.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = header.gid().ok().and_then(|g| u32::try_from(g).ok());
        lchown(path, uid, gid)?;
    }
    // chmod after chown: chown clears setuid/setgid bits.
    if !is_symlink && let Ok(mode) = header.mode() {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

/// Applies one layer to `root`, handling OCI whiteouts. Entries that would
/// escape `root` stop the layer with [`UnpackError::Escape`].
pub(crate) fn apply_layer(root: &Path, archive: impl Read) -> Result<LayerStats, UnpackError> {
    let mut archive = tar::Archive::new(archive);
    let mut stats = LayerStats::default();
    // Paths this layer wrote: an opaque whiteout hides lower layers only.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let mut opaque_dirs: Vec<PathBuf> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = entry.path().map_err(UnpackError::Read)?.into_owned();
        let Some(rel) = clean_path(&raw)? else {
            continue; // "./" itself
        };
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == OPAQUE_WHITEOUT {
            let dir = resolve_in_root(root, rel.parent().unwrap_or(Path::new("")))?;
            opaque_dirs.push(dir);
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if !hidden.starts_with(WHITEOUT_PREFIX) {
                remove_any(&entry_target(root, &rel.with_file_name(hidden))?)?;
                stats.whiteouts += 1;
            }
            continue; // other `.wh..wh.*` names are aufs metadata
        }
        let target = entry_target(root, &rel)?;
        let header = entry.header().clone();
        match header.entry_type() {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target)?;
                        fs::create_dir(&target).map_err(write_err(&target))?;
                    }
                    Err(_) => fs::create_dir_all(&target).map_err(write_err(&target))?,
                }
                set_owner_and_mode(&target, &header, false).map_err(write_err(&target))?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_any(&target)?;
                ensure_parent(&target)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true) // never follows a symlink
                    .open(&target)
                    .map_err(write_err(&target))?;
                io::copy(&mut entry, &mut file).map_err(UnpackError::Read)?;
                set_owner_and_mode(&target, &header, false).map_err(write_err(&target))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::Escape {
                        path: raw.display().to_string(),
                    })?;
                remove_any(&target)?;
                ensure_parent(&target)?;
                // The target is stored verbatim: it is resolved at run time,
                // inside the container's root.
                symlink(&*link, &target).map_err(write_err(&target))?;
                set_owner_and_mode(&target, &header, true).map_err(write_err(&target))?;
            }
            EntryType::Link => {
                let link = entry.link_name().map_err(UnpackError::Read)?;
                let source_rel = link
                    .as_deref()
                    .map(clean_path)
                    .transpose()?
                    .flatten()
                    .ok_or_else(|| UnpackError::Escape {
                        path: raw.display().to_string(),
                    })?;
                let source = entry_target(root, &source_rel)?;
                remove_any(&target)?;
                ensure_parent(&target)?;
                fs::hard_link(&source, &target).map_err(write_err(&target))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                stats.skipped += 1;
                continue;
            }
            _ => continue, // pax/GNU metadata entries are consumed by the iterator
        }
        written.insert(target);
        stats.written += 1;
    }
    for dir in opaque_dirs {
        clear_lower_entries(&dir, &written)?;
    }
    Ok(stats)
}

fn ensure_parent(target: &Path) -> Result<(), UnpackError> {
    match target.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(write_err(parent)),
        None => Ok(()),
    }
}

/// Removes the children of `dir` that this layer did not write itself.
fn clear_lower_entries(dir: &Path, written: &HashSet<PathBuf>) -> Result<(), UnpackError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(write_err(dir)(e)),
    };
    for child in entries {
        let path = child.map_err(write_err(dir))?.path();
        if written.contains(&path) {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                clear_lower_entries(&path, written)?;
            }
        } else {
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Unpacks an image's layers into `<rootfs_dir>/<config_hex>` once: the
/// layers are applied in a temporary directory which is synced and renamed
/// into place, so the final name exists only for a complete root (the rename
/// is the completion marker). The name is the hex digest alone because
/// overlayfs options use `:` as a separator. `on_layer` is called with the
/// index of each layer applied.
pub(crate) fn unpack_image(
    rootfs_dir: &Path,
    config_hex: &str,
    layers: &[PathBuf],
    mut on_layer: impl FnMut(usize, LayerStats),
) -> Result<PathBuf, (usize, UnpackError)> {
    let done = rootfs_dir.join(config_hex);
    if done.is_dir() {
        return Ok(done);
    }
    let tmp = rootfs_dir.join(format!(".tmp-{config_hex}"));
    let fail = |i: usize| move |e: UnpackError| (i, e);
    remove_any(&tmp).map_err(fail(0))?;
    fs::create_dir_all(&tmp).map_err(|e| (0, write_err(&tmp)(e)))?;
    for (i, layer) in layers.iter().enumerate() {
        let stats = apply_layer(&tmp, open_layer(layer).map_err(fail(i))?).map_err(fail(i))?;
        on_layer(i, stats);
    }
    // Make the files durable before the rename publishes them.
    let dir = fs::File::open(&tmp).map_err(|e| (0, write_err(&tmp)(e)))?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir))
        .map_err(|e| (0, write_err(&tmp)(e.into())))?;
    fs::rename(&tmp, &done).map_err(|e| (0, write_err(&done)(e)))?;
    Ok(done)
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
