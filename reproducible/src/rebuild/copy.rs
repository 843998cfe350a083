//! Filling a build's directory: private copies owned by the build user, and
//! hard links to the shared caches (read-only to it: the files stay root's,
//! only the directories become its own).

use std::fs::{self, FileTimes};
use std::io;
use std::os::unix::fs::{PermissionsExt, chown, lchown, symlink};
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// How a tree is brought over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// A private copy, modification times kept.
    Copy,
    /// Hard links where the filesystem allows, copies elsewhere.
    Link,
}

/// The owner given to what is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn own(path: &Path, owner: Option<Owner>, symlink: bool) -> Result<(), BuildError> {
    let Some(o) = owner else { return Ok(()) };
    let set = if symlink { lchown } else { chown };
    set(path, Some(o.uid), Some(o.gid)).map_err(BuildError::write(path))
}

/// Creates `dir` (and missing parents), each created one owned by `owner`.
pub(crate) fn create_dirs(dir: &Path, owner: Option<Owner>) -> Result<(), BuildError> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).map_err(BuildError::write(d))?;
        own(d, owner, false)?;
    }
    Ok(())
}

/// Brings the tree `src` to `dst` (created), skipping the paths (relative
/// to `src`) for which `skip` is true. Returns the number of files.
pub(crate) fn tree(
    src: &Path,
    dst: &Path,
    how: How,
    owner: Option<Owner>,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64, BuildError> {
    create_dirs(dst, owner)?;
    let mut files = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let from_dir = src.join(&rel);
        for entry in fs::read_dir(&from_dir).map_err(BuildError::read(&from_dir))? {
            let entry = entry.map_err(BuildError::read(&from_dir))?;
            let rel = rel.join(entry.file_name());
            if skip(&rel) {
                continue;
            }
            let (from, to) = (entry.path(), dst.join(&rel));
            let kind = entry.file_type().map_err(BuildError::read(&from))?;
            if kind.is_dir() {
                match fs::create_dir(&to) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(BuildError::write(&to)(e));
                    }
                    _ => {}
                }
                own(&to, owner, false)?;
                stack.push(rel);
            } else if kind.is_symlink() {
                let target = fs::read_link(&from).map_err(BuildError::read(&from))?;
                symlink(&target, &to).map_err(BuildError::write(&to))?;
                own(&to, owner, true)?;
                files += 1;
            } else {
                file(&from, &to, how, owner)?;
                files += 1;
            }
        }
    }
    Ok(files)
}

/// Copies the files `paths` (relative to `src`, each a regular file or a
/// symlink; missing ones skipped) to the same paths under `dst`, with fresh
/// modification times: a build there sees every source file as new.
pub(crate) fn files(
    src: &Path,
    paths: &[PathBuf],
    dst: &Path,
    owner: Option<Owner>,
) -> Result<u64, BuildError> {
    let mut count = 0;
    for rel in paths {
        let from = src.join(rel);
        let Ok(meta) = fs::symlink_metadata(&from) else {
            continue; // deleted in the work tree but still in git's index
        };
        let to = dst.join(rel);
        if let Some(parent) = to.parent() {
            create_dirs(parent, owner)?;
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&from).map_err(BuildError::read(&from))?;
            symlink(&target, &to).map_err(BuildError::write(&to))?;
            own(&to, owner, true)?;
        } else if meta.is_file() {
            fs::copy(&from, &to).map_err(BuildError::write(&to))?;
            own(&to, owner, false)?;
        } else {
            continue;
        }
        count += 1;
    }
    Ok(count)
}

fn file(from: &Path, to: &Path, how: How, owner: Option<Owner>) -> Result<(), BuildError> {
    // A link stays the caches' file, and its owner's: only one anybody may
    // read can be shared (a few crates ship files without that bit).
    let readable = fs::metadata(from)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false);
    if how == How::Link && (readable || owner.is_none()) && fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).map_err(BuildError::write(to))?;
    let modified = fs::metadata(from)
        .and_then(|m| m.modified())
        .map_err(BuildError::read(from))?;
    fs::File::open(to)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(modified)))
        .map_err(BuildError::write(to))?;
    own(to, owner, false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_file_others_cannot_read_is_copied_not_linked() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("private"), b"p").unwrap();
        fs::set_permissions(
            src.path().join("private"),
            fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let me = {
            let m = fs::metadata(out.path()).unwrap();
            Owner {
                uid: m.uid(),
                gid: m.gid(),
            }
        };
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let dst = out.path().join("for-another-user");
        tree(src.path(), &dst, How::Link, Some(me), &|_| false).unwrap();
        assert_ne!(ino(&dst.join("private")), ino(&src.path().join("private")));
        // The caller's own build links it.
        let own = out.path().join("own");
        tree(src.path(), &own, How::Link, None, &|_| false).unwrap();
        assert_eq!(ino(&own.join("private")), ino(&src.path().join("private")));
    }

    #[test]
    fn links_share_the_file_and_copies_keep_their_time() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("d/e")).unwrap();
        fs::write(src.path().join("d/e/f"), b"data").unwrap();
        fs::write(src.path().join("skip-me"), b"x").unwrap();
        symlink("d/e/f", src.path().join("link")).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::open(src.path().join("d/e/f"))
            .unwrap()
            .set_times(FileTimes::new().set_modified(old))
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        let skip = |p: &Path| p == Path::new("skip-me");

        let linked = out.path().join("linked");
        assert_eq!(
            tree(src.path(), &linked, How::Link, None, &skip).unwrap(),
            2
        );
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&linked.join("d/e/f")), ino(&src.path().join("d/e/f")));
        assert!(!linked.join("skip-me").exists());
        assert_eq!(
            fs::read_link(linked.join("link")).unwrap(),
            Path::new("d/e/f")
        );

        let copied = out.path().join("copied");
        tree(src.path(), &copied, How::Copy, None, &skip).unwrap();
        assert_ne!(ino(&copied.join("d/e/f")), ino(&src.path().join("d/e/f")));
        let mtime = fs::metadata(copied.join("d/e/f"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, old);

        let listed = out.path().join("listed");
        let paths = [
            PathBuf::from("d/e/f"),
            PathBuf::from("gone"),
            PathBuf::from("link"),
        ];
        assert_eq!(files(src.path(), &paths, &listed, None).unwrap(), 2);
        assert_eq!(fs::read(listed.join("d/e/f")).unwrap(), b"data");
        let fresh = fs::metadata(listed.join("d/e/f"))
            .unwrap()
            .modified()
            .unwrap();
        assert!(fresh > old);
    }
}
