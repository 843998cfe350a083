//! vsock CID allocation, persisted in `<state>/cids.json`.
//!
//! With the vhost-user backend every VM has its own vsock "bus", so CIDs
//! could repeat; with `/dev/vhost-vsock` they are host-wide and must not.
//! Allocating them uniquely and keeping the allocation across restarts works
//! for both, and a VM keeps its CID for life.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::write_json_atomic;

/// The lowest CID a guest may have (0–2 are the hypervisor, local and host).
pub const FIRST_CID: u32 = 3;
/// `VMADDR_CID_ANY`, never a guest's.
const CID_ANY: u32 = u32::MAX;

#[derive(Debug, Default, Serialize, Deserialize)]
struct CidFile {
    /// VM id → CID.
    allocated: BTreeMap<String, u32>,
}

/// Hands out CIDs from 3 up and remembers them in a file.
#[derive(Debug)]
pub struct CidAllocator {
    path: PathBuf,
    file: CidFile,
}

impl CidAllocator {
    /// Loads the allocation (a missing file is an empty allocation).
    pub fn load(path: &Path) -> io::Result<Self> {
        let file = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => CidFile::default(),
            Err(e) => return Err(e),
        };
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The CID of VM `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.file.allocated.get(id).copied()
    }

    /// Gives VM `id` the lowest free CID and persists it. `None` when none is free.
    pub fn allocate(&mut self, id: &str) -> io::Result<Option<u32>> {
        if let Some(cid) = self.get(id) {
            return Ok(Some(cid));
        }
        let mut used: Vec<u32> = self.file.allocated.values().copied().collect();
        used.sort_unstable();
        let mut candidate = FIRST_CID;
        for cid in used {
            if cid == candidate {
                candidate += 1;
            } else if cid > candidate {
                break;
            }
        }
        if candidate == CID_ANY {
            return Ok(None);
        }
        self.file.allocated.insert(id.to_owned(), candidate);
        self.persist_or_undo(id)?;
        Ok(Some(candidate))
    }

    /// Frees VM `id`'s CID and persists that.
    pub fn release(&mut self, id: &str) -> io::Result<()> {
        if let Some(cid) = self.file.allocated.remove(id)
            && let Err(e) = write_json_atomic(&self.path, &self.file)
        {
            self.file.allocated.insert(id.to_owned(), cid);
            return Err(e);
        }
        Ok(())
    }

    /// Makes the file agree with the VMs that exist: records each VM's CID
    /// from its manifest and drops entries of VMs that are gone (a deploy
    /// interrupted by a crash can leave one).
    pub fn reconcile(&mut self, vms: &BTreeMap<String, u32>) -> io::Result<()> {
        if self.file.allocated != *vms {
            self.file.allocated = vms.clone();
            write_json_atomic(&self.path, &self.file)?;
        }
        Ok(())
    }

    fn persist_or_undo(&mut self, id: &str) -> io::Result<()> {
        write_json_atomic(&self.path, &self.file).inspect_err(|_| {
            self.file.allocated.remove(id);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cids.json");
        let mut cids = CidAllocator::load(&path).unwrap();
        assert_eq!(cids.allocate("a").unwrap(), Some(3));
        assert_eq!(cids.allocate("b").unwrap(), Some(4));
        assert_eq!(cids.allocate("c").unwrap(), Some(5));
        assert_eq!(cids.allocate("a").unwrap(), Some(3), "idempotent");
        cids.release("b").unwrap();

        let mut reloaded = CidAllocator::load(&path).unwrap();
        assert_eq!(reloaded.get("a"), Some(3));
        assert_eq!(reloaded.get("b"), None);
        assert_eq!(
            reloaded.allocate("d").unwrap(),
            Some(4),
            "reuses the freed CID"
        );
        assert_eq!(reloaded.allocate("e").unwrap(), Some(6));
    }

    #[test]
    fn reconcile_follows_the_vms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cids.json");
        let mut cids = CidAllocator::load(&path).unwrap();
        cids.allocate("gone").unwrap();
        let vms = BTreeMap::from([("kept".to_string(), 7)]);
        cids.reconcile(&vms).unwrap();
        let mut reloaded = CidAllocator::load(&path).unwrap();
        assert_eq!(reloaded.get("gone"), None);
        assert_eq!(reloaded.get("kept"), Some(7));
        assert_eq!(reloaded.allocate("new").unwrap(), Some(3));
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cids.json");
        std::fs::write(&path, b"[").unwrap();
        assert!(CidAllocator::load(&path).is_err());
    }
}
