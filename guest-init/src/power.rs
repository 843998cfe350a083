//! What asks the guest to shut down: SIGTERM, ctrl-alt-del (SIGINT once
//! [`crate::sys::RebootCmd::CadOff`] is set) and the ACPI power button (QEMU
//! `system_powerdown`), which the `button` driver reports as an input
//! device named "Power Button" that `evdev` exposes as `/dev/input/eventN`.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};

use crate::state::{ShutdownReason, ShutdownSignal};

/// `EV_KEY`.
const EV_KEY: u16 = 1;
/// `KEY_POWER`.
const KEY_POWER: u16 = 116;
/// `sizeof(struct input_event)` on 64-bit: a 16-byte timeval, then
/// u16 type, u16 code, i32 value.
pub const INPUT_EVENT_SIZE: usize = 24;

/// Whether one `struct input_event` is a power-button press.
pub fn is_power_press(event: &[u8; INPUT_EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The event devices (`/dev/input/eventN` names) whose input device is
/// called "Power Button", found under `class_input` (`/sys/class/input`).
pub fn find_power_buttons(class_input: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(class_input) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("event"))
        .filter(|name| {
            let path = class_input.join(name).join("device/name");
            fs::read_to_string(path).is_ok_and(|n| n.trim() == "Power Button")
        })
        .collect();
    found.sort();
    found
}

/// Watches every power button under `class_input` (`/sys/class/input`),
/// each on its own thread (reading an evdev node blocks); returns the
/// devices watched.
pub fn watch_power_buttons(class_input: &Path, shutdown: &ShutdownSignal) -> Vec<PathBuf> {
    let mut watched = Vec::new();
    for name in find_power_buttons(class_input) {
        let path = Path::new("/dev/input").join(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot open power button {}: {e}", path.display());
                continue;
            }
        };
        let shutdown = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("power-{name}"))
            .spawn(move || watch_device(file, &shutdown));
        match spawned {
            Ok(_) => watched.push(path),
            Err(e) => tracing::warn!("cannot start power button watcher: {e}"),
        }
    }
    watched
}

fn watch_device(mut file: File, shutdown: &ShutdownSignal) {
    let mut event = [0u8; INPUT_EVENT_SIZE];
    while file.read_exact(&mut event).is_ok() {
        if is_power_press(&event) {
            tracing::info!("power button pressed");
            shutdown.request(ShutdownReason::PowerButton);
        }
    }
}

/// Turns SIGTERM and SIGINT into shutdown requests, in a task.
pub fn watch_signals(shutdown: &ShutdownSignal) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let reason = tokio::select! {
                _ = term.recv() => ShutdownReason::Sigterm,
                _ = int.recv() => ShutdownReason::CtrlAltDel,
            };
            tracing::info!("{reason}: shutting down");
            shutdown.request(reason);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut e = [0u8; INPUT_EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "EV_SYN");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "KEY_A");
    }

    #[test]
    fn finds_event_nodes_of_power_buttons() {
        let dir = tempfile::tempdir().unwrap();
        for (event, name) in [
            ("event0", "Power Button\n"),
            ("event1", "AT Translated Set 2 keyboard\n"),
            ("event2", "Power Button\n"),
        ] {
            let device = dir.path().join(event).join("device");
            fs::create_dir_all(&device).unwrap();
            fs::write(device.join("name"), name).unwrap();
        }
        fs::create_dir_all(dir.path().join("input0")).unwrap();
        assert_eq!(find_power_buttons(dir.path()), ["event0", "event2"]);
        assert!(find_power_buttons(&dir.path().join("missing")).is_empty());
    }
}
