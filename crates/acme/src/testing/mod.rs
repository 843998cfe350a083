//! Real `named` (bind9) and `pebble` processes for tests of this crate and the
//! gateway's end-to-end tests. Not for production use: panics on failure,
//! with the process's log in the message.

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

mod bind9;
mod pebble;

pub use bind9::Bind9;
pub use pebble::Pebble;

/// How long a process may take to start serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A loopback port free for both TCP and UDP at the time of the call.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding a loopback TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether both `/usr/sbin/named` and `/usr/bin/pebble` are installed.
pub fn tools_available() -> bool {
    Path::new(bind9::NAMED).exists() && Path::new(pebble::PEBBLE).exists()
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| format!("(no log at {}: {err})", path.display()))
}

/// Panics with the log if the process has exited.
fn check_alive(child: &mut Child, what: &str, log: &Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("{what} exited with {status}; log:\n{}", read_log(log));
    }
}

fn stop(child: &mut Child) {
    // Killing an already exited child fails harmlessly.
    let _ = child.kill();
    let _ = child.wait();
}
