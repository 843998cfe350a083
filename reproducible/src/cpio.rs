//! The "newc" cpio format the kernel unpacks as its initramfs, written so
//! that the bytes depend only on the tree: entries in path order, inode
//! numbers counted from 1 in that order, owner 0:0, every mtime 0.
//!
//! Format (see the kernel's Documentation/driver-api/early-userspace/
//! buffer-format.rst): per entry a 110-byte ASCII header (`070701` and 13
//! eight-digit hex fields), the NUL-terminated name, padding to 4 bytes, the
//! data, padding to 4 bytes; the archive ends with an entry named
//! `TRAILER!!!`.

use std::io::{self, Write};

use crate::tree::{Node, Tree};

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Writes `tree` as a newc archive; returns the number of bytes written.
pub(crate) fn write_newc(tree: &Tree, out: &mut impl Write) -> io::Result<u64> {
    let mut w = Counter { out, written: 0 };
    let mut ino: u32 = 0;
    for (path, node) in tree.iter() {
        ino += 1;
        let (mode, nlink, data): (u32, u32, &[u8]) = match node {
            // nlink 2 for directories as a real filesystem would; the kernel
            // only looks at nlink of regular files (hard-link detection),
            // where it must be 1.
            Node::Dir { mode } => (S_IFDIR | mode, 2, &[]),
            Node::File { mode, data } => (S_IFREG | mode, 1, data),
            Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes()),
        };
        write_entry(&mut w, ino, mode, nlink, path, data)?;
    }
    write_entry(&mut w, 0, 0, 1, TRAILER, &[])?;
    Ok(w.written)
}

fn write_entry(
    w: &mut Counter<'_, impl Write>,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let too_big = |what| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} of {name} exceeds 4 GiB"),
        )
    };
    let filesize = u32::try_from(data.len()).map_err(|_| too_big("size"))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big("name"))?;
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor
    // rdevmajor rdevminor namesize check.
    let fields = [ino, mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0];
    w.write_all(MAGIC)?;
    for f in fields {
        write!(w, "{f:08X}")?;
    }
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.pad4()?;
    w.write_all(data)?;
    w.pad4()
}

/// Counts bytes so padding can be computed from the archive offset.
struct Counter<'a, W: Write> {
    out: &'a mut W,
    written: u64,
}

impl<W: Write> Counter<'_, W> {
    fn pad4(&mut self) -> io::Result<()> {
        let pad: &[u8] = match self.written % 4 {
            1 => &[0; 3],
            2 => &[0; 2],
            3 => &[0; 1],
            _ => &[],
        };
        self.write_all(pad)
    }
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed entry: (name, mode, nlink, ino, data).
    pub(crate) type Entry = (String, u32, u32, u32, Vec<u8>);

    /// A strict newc reader for tests: checks magic, owner, mtime and
    /// alignment, and that the archive ends right after the trailer.
    pub(crate) fn read_newc(bytes: &[u8]) -> Vec<Entry> {
        let mut pos = 0usize;
        let mut entries = Vec::new();
        loop {
            let header = &bytes[pos..pos + 110];
            assert_eq!(&header[..6], MAGIC, "bad magic at {pos}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (ino, mode, uid, gid, nlink, mtime) =
                (field(0), field(1), field(2), field(3), field(4), field(5));
            let filesize = field(6) as usize;
            let namesize = field(11) as usize;
            assert_eq!((uid, gid, mtime, field(12)), (0, 0, 0, 0));
            let name_start = pos + 110;
            let name = &bytes[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0), "name not NUL-terminated");
            let name = String::from_utf8(name[..namesize - 1].to_vec()).unwrap();
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + filesize].to_vec();
            pos = (data_start + filesize).next_multiple_of(4);
            if name == TRAILER {
                assert_eq!(pos, bytes.len(), "bytes after the trailer");
                return entries;
            }
            entries.push((name, mode, nlink, ino, data));
        }
    }

    fn sample_tree() -> Tree {
        let mut t = Tree::new();
        t.add_file("/init", 0o755, b"#!static\x7fELF".to_vec())
            .unwrap();
        t.add_file("/lib/modules/6.12/kernel/a.ko", 0o644, vec![0xAB; 1001])
            .unwrap();
        t.add_file("/etc/empty", 0o644, vec![]).unwrap();
        t.add_symlink("/bin/sh", "busybox").unwrap();
        t.add_dir("/proc", 0o555).unwrap();
        t
    }

    fn archive(tree: &Tree) -> Vec<u8> {
        let mut out = Vec::new();
        let n = write_newc(tree, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn same_tree_gives_identical_bytes() {
        // Built twice, in different insertion orders.
        let a = archive(&sample_tree());
        let mut t = Tree::new();
        t.add_dir("/proc", 0o555).unwrap();
        t.add_symlink("/bin/sh", "busybox").unwrap();
        t.add_file("/etc/empty", 0o644, vec![]).unwrap();
        t.add_file("/lib/modules/6.12/kernel/a.ko", 0o644, vec![0xAB; 1001])
            .unwrap();
        t.add_file("/init", 0o755, b"#!static\x7fELF".to_vec())
            .unwrap();
        assert_eq!(a, archive(&t));
    }

    #[test]
    fn round_trip_keeps_names_modes_and_content() {
        let entries = read_newc(&archive(&sample_tree()));
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/empty",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.12",
                "lib/modules/6.12/kernel",
                "lib/modules/6.12/kernel/a.ko",
                "proc"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(get("init").1, 0o100_755);
        assert_eq!(get("init").4, b"#!static\x7fELF");
        assert_eq!(get("init").2, 1);
        assert_eq!(get("lib/modules/6.12/kernel/a.ko").4, vec![0xAB; 1001]);
        assert_eq!(get("etc/empty").4, b"");
        assert_eq!(get("bin/sh").1, 0o120_777);
        assert_eq!(get("bin/sh").4, b"busybox");
        assert_eq!(get("proc").1, 0o040_555);
        assert_eq!(get("proc").2, 2);
        // Inode numbers are sequential in archive order.
        let inos: Vec<u32> = entries.iter().map(|e| e.3).collect();
        assert_eq!(inos, (1..=11).collect::<Vec<u32>>());
    }

    #[test]
    fn empty_tree_is_just_the_trailer() {
        let bytes = archive(&Tree::new());
        assert_eq!(bytes.len(), 124); // 110 + "TRAILER!!!\0" (11) padded to 124
        assert!(read_newc(&bytes).is_empty());
    }

    #[test]
    fn system_cpio_reads_our_archive() {
        // GNU cpio, where installed, is an independent reader of the format.
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&archive(&sample_tree()))
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(listing.lines().count(), 11);
        assert!(listing.lines().any(|l| l == "lib/modules/6.12/kernel/a.ko"));
    }
}
