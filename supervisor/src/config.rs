//! The supervisor's settings, resolved from the command line and the host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dstack_proto::host::RegistryAlias;

use crate::accel::Accel;
use crate::vsock::VsockDevice;

/// Everything the supervisor runs with, after defaults and probing.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of all state: `images/`, `vms/`, `cids.json`, the API socket.
    pub state_dir: PathBuf,
    /// The accelerator every VM runs with.
    pub accel: Accel,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// How guests get vsock.
    pub vsock: VsockDevice,
    /// Registry rewrites handed to guests; their targets are plain-HTTP registries.
    pub registry_aliases: Vec<RegistryAlias>,
    /// The registry guests pull the container engine image from (by the
    /// digest their OS image pins).
    pub engine_registry: String,
    /// How long each step of a graceful stop may take.
    pub stop_timeouts: StopTimeouts,
    /// Serial and app logs rotate at this size.
    pub log_max_bytes: u64,
    /// Upstream's SGX local key provider (`host:port`) behind GetSealingKey;
    /// `None`: the supervisor plays it on sim hosts, and TDX hosts have none.
    pub local_key_provider: Option<String>,
    /// The PCCS URL handed to guests (`SysConfig.pccs_url`); empty: none.
    /// On sim hosts, the sim PCCS as guests reach it through user-net.
    pub guest_pccs_url: String,
    /// KMS URLs handed to guests whose deploy names none.
    pub kms_urls: Vec<String>,
    /// Gateway URLs handed to guests whose deploy names none.
    pub gateway_urls: Vec<String>,
    /// The ACPI tables QEMU builds per VM shape, probed once (sim TEE):
    /// `<state-dir>/acpi-cache` unless set.
    pub acpi_cache: PathBuf,
}

impl Config {
    /// Where OS images live.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Where per-VM directories live.
    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    /// The persisted CID allocation.
    pub fn cids_file(&self) -> PathBuf {
        self.state_dir.join("cids.json")
    }

    /// Blobs uploaded for a deploy that has not used them yet.
    pub fn uploads_dir(&self) -> PathBuf {
        self.state_dir.join("uploads")
    }
}

/// The three waits of a graceful stop (guest, then ACPI, then SIGKILL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopTimeouts {
    /// After asking the guest to shut down.
    pub guest: Duration,
    /// After QMP `system_powerdown`.
    pub acpi: Duration,
    /// After SIGKILL (only a stuck kernel makes this matter).
    pub kill: Duration,
}

impl Default for StopTimeouts {
    fn default() -> Self {
        Self {
            guest: Duration::from_secs(30),
            acpi: Duration::from_secs(15),
            kill: Duration::from_secs(5),
        }
    }
}

/// Serial and app logs rotate at 4 MiB, keeping three old files (upstream's numbers).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 << 20;

/// The state directory when `--state-dir` is not given: `$DSTACK_STATE_DIR`,
/// else `/var/lib/dstack` for root, else `$HOME/.local/share/dstack`.
pub fn default_state_dir(
    env_state_dir: Option<OsString>,
    is_root: bool,
    home: Option<OsString>,
) -> Option<PathBuf> {
    if let Some(dir) = env_state_dir.filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if is_root {
        return Some(PathBuf::from("/var/lib/dstack"));
    }
    home.filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/share/dstack"))
}

/// The API socket when `--socket` is not given.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("supervisor.sock")
}

/// The address a guest on QEMU user networking (the only networking the
/// supervisor gives VMs) reaches the host's loopback at: the user-net
/// gateway. Host services guests use are written with it (registry
/// aliases' targets, the sim PCCS URL, KMS URLs such as
/// `https://10.0.2.2:8000`).
pub const GUEST_HOST_ALIAS: &str = "10.0.2.2";

/// The host's side of [`GUEST_HOST_ALIAS`].
pub const HOST_LOOPBACK: &str = "127.0.0.1";

