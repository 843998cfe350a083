//! Unpacking verified .debs into a staging tree, and reading files from it
//! without ever following a symlink out of that tree.

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::error::BuildError;

/// Extracts the data part of `deb` into `root` (no maintainer scripts run).
pub(crate) fn extract(package: &str, deb: &Path, root: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(root).map_err(BuildError::write(root))?;
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("-x").arg(deb).arg(root);
    crate::tool::run("dpkg-deb", &mut dpkg)?
        .map(drop)
        .map_err(|stderr| BuildError::Extract {
            package: package.to_owned(),
            stderr,
        })
}

/// More symlink hops than any package layout uses; stops symlink loops.
pub(crate) const MAX_LINK_HOPS: usize = 16;

/// What one path of the staging tree is, with symlinks left unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Staged {
    /// A regular file with its permission bits.
    File {
        /// Permission bits (`st_mode & 0o7777`).
        mode: u32,
    },
    /// A symlink and its target as stored.
    Symlink(String),
}

/// Looks at `rel` (an absolute guest path such as `/sbin/mke2fs`) inside
/// `root` without following a final symlink.
pub(crate) fn stat(root: &Path, rel: &str) -> Result<Option<Staged>, BuildError> {
    use std::os::unix::fs::PermissionsExt;

    let host = host_path(root, rel)?;
    // A symlinked parent directory would be followed by the host: refuse it,
    // so a package cannot redirect reads outside the staging tree.
    for parent in host.ancestors().skip(1) {
        if parent == root {
            break;
        }
        if fs::symlink_metadata(parent).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(BuildError::BadSymlink {
                path: rel.to_owned(),
            });
        }
    }
    let meta = match fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BuildError::read(host)(e)),
    };
    if meta.file_type().is_symlink() {
        let target = fs::read_link(&host).map_err(BuildError::read(&host))?;
        let target = target.to_str().ok_or_else(|| BuildError::BadSymlink {
            path: rel.to_owned(),
        })?;
        return Ok(Some(Staged::Symlink(target.to_owned())));
    }
    if meta.is_file() {
        return Ok(Some(Staged::File {
            mode: meta.permissions().mode() & 0o7777,
        }));
    }
    Ok(None)
}

/// The host path of the regular file that guest path `path` is, or leads
/// to through symlinks, inside `root`.
pub(crate) fn resolve_file(root: &Path, package: &str, path: &str) -> Result<PathBuf, BuildError> {
    let mut current = path.to_owned();
    for _ in 0..MAX_LINK_HOPS {
        match stat(root, &current)? {
            Some(Staged::File { .. }) => return host_path(root, &current),
            Some(Staged::Symlink(target)) => current = resolve_link(&current, &target)?,
            None => {
                return Err(BuildError::MissingFile {
                    package: package.to_owned(),
                    path: current,
                });
            }
        }
    }
    Err(BuildError::BadSymlink {
        path: path.to_owned(),
    })
}

/// Resolves the symlink at guest path `link` whose stored target is `target`
/// to the guest path it names (`/lib64/ld-linux-x86-64.so.2` →
/// `/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`), lexically and inside the
/// guest: `..` never climbs above `/`.
pub(crate) fn resolve_link(link: &str, target: &str) -> Result<String, BuildError> {
    let base = if target.starts_with('/') {
        PathBuf::from("/")
    } else {
        Path::new(link)
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
    };
    normalize(&base.join(target)).ok_or_else(|| BuildError::BadSymlink {
        path: link.to_owned(),
    })
}

/// Lexically normalises an absolute guest path; `None` if it is relative or
/// escapes the root.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    for c in components {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// The host path of guest path `rel` inside `root`, refusing `..`.
pub(crate) fn host_path(root: &Path, rel: &str) -> Result<PathBuf, BuildError> {
    let norm = normalize(Path::new(rel)).ok_or_else(|| BuildError::BadSymlink {
        path: rel.to_owned(),
    })?;
    Ok(root.join(norm.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_guest_root() {
        assert_eq!(
            resolve_link(
                "/lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            )
            .unwrap(),
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
        );
        assert_eq!(
            resolve_link("/usr/lib/x/libuuid.so.1", "libuuid.so.1.3.0").unwrap(),
            "/usr/lib/x/libuuid.so.1.3.0"
        );
        assert_eq!(
            resolve_link("/usr/share/qemu/OVMF.fd", "../ovmf/OVMF.fd").unwrap(),
            "/usr/share/ovmf/OVMF.fd"
        );
        assert!(resolve_link("/a", "../../etc/passwd").is_err());
    }

    #[test]
    fn stat_does_not_follow_symlinks_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("lib/evil")).unwrap();
        assert_eq!(
            stat(root.path(), "/lib/evil").unwrap(),
            Some(Staged::Symlink("/etc/passwd".into()))
        );
        assert_eq!(stat(root.path(), "/lib/none").unwrap(), None);
        assert!(host_path(root.path(), "/../x").is_err());
    }
}
