//! `/run/dstack/gateway-cache.json`: the registration this boot made.
//!
//! Upstream keeps its WireGuard and TLS private keys in this file so that
//! a later `dstack-util gateway-refresh` (another process) can register
//! again without minting new ones. Here no private key is written: the
//! re-registrations are PID1's own task (`keeper.rs`), which keeps the
//! WireGuard key and the client certificate in memory, wiped when dropped;
//! the gateway needs only the public key, which this file keeps; and the
//! kernel keeps the private key (a peer update leaves it in place). So a
//! leaked cache gives away nothing but what the gateways already know. The
//! cache is rewritten, atomically, after every successful registration.

use std::io;
use std::path::Path;

use dstack_proto::gateway::RegisterCvmResponse;
use serde::{Deserialize, Serialize};

/// The cache file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayCache {
    /// The tunnel's WireGuard public key, base64.
    pub wg_public_key: String,
    /// The gateway URL that registered it.
    pub gateway_url: String,
    /// When, in Unix seconds.
    pub registered_at: u64,
    /// The gateway's answer.
    pub response: RegisterCvmResponse,
}

impl GatewayCache {
    /// Writes the cache to `path` atomically, readable by root only (it
    /// names the gateways and the tunnel address).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        dstack_fsutil::write_atomic(path, &text, 0o600)
    }

    /// The cache at `path`, if there is a readable one.
    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/dstack/gateway-cache.json");
        let mut cache = GatewayCache {
            wg_public_key: "cHVibGlj".into(),
            gateway_url: "https://gw.example:9012".into(),
            registered_at: 1_700_000_000,
            response: RegisterCvmResponse::default(),
        };
        cache.response.wg.client_ip = "10.8.0.2".into();
        cache.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(GatewayCache::load(&path), Some(cache.clone()));
        // Replaced whole.
        cache.registered_at += 1;
        cache.save(&path).unwrap();
        assert_eq!(GatewayCache::load(&path), Some(cache));
        assert_eq!(GatewayCache::load(&dir.path().join("none")), None);
    }
}