/// The registry aliases used unless the operator gives `--registry-alias`:
/// the host's loopback registry, as the guest reaches it through user-net.
pub fn default_registry_aliases() -> Vec<RegistryAlias> {
    ["127.0.0.1:5000", "localhost:5000"]
        .into_iter()
        .map(|from| RegistryAlias {
            from: from.into(),
            to: format!("{GUEST_HOST_ALIAS}:5000"),
        })
        .collect()
}

/// A URL written as guests reach it, as the supervisor reaches the same
/// service: a host of [`GUEST_HOST_ALIAS`] (the user-net gateway, which is
/// the host's loopback) becomes [`HOST_LOOPBACK`]; any other URL is
/// returned unchanged (the host reaches it as guests do). The inverse of
/// the registry aliases' direction, kept in this one place.
pub fn host_side_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host);
    if host != GUEST_HOST_ALIAS {
        return url.to_owned();
    }
    let port = &authority[host.len()..];
    format!("{scheme}://{HOST_LOOPBACK}{port}{path}")
}

/// Parses `FROM=TO` (both `host[:port]`).
pub fn parse_registry_alias(text: &str) -> Result<RegistryAlias, String> {
    let (from, to) = text
        .split_once('=')
        .ok_or_else(|| format!("registry alias {text:?} is not FROM=TO"))?;
    for part in [from, to] {
        if part.is_empty() || part.contains(['/', ' ', '=']) {
            return Err(format!(
                "registry alias {text:?}: {part:?} is not a host[:port]"
            ));
        }
    }
    Ok(RegistryAlias {
        from: from.into(),
        to: to.into(),
    })
}

/// Registries guests may reach over plain HTTP: the aliases' targets, once each.
pub fn insecure_registries(aliases: &[RegistryAlias]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for alias in aliases {
        if !out.contains(&alias.to) {
            out.push(alias.to.clone());
        }
    }
    out
}

/// Checks a `--pccs-url`: guests fetch from it with plain HTTP, or HTTPS where they can.
pub fn check_pccs_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("PCCS URL {url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(format!("PCCS URL {url:?} has no host"));
    }
    Ok(())
}

/// Longest state-dir path whose deepest socket (`vms/<id>/vsock_10000`)
/// still fits in `sockaddr_un.sun_path` (108 bytes with the NUL).
pub const MAX_STATE_DIR_LEN: usize = 107 - "/vms/01234567/vsock_10000".len();

/// Checks a state directory can hold our sockets and be passed to QEMU and
/// vhost-device-vsock (whose option parsers split on `,` with no escaping).
pub fn check_state_dir(dir: &Path) -> Result<(), String> {
    let text = dir
        .to_str()
        .ok_or_else(|| format!("state dir {} is not UTF-8", dir.display()))?;
    if text.contains(',') {
        return Err(format!("state dir {text:?} must not contain ','"));
    }
    if text.len() > MAX_STATE_DIR_LEN {
        return Err(format!(
            "state dir {text:?} is longer than {MAX_STATE_DIR_LEN} bytes; VM sockets would not fit in a unix socket address"
        ));
    }
    Ok(())
}

/// A KMS URL as guests use it: `https://HOST:PORT` (a trailing `/prpc` allowed).
pub fn parse_kms_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("KMS URL {url:?} must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix("/prpc").unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !rest.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(url.to_owned())
        }
        _ => Err(format!("KMS URL {url:?} is not https://HOST:PORT")),
    }
}

