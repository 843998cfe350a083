//! `events.json`: the last guest notifications, plus the boot phase and
//! error they imply, so a restarted supervisor knows where each guest is.

use std::collections::VecDeque;
use std::io;
use std::path::Path;

use dstack_proto::supervisor::VmEvent;
use serde::{Deserialize, Serialize};

use super::write_json_atomic;

/// How many events are kept (upstream's `event_buffer_size`).
pub const MAX_EVENTS: usize = 20;

/// What the guest has told us about its current boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStatus {
    /// The last `boot.progress` phase of the current boot ("" before the first).
    #[serde(default)]
    pub phase: String,
    /// The `boot.error` of the current boot, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The guest said "powering off": its exit is not a crash.
    #[serde(default)]
    pub powering_off: bool,
    /// The last `data-disk` report of the current boot (`formatted`,
    /// `opened`, `refused: <reason>`); "" before the guest reports.
    #[serde(default)]
    pub data_disk: String,
    /// The last [`MAX_EVENTS`] events, oldest first.
    #[serde(default)]
    pub events: VecDeque<VmEvent>,
}

impl GuestStatus {
    /// Reads `events.json`; a missing or unreadable file is an empty status
    /// (it is advisory: losing it loses history, not VMs).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        write_json_atomic(path, self)
    }

    /// Appends an event, dropping the oldest beyond [`MAX_EVENTS`].
    pub fn push(&mut self, event: VmEvent) {
        self.events.push_back(event);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Forgets the previous boot's phase, error and data-disk report
    /// (events stay as history).
    pub fn new_boot(&mut self) {
        self.phase.clear();
        self.error = None;
        self.powering_off = false;
        self.data_disk.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> VmEvent {
        VmEvent {
            ts_ms: n,
            event: "boot.progress".into(),
            payload: n.to_string(),
        }
    }

    #[test]
    fn keeps_the_last_twenty_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        let mut status = GuestStatus::load(&path);
        assert_eq!(status, GuestStatus::default());
        for n in 0..25 {
            status.push(event(n));
        }
        status.phase = "running".into();
        status.data_disk = "opened".into();
        assert_eq!(status.events.len(), MAX_EVENTS);
        assert_eq!(status.events[0].ts_ms, 5);
        status.save(&path).unwrap();
        assert_eq!(GuestStatus::load(&path), status);
        status.new_boot();
        assert_eq!(status.phase, "");
        assert_eq!(status.data_disk, "");
        assert_eq!(status.events.len(), MAX_EVENTS);
    }
}
