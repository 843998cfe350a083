//! A log file that rotates itself by size, like upstream's `[cvm.log]`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// How many rotated files are kept (`.1` newest to `.3` oldest).
pub const KEEP_ROTATED: usize = 3;

/// An append-only log that moves itself to `.1` (and older ones up) once it
/// would grow past `max_bytes`.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    /// Opened on first write, so merely knowing of a log creates no file.
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// A log at `path` (appending to what is there).
    pub fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            path,
            max_bytes,
            file: None,
            size: 0,
        }
    }

    /// Appends `bytes`, rotating first if they would not fit. A single
    /// write larger than the limit is kept whole rather than split.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(open_append(&self.path)?),
        };
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let paths = rotated_paths(&self.path);
        // paths is oldest first: [.3, .2, .1, current]; shift each one up.
        for pair in paths.windows(2) {
            match fs::rename(&pair[1], &pair[0]) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A log and its rotated files, oldest first: `.3`, `.2`, `.1`, the log.
pub fn rotated_paths(path: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = (1..=KEEP_ROTATED)
        .rev()
        .map(|n| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        })
        .collect();
    paths.push(path.to_owned());
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut log = RotatingLog::new(path.clone(), 10);
        for chunk in [
            "aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n", "ffff\n", "gggg\n", "hhhh\n",
            "iiii\n",
        ] {
            log.append(chunk.as_bytes()).unwrap();
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let paths = rotated_paths(&path);
        assert_eq!(read(&paths[3]), "iiii\n");
        assert_eq!(read(&paths[2]), "gggg\nhhhh\n");
        assert_eq!(read(&paths[1]), "eeee\nffff\n");
        assert_eq!(read(&paths[0]), "cccc\ndddd\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            4,
            "aaaa/bbbb dropped"
        );
    }

    #[test]
    fn reopening_continues_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        RotatingLog::new(path.clone(), 10)
            .append(b"12345678\n")
            .unwrap();
        let mut log = RotatingLog::new(path.clone(), 10);
        log.append(b"abc\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "abc\n");
        assert_eq!(
            fs::read_to_string(rotated_paths(&path)[2].clone()).unwrap(),
            "12345678\n"
        );
        let big = vec![b'x'; 25];
        log.append(&big).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            25,
            "oversized write kept whole"
        );
    }
}
