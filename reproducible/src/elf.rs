//! ELF checks: the init binary must be static (the guest has no libc for
//! it), and a dynamic tool shipped in the image (mke2fs) comes with exactly
//! the shared objects it loads, found by following DT_NEEDED and PT_INTERP
//! through the pinned packages, so a missing library fails the build rather
//! than the guest.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::Path;

use goblin::elf::Elf;

use crate::deb;
use crate::error::BuildError;
use crate::stage;
use crate::tree::Tree;

/// Where the guest's dynamic loader looks without an ld.so.cache: Debian's
/// built-in multiarch and plain library directories.
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// What a binary needs from the dynamic loader.
struct Needs {
    interpreter: Option<String>,
    libraries: Vec<String>,
}

fn needs(path: &Path, bytes: &[u8]) -> Result<Needs, BuildError> {
    let elf = Elf::parse(bytes).map_err(|e| BuildError::Elf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Needs {
        interpreter: elf.interpreter.map(str::to_owned),
        libraries: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
    })
}

/// Refuses an init binary that needs a dynamic loader or shared libraries.
pub(crate) fn check_static(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let n = needs(path, bytes)?;
    if n.interpreter.is_some() || !n.libraries.is_empty() {
        return Err(BuildError::InitNotStatic {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Copies the dynamic executable `binary` from the staging `root` into
/// `tree` with its loader and every library it needs, transitively. Returns
/// the guest paths copied, sorted.
pub(crate) fn copy_with_libraries(
    root: &Path,
    tree: &mut Tree,
    package: &str,
    binary: &str,
) -> Result<Vec<String>, BuildError> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([binary.to_owned()]);
    while let Some(path) = queue.pop_front() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let real = stage::copy_path(root, tree, package, &path)?;
        let host = deb::host_path(root, &real)?;
        let bytes = fs::read(&host).map_err(BuildError::read(&host))?;
        let n = needs(&host, &bytes)?;
        queue.extend(n.interpreter);
        for soname in n.libraries {
            let found = find_library(root, &soname)?.ok_or_else(|| BuildError::MissingLibrary {
                library: soname.clone(),
                needed_by: path.clone(),
            })?;
            queue.push_back(found);
        }
    }
    Ok(seen.into_iter().collect())
}

fn find_library(root: &Path, soname: &str) -> Result<Option<String>, BuildError> {
    for dir in LIBRARY_DIRS {
        let candidate = format!("{dir}/{soname}");
        if deb::stat(root, &candidate)?.is_some() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_dynamic_binary_is_not_static_and_garbage_is_not_elf() {
        // Any dynamically linked binary of the build host will do.
        let ls = Path::new("/bin/ls");
        if let Ok(bytes) = fs::read(ls) {
            assert!(matches!(
                check_static(ls, &bytes),
                Err(BuildError::InitNotStatic { .. })
            ));
        }
        assert!(matches!(
            check_static(Path::new("x"), b"#!/bin/sh\n"),
            Err(BuildError::Elf { .. })
        ));
    }

    #[test]
    fn missing_library_is_named() {
        // Stage the host's /bin/true alone: its libc is not there.
        let Ok(bytes) = fs::read("/bin/true") else {
            return;
        };
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("bin")).unwrap();
        fs::write(root.path().join("bin/true"), bytes).unwrap();
        let mut tree = Tree::new();
        let err =
            copy_with_libraries(root.path(), &mut tree, "coreutils", "/bin/true").unwrap_err();
        assert!(
            matches!(&err, BuildError::MissingLibrary { library, needed_by }
                if library == "libc.so.6" && needed_by == "/bin/true"),
            "{err:?}"
        );
    }
}
