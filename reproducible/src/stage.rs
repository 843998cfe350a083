//! Copying paths from the extracted packages into the initramfs tree,
//! symlinks included, so the guest sees the package layout unchanged.

use std::fs;
use std::path::Path;

use crate::deb::{self, MAX_LINK_HOPS, Staged};
use crate::error::BuildError;
use crate::tree::Tree;

/// Copies guest path `path` from the staging `root` into `tree`. A symlink
/// is copied as a symlink and its target copied too, hop by hop. Returns the
/// guest path of the regular file finally reached.
pub(crate) fn copy_path(
    root: &Path,
    tree: &mut Tree,
    package: &str,
    path: &str,
) -> Result<String, BuildError> {
    let mut current = path.to_owned();
    for _ in 0..MAX_LINK_HOPS {
        match deb::stat(root, &current)? {
            Some(Staged::File { mode }) => {
                let host = deb::host_path(root, &current)?;
                let data = fs::read(&host).map_err(BuildError::read(&host))?;
                tree.add_file(&current, mode, data)?;
                return Ok(current);
            }
            Some(Staged::Symlink(target)) => {
                tree.add_symlink(&current, &target)?;
                current = deb::resolve_link(&current, &target)?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Node;

    #[test]
    fn symlink_chains_are_copied_with_their_targets() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(root.path().join("lib64")).unwrap();
        fs::write(lib.join("ld.so.2.36"), b"ld").unwrap();
        std::os::unix::fs::symlink("ld.so.2.36", lib.join("ld.so.2")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld.so.2",
            root.path().join("lib64/ld.so"),
        )
        .unwrap();
        let mut tree = Tree::new();
        let real = copy_path(root.path(), &mut tree, "libc6", "/lib64/ld.so").unwrap();
        assert_eq!(real, "/lib/x86_64-linux-gnu/ld.so.2.36");
        let nodes: Vec<(&str, &Node)> = tree.iter().collect();
        assert!(nodes.iter().any(|(p, n)| *p == "lib64/ld.so"
            && matches!(n, Node::Symlink { target } if target == "/lib/x86_64-linux-gnu/ld.so.2")));
        assert!(tree.contains("/lib/x86_64-linux-gnu/ld.so.2"));
        assert!(tree.contains("/lib/x86_64-linux-gnu/ld.so.2.36"));

        std::os::unix::fs::symlink("loop", lib.join("loop")).unwrap();
        assert!(matches!(
            copy_path(root.path(), &mut tree, "x", "/lib/x86_64-linux-gnu/loop"),
            Err(BuildError::BadSymlink { .. })
        ));
        assert!(matches!(
            copy_path(root.path(), &mut tree, "x", "/sbin/none"),
            Err(BuildError::MissingFile { .. })
        ));
    }
}
