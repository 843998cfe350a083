//! Comparing the outputs of two builds byte for byte, and saying where and
//! how they differ: the file, the first differing offset, and the bytes (or,
//! for text, the line) around it on each side.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// One of the two builds of a rebuild check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first build.
    A,
    /// The second build.
    B,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "a",
            Side::B => "b",
        })
    }
}

/// One way two output trees differ.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Difference {
    /// A path only one side has.
    OnlyIn {
        /// The side that has it.
        side: Side,
        /// Path relative to the tree.
        path: String,
    },
    /// A path that is a regular file on one side and a symlink on the other.
    Kind {
        /// Path relative to the tree.
        path: String,
    },
    /// A file both sides have, with other bytes.
    Content {
        /// Path relative to the tree.
        path: String,
        /// Size on side a.
        size_a: u64,
        /// Size on side b.
        size_b: u64,
        /// The first offset whose byte differs (the shorter size when one
        /// file is a prefix of the other).
        offset: u64,
        /// How many bytes differ, when the sizes are equal.
        differing_bytes: Option<u64>,
        /// What each side has there: the line for text, else a hex dump.
        context: String,
    },
}

impl Difference {
    /// The path it is about, relative to the compared trees.
    pub fn path(&self) -> &str {
        match self {
            Difference::OnlyIn { path, .. }
            | Difference::Kind { path }
            | Difference::Content { path, .. } => path,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::OnlyIn { side, path } => write!(f, "{path}: only in build {side}"),
            Difference::Kind { path } => {
                write!(
                    f,
                    "{path}: a regular file in one build, a symlink in the other"
                )
            }
            Difference::Content {
                path,
                size_a,
                size_b,
                offset,
                differing_bytes,
                context,
            } => {
                write!(f, "{path}: differs from byte {offset} (0x{offset:x}); ")?;
                match differing_bytes {
                    Some(n) => write!(f, "both {size_a} bytes, {n} of them differ")?,
                    None => write!(f, "{size_a} bytes in a, {size_b} in b")?,
                }
                write!(f, "\n{context}")
            }
        }
    }
}

/// The result of comparing two trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Files identical on both sides, relative paths in sorted order.
    pub identical: Vec<String>,
    /// Everything else, in path order.
    pub differences: Vec<Difference>,
}

impl Comparison {
    /// Both sides have exactly the same files with the same bytes.
    pub fn is_identical(&self) -> bool {
        self.differences.is_empty()
    }
}

/// What a tree holds at a relative path.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File(PathBuf),
    Symlink(PathBuf),
}

/// Compares every file under `a` with the file at the same path under `b`
/// (recursively; symlinks by their target). The trees must exist.
pub fn compare_dirs(a: &Path, b: &Path) -> Result<Comparison, BuildError> {
    let left = walk(a)?;
    let right = walk(b)?;
    let mut out = Comparison::default();
    let mut paths: Vec<&String> = left.keys().chain(right.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        match (left.get(path), right.get(path)) {
            (Some(Entry::File(x)), Some(Entry::File(y))) => {
                let x_bytes = fs::read(x).map_err(BuildError::read(x))?;
                let y_bytes = fs::read(y).map_err(BuildError::read(y))?;
                match compare_bytes(path, &x_bytes, &y_bytes) {
                    None => out.identical.push(path.clone()),
                    Some(d) => out.differences.push(d),
                }
            }
            (Some(Entry::Symlink(x)), Some(Entry::Symlink(y))) => {
                let (tx, ty) = (read_link(x)?, read_link(y)?);
                match compare_bytes(path, tx.as_bytes(), ty.as_bytes()) {
                    None => out.identical.push(path.clone()),
                    Some(d) => out.differences.push(d),
                }
            }
            (Some(_), Some(_)) => out
                .differences
                .push(Difference::Kind { path: path.clone() }),
            (Some(_), None) => out.differences.push(Difference::OnlyIn {
                side: Side::A,
                path: path.clone(),
            }),
            (None, _) => out.differences.push(Difference::OnlyIn {
                side: Side::B,
                path: path.clone(),
            }),
        }
    }
    Ok(out)
}

