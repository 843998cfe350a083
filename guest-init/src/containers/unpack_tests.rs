use std::fs;
use std::path::Path;

use tar::{EntryType, Header};

use super::*;

/// Builds a tar in memory; names are written raw so tests can express paths
/// that `tar::Builder` itself would refuse (`..`).
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn entry(mut self, kind: EntryType, name: &str, link: Option<&str>, data: &[u8]) -> Self {
        let mut header = Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        if let Some(link) = link {
            header.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn file(self, name: &str, data: &str) -> Self {
        self.entry(EntryType::Regular, name, None, data.as_bytes())
    }

    fn dir(self, name: &str) -> Self {
        self.entry(EntryType::Directory, name, None, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(EntryType::Symlink, name, Some(target), b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(EntryType::Link, name, Some(target), b"")
    }

    fn apply(self, root: &Path) -> Result<LayerStats, UnpackError> {
        let bytes = self.0.into_inner().unwrap();
        apply_layer(root, bytes.as_slice())
    }
}

fn read(root: &Path, rel: &str) -> Option<String> {
    fs::read_to_string(root.join(rel)).ok()
}

#[test]
fn applies_files_dirs_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let stats = Layer::new()
        .dir("./etc/")
        .file("./etc/hostname", "box")
        .file("bin/busybox", "elf")
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ash", "bin/busybox")
        .entry(EntryType::Char, "dev/null", None, b"")
        .apply(root)
        .unwrap();
    assert_eq!(stats.written, 5);
    assert_eq!(stats.skipped, 1);
    assert_eq!(read(root, "etc/hostname").as_deref(), Some("box"));
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(read(root, "bin/ash").as_deref(), Some("elf"));
    assert!(!root.join("dev/null").exists());
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    Layer::new()
        .file("a/gone", "1")
        .file("a/kept", "1")
        .file("opq/lower", "1")
        .dir("opq/sub/")
        .file("opq/sub/lower", "1")
        .apply(root)
        .unwrap();
    let stats = Layer::new()
        .file("a/.wh.gone", "")
        .file("opq/new", "2")
        .dir("opq/sub/")
        .file("opq/sub/new", "2")
        .file("opq/.wh..wh..opq", "")
        .apply(root)
        .unwrap();
    assert_eq!(stats.whiteouts, 2);
    assert!(!root.join("a/gone").exists());
    assert!(!root.join("a/.wh.gone").exists());
    assert!(root.join("a/kept").exists());
    assert!(!root.join("opq/lower").exists());
    assert!(!root.join("opq/sub/lower").exists());
    assert_eq!(read(root, "opq/new").as_deref(), Some("2"));
    assert_eq!(read(root, "opq/sub/new").as_deref(), Some("2"));
    assert!(!root.join("opq/.wh..wh..opq").exists());
}

#[test]
fn refuses_parent_components() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let err = Layer::new().file("../evil", "x").apply(&root).unwrap_err();
    assert!(matches!(err, UnpackError::Escape { .. }), "{err:?}");
    assert!(!tmp.path().join("evil").exists());
    let err = Layer::new()
        .hardlink("passwd", "../../etc/passwd")
        .apply(&root)
        .unwrap_err();
    assert!(matches!(err, UnpackError::Escape { .. }), "{err:?}");
}

#[test]
fn symlinks_are_followed_inside_the_root_only() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let outside_abs = outside.to_str().unwrap().to_string();
    Layer::new()
        .symlink("abs", &outside_abs)
        .symlink("rel", "../../../..")
        .symlink("slash", "/")
        .symlink("loop", "loop")
        .apply(&root)
        .unwrap();
    Layer::new()
        .file("abs/a", "1")
        .file("rel/b", "2")
        .file("slash/c", "3")
        .apply(&root)
        .unwrap();
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
    // The absolute link lands at the same path under the root.
    let inside = root.join(outside.strip_prefix("/").unwrap()).join("a");
    assert_eq!(fs::read_to_string(inside).unwrap(), "1");
    assert_eq!(read(&root, "b").as_deref(), Some("2"));
    assert_eq!(read(&root, "c").as_deref(), Some("3"));
    let err = Layer::new().file("loop/x", "").apply(&root).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkLoop { .. }), "{err:?}");
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("victim");
    fs::write(&target, "safe").unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    Layer::new()
        .symlink("f", target.to_str().unwrap())
        .apply(&root)
        .unwrap();
    Layer::new().file("f", "evil").apply(&root).unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "safe");
    assert_eq!(read(&root, "f").as_deref(), Some("evil"));
}

#[test]
fn unpacks_gzip_layers_once_and_refuses_zstd() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = Layer::new().file("hello", "world").0.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    let blob = tmp.path().join("layer.tar.gz");
    fs::write(&blob, gz.finish().unwrap()).unwrap();
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let mut calls = 0;
    let done = unpack_image(&rootfs, "abc", std::slice::from_ref(&blob), |_, _| {
        calls += 1
    })
    .unwrap();
    assert_eq!(read(&done, "hello").as_deref(), Some("world"));
    assert!(!rootfs.join(".tmp-abc").exists());
    // A second call finds the finished root and applies nothing.
    unpack_image(&rootfs, "abc", &[blob], |_, _| calls += 1).unwrap();
    assert_eq!(calls, 1);

    let zstd = tmp.path().join("layer.zst");
    fs::write(&zstd, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
    let (layer, err) = unpack_image(&rootfs, "def", &[zstd], |_, _| {}).unwrap_err();
    assert_eq!(layer, 0);
    assert!(matches!(err, UnpackError::Compression("zstd")));
    assert!(!rootfs.join("def").exists());
}
