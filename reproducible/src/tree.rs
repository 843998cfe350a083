//! The initramfs as an in-memory tree: every path with its final content,
//! owner root, and no timestamps, so its serialisation depends only on what
//! is in it.

use std::collections::BTreeMap;

use crate::error::BuildError;

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory with its permission bits.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Content.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Link target as stored.
        target: String,
    },
}

/// Paths (relative, no leading `/`) to nodes. A `BTreeMap` keeps them in
/// byte order, in which every directory precedes its contents, as the
/// kernel's unpacker needs.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub(crate) fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), BuildError> {
        self.insert(path, Node::Dir { mode })
    }

    /// Adds a regular file (and its parents, mode 0755).
    pub(crate) fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        data: Vec<u8>,
    ) -> Result<(), BuildError> {
        self.insert(path, Node::File { mode, data })
    }

    /// Adds a symlink (and its parents).
    pub(crate) fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), BuildError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Whether `path` is already in the tree.
    #[cfg(test)]
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(clean(path))
    }

    /// The nodes in archive order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Inserts `node`; adding the identical node twice is fine (two packages
    /// may both need `/lib`), two different contents for one path is not.
    fn insert(&mut self, path: &str, node: Node) -> Result<(), BuildError> {
        let path = clean(path);
        if path.is_empty()
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(BuildError::Conflict {
                path: path.to_owned(),
            });
        }
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for dir in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(dir);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(BuildError::Conflict { path: parent }),
            }
        }
        match self.nodes.get(path) {
            None => {
                self.nodes.insert(path.to_owned(), node);
                Ok(())
            }
            Some(existing) if *existing == node => Ok(()),
            Some(_) => Err(BuildError::Conflict {
                path: path.to_owned(),
            }),
        }
    }
}

/// Archive paths carry no leading `/`.
fn clean(path: &str) -> &str {
    path.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_come_first() {
        let mut t = Tree::new();
        t.add_file("/lib/modules/v/a.ko", 0o644, b"a".to_vec())
            .unwrap();
        t.add_file("/init", 0o755, b"i".to_vec()).unwrap();
        t.add_dir("/lib.d", 0o700).unwrap();
        let names: Vec<&str> = t.iter().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            [
                "init",
                "lib",
                "lib.d",
                "lib/modules",
                "lib/modules/v",
                "lib/modules/v/a.ko"
            ]
        );
    }

    #[test]
    fn same_node_twice_is_fine_different_is_a_conflict() {
        let mut t = Tree::new();
        t.add_file("/etc/x", 0o644, b"1".to_vec()).unwrap();
        t.add_file("/etc/x", 0o644, b"1".to_vec()).unwrap();
        assert!(matches!(
            t.add_file("/etc/x", 0o644, b"2".to_vec()),
            Err(BuildError::Conflict { .. })
        ));
        // A file cannot become a directory.
        assert!(t.add_file("/etc/x/y", 0o644, vec![]).is_err());
        assert!(t.add_file("/a/../b", 0o644, vec![]).is_err());
    }
}