fn read_link(path: &Path) -> Result<String, BuildError> {
    fs::read_link(path)
        .map(|t| t.to_string_lossy().into_owned())
        .map_err(BuildError::read(path))
}

/// Every file and symlink under `root`, by path relative to it.
fn walk(root: &Path) -> Result<std::collections::BTreeMap<String, Entry>, BuildError> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(BuildError::read(&dir))? {
            let entry = entry.map_err(BuildError::read(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type().map_err(BuildError::read(entry.path()))?;
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else if kind.is_symlink() {
                out.insert(rel, Entry::Symlink(entry.path()));
            } else {
                out.insert(rel, Entry::File(entry.path()));
            }
        }
    }
    Ok(out)
}

/// The first offset at which `a` and `b` differ; the shorter length when one
/// is a prefix of the other; `None` when they are equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() == b.len() => None,
        None => Some(a.len().min(b.len())),
    }
}

/// `None` when equal, else the difference of the file `path` with bytes `a`
/// and `b`.
pub fn compare_bytes(path: &str, a: &[u8], b: &[u8]) -> Option<Difference> {
    let offset = first_difference(a, b)?;
    let differing_bytes =
        (a.len() == b.len()).then(|| a.iter().zip(b).filter(|(x, y)| x != y).count() as u64);
    Some(Difference::Content {
        path: path.to_owned(),
        size_a: a.len() as u64,
        size_b: b.len() as u64,
        offset: offset as u64,
        differing_bytes,
        context: context(a, b, offset),
    })
}