/// A gateway URL as guests use it: `https://HOST:PORT`, optionally with a
/// path (the guest appends `/prpc` unless the path already ends with it).
/// The port is required, as for KMS URLs, so the operator states where the
/// gateway listens rather than relying on the guest's default of 443.
pub fn parse_gateway_url(url: &str) -> Result<String, String> {
    let bad = || format!("gateway URL {url:?} is not https://HOST:PORT[/PATH]");
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("gateway URL {url:?} must start with https://"))?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    // Userinfo, queries and fragments have no meaning to the guest's RPC
    // client; whitespace would not survive its request line.
    if rest.contains(['@', '?', '#']) || rest.contains(char::is_whitespace) {
        return Err(bad());
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(url.to_owned()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_precedence() {
        let home = Some(OsString::from("/home/u"));
        assert_eq!(
            default_state_dir(Some("/x".into()), true, home.clone()),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(
            default_state_dir(None, true, home.clone()),
            Some(PathBuf::from("/var/lib/dstack"))
        );
        assert_eq!(
            default_state_dir(Some("".into()), false, home),
            Some(PathBuf::from("/home/u/.local/share/dstack"))
        );
        assert_eq!(default_state_dir(None, false, None), None);
    }

    #[test]
    fn guest_host_alias_maps_to_loopback_only() {
        assert_eq!(
            host_side_url("https://10.0.2.2:8000"),
            "https://127.0.0.1:8000"
        );
        assert_eq!(
            host_side_url("https://10.0.2.2:8000/prpc"),
            "https://127.0.0.1:8000/prpc"
        );
        assert_eq!(host_side_url("http://10.0.2.2"), "http://127.0.0.1");
        for unchanged in [
            "https://kms.example:443",
            "https://10.0.2.22:8000",
            "https://110.0.2.2:8000",
            "https://10.0.2.3:8000",
            "https://kms:8000/10.0.2.2",
            "10.0.2.2:8000",
        ] {
            assert_eq!(host_side_url(unchanged), unchanged);
        }
        // The same alias the guests' defaults use.
        assert!(
            default_registry_aliases()[0]
                .to
                .starts_with(GUEST_HOST_ALIAS)
        );
        assert!(crate::sim_pccs::guest_url(8083).contains(GUEST_HOST_ALIAS));
    }

    #[test]
    fn registry_aliases() {
        let alias = parse_registry_alias("reg:5000=10.0.2.2:5001").unwrap();
        assert_eq!(
            (alias.from.as_str(), alias.to.as_str()),
            ("reg:5000", "10.0.2.2:5001")
        );
        assert!(parse_registry_alias("nothing").is_err());
        assert!(parse_registry_alias("=x").is_err());
        assert!(parse_registry_alias("a=http://b").is_err());
        assert_eq!(
            insecure_registries(&default_registry_aliases()),
            vec!["10.0.2.2:5000".to_string()]
        );
    }

    #[test]
    fn gateway_urls() {
        for good in [
            "https://10.0.2.2:9012",
            "https://gateway.example:443/prpc",
            "https://gw:8000/some/base/",
        ] {
            assert_eq!(parse_gateway_url(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "http://10.0.2.2:9012",
            "https://gateway",
            "https://gateway/prpc",
            "https://:1",
            "https://gw:port",
            "https://gw:70000",
            "https://u@gw:1",
            "https://gw:1/x?y",
            "https://gw:1/a b",
        ] {
            let err = parse_gateway_url(bad).unwrap_err();
            assert!(err.contains("gateway URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn pccs_urls() {
        assert!(check_pccs_url("http://10.0.2.2:8083").is_ok());
        assert!(check_pccs_url("https://api.trustedservices.intel.com").is_ok());
        for bad in [
            "",
            "10.0.2.2:8083",
            "http://",
            "http:///x",
            "ftp://p",
            "http://a b",
        ] {
            assert!(check_pccs_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn state_dir_checks() {
        assert!(check_state_dir(Path::new("/var/lib/dstack")).is_ok());
        assert!(check_state_dir(Path::new("/var/lib/a,b")).is_err());
        let long = format!("/{}", "a".repeat(MAX_STATE_DIR_LEN));
        assert!(check_state_dir(Path::new(&long)).is_err());
        let fits = "/vms/01234567/vsock_10000".len() + MAX_STATE_DIR_LEN;
        assert_eq!(fits, 107);
    }
}