/// What each side has around `offset`: the differing line of a text file,
/// else a hex dump of the 16-byte rows before, at and after it.
fn context(a: &[u8], b: &[u8], offset: usize) -> String {
    if let (Some(x), Some(y)) = (as_text(a), as_text(b)) {
        let before = &x[..floor_char_boundary(x, offset)];
        let line = before.matches('\n').count();
        // The differing column, in characters, and a window around it.
        let column = before
            .rsplit('\n')
            .next()
            .unwrap_or_default()
            .chars()
            .count();
        let skip = column.saturating_sub(60);
        let show = |text: &str| match text.lines().nth(line) {
            Some(l) => {
                let shown: String = l.chars().skip(skip).take(140).collect();
                let more = l.chars().count() > skip + 140;
                format!(
                    "{}{shown}{}",
                    if skip > 0 { "…" } else { "" },
                    if more { "…" } else { "" }
                )
            }
            None => "<end of file>".to_owned(),
        };
        return format!(
            "  line {}, column {}:\n    a: {}\n    b: {}",
            line + 1,
            column + 1,
            show(x),
            show(y)
        );
    }
    let first = (offset / 16).saturating_sub(1) * 16;
    let mut out = String::new();
    for (side, bytes) in [(Side::A, a), (Side::B, b)] {
        out.push_str(&format!("  {side}:\n"));
        for row in (first..first + 48).step_by(16) {
            if row >= bytes.len() {
                break;
            }
            let marker = if (row..row + 16).contains(&offset) {
                '>'
            } else {
                ' '
            };
            out.push_str(&format!("  {marker} {}\n", hex_row(bytes, row)));
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// The bytes as text: UTF-8 without control characters but tab and newlines.
fn as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        .then_some(text)
}

/// The largest char boundary of `text` at or before `i`.
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `xxd`'s layout: offset, 16 bytes in hex, the printable ones as text.
fn hex_row(bytes: &[u8], row: usize) -> String {
    let chunk = &bytes[row..(row + 16).min(bytes.len())];
    let mut hex = String::new();
    for (i, b) in chunk.iter().enumerate() {
        if i > 0 && i % 2 == 0 {
            hex.push(' ');
        }
        hex.push_str(&format!("{b:02x}"));
    }
    let text: String = chunk
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{row:08x}: {hex:<39}  {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, data) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        dir
    }

    #[test]
    fn identical_trees_pass() {
        let files: &[(&str, &[u8])] = &[
            ("image/bzImage", b"\x00kernel\xff"),
            ("image/digest.txt", b"abc\n"),
            ("dstack-init", b"\x7fELF"),
        ];
        let (a, b) = (tree(files), tree(files));
        let result = compare_dirs(a.path(), b.path()).unwrap();
        assert!(result.is_identical());
        assert_eq!(
            result.identical,
            ["dstack-init", "image/bzImage", "image/digest.txt"]
        );
    }

    #[test]
    fn a_differing_byte_names_the_file_and_offset() {
        let mut data = vec![0u8; 100];
        let a = tree(&[("image/initramfs.cpio.lz4", &data), ("same", b"x")]);
        data[37] = 0x5a;
        let b = tree(&[("image/initramfs.cpio.lz4", &data), ("same", b"x")]);
        let result = compare_dirs(a.path(), b.path()).unwrap();
        assert_eq!(result.identical, ["same"]);
        let [diff] = result.differences.as_slice() else {
            panic!("{result:?}")
        };
        let Difference::Content {
            path,
            offset,
            differing_bytes,
            context,
            ..
        } = diff
        else {
            panic!("{diff:?}")
        };
        assert_eq!(path, "image/initramfs.cpio.lz4");
        assert_eq!(*offset, 37);
        assert_eq!(*differing_bytes, Some(1));
        // The row holding byte 37 (0x20..0x30) is marked on both sides, and
        // b's shows the new byte.
        assert!(
            context.contains("> 00000020: 0000 0000 005a 0000"),
            "{context}"
        );
        let text = diff.to_string();
        assert!(
            text.starts_with("image/initramfs.cpio.lz4: differs from byte 37 (0x25)"),
            "{text}"
        );
    }

    #[test]
    fn a_file_on_one_side_only_is_reported() {
        let a = tree(&[("image/bzImage", b"k"), ("image/extra", b"e")]);
        let b = tree(&[("image/bzImage", b"k"), ("libseccomp.a", b"l")]);
        let result = compare_dirs(a.path(), b.path()).unwrap();
        assert_eq!(
            result.differences,
            [
                Difference::OnlyIn {
                    side: Side::A,
                    path: "image/extra".into()
                },
                Difference::OnlyIn {
                    side: Side::B,
                    path: "libseccomp.a".into()
                },
            ]
        );
        assert_eq!(
            result.differences[0].to_string(),
            "image/extra: only in build a"
        );
    }

    #[test]
    fn text_shows_the_differing_line_and_a_prefix_its_end() {
        let diff = compare_bytes(
            "metadata.json",
            b"{\n  \"name\": \"x\",\n  \"rustc\": \"1.95.0\"\n}\n",
            b"{\n  \"name\": \"x\",\n  \"rustc\": \"1.96.0\"\n}\n",
        )
        .unwrap();
        let text = diff.to_string();
        assert!(text.contains("line 3, column 16:"), "{text}");
        assert!(text.contains("a:   \"rustc\": \"1.95.0\""), "{text}");
        assert!(text.contains("b:   \"rustc\": \"1.96.0\""), "{text}");

        // A long line is shown around the differing column.
        let long_a = format!("{}X{}", "a".repeat(500), "z".repeat(500));
        let long_b = format!("{}Y{}", "a".repeat(500), "z".repeat(500));
        let text = compare_bytes("j", long_a.as_bytes(), long_b.as_bytes())
            .unwrap()
            .to_string();
        assert!(text.contains("line 1, column 501:"), "{text}");
        assert!(text.contains(&format!("a: …{}X", "a".repeat(60))), "{text}");

        assert_eq!(first_difference(b"abc", b"abcdef"), Some(3));
        assert_eq!(first_difference(b"abc", b"abc"), None);
        let Some(Difference::Content {
            offset,
            differing_bytes,
            ..
        }) = compare_bytes("f", b"\x00\x01", b"\x00\x01\x02")
        else {
            panic!()
        };
        assert_eq!((offset, differing_bytes), (2, None));
    }

    #[test]
    fn a_file_against_a_directory_is_reported_on_both_sides() {
        let a = tree(&[("x", b"1")]);
        let b = tree(&[("x/y", b"1")]);
        let result = compare_dirs(a.path(), b.path()).unwrap();
        assert_eq!(
            result.differences,
            [
                Difference::OnlyIn {
                    side: Side::A,
                    path: "x".into()
                },
                Difference::OnlyIn {
                    side: Side::B,
                    path: "x/y".into()
                },
            ]
        );
    }
}
