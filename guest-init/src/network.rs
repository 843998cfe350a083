//! Guest networking: loopback and the one virtio-net interface with the
//! host-chosen static address, plus `/etc/resolv.conf` and `/etc/hosts`.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dstack_proto::host::NetworkConfig;

use crate::netlink::Rtnl;

/// Setting up the network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A configured address does not parse.
    #[error("network.{field} {value:?} is not a valid IPv4 {what}")]
    BadAddress {
        /// The field (`address`, `gateway`).
        field: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        what: &'static str,
    },
    /// No network interface besides `lo` appeared.
    #[error("no network interface appeared in {dir} within {secs} s (is virtio_net loaded?)")]
    NoInterface {
        /// The sysfs directory searched.
        dir: PathBuf,
        /// How long we waited.
        secs: u64,
    },
    /// A netlink request failed.
    #[error("cannot {what} on {interface}")]
    Netlink {
        /// The step.
        what: &'static str,
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a file under /etc failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An address with its prefix length, e.g. `10.0.2.15/24`.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = || NetworkError::BadAddress {
        field: "address",
        value: text.into(),
        what: "address with a /prefix",
    };
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

fn parse_gateway(text: &str) -> Result<Ipv4Addr, NetworkError> {
    text.parse().map_err(|_| NetworkError::BadAddress {
        field: "gateway",
        value: text.into(),
        what: "address",
    })
}

/// A hostname the kernel and resolvers accept: letters, digits and `-`
/// (anything else becomes `-`), at most 63 bytes, never empty.
pub fn sanitize_hostname(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "dstack".into()
    } else {
        trimmed.into()
    }
}

/// `/etc/resolv.conf` for `dns`.
pub fn render_resolv_conf(dns: &[String]) -> String {
    dns.iter().map(|d| format!("nameserver {d}\n")).collect()
}

/// `/etc/hosts` naming this guest.
pub fn render_hosts(hostname: &str, address: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

/// The interface under `dir` (`/sys/class/net`) to configure: not `lo`,
/// backed by a device (virtual ones such as `sit0` have no `device` link)
/// when any is, first by name.
pub fn find_interface(dir: &Path) -> Option<String> {
    let mut names: Vec<(bool, String)> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .map(|n| (!dir.join(&n).join("device").exists(), n))
        .collect();
    names.sort();
    names.into_iter().next().map(|(_, n)| n)
}

/// Waits up to `patience` for [`find_interface`] to find one; the driver
/// may still be probing.
pub fn wait_for_interface(dir: &Path, patience: Duration) -> Result<String, NetworkError> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(name) = find_interface(dir) {
            return Ok(name);
        }
        if Instant::now() >= deadline {
            return Err(NetworkError::NoInterface {
                dir: dir.to_owned(),
                secs: patience.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ifindex(interface: &str) -> Result<u32, NetworkError> {
    let path = Path::new("/sys/class/net").join(interface).join("ifindex");
    let bad = |source| NetworkError::Netlink {
        what: "read the interface index",
        interface: interface.into(),
        source,
    };
    let text = fs::read_to_string(&path).map_err(bad)?;
    text.trim()
        .parse()
        .map_err(|_| bad(io::Error::new(io::ErrorKind::InvalidData, text)))
}

/// What [`configure`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSummary {
    /// The interface configured.
    pub interface: String,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Ipv4Addr,
}

/// Brings up `lo` and the virtio-net interface with `config`, and writes
/// `/etc/resolv.conf` and `/etc/hosts` under `etc`. Blocking (netlink and a
/// short wait for the interface): call from a blocking thread.
pub fn configure(
    config: &NetworkConfig,
    hostname: &str,
    etc: &Path,
) -> Result<NetworkSummary, NetworkError> {
    let (address, prefix) = parse_cidr(&config.address)?;
    let gateway = parse_gateway(&config.gateway)?;
    let interface = wait_for_interface(Path::new("/sys/class/net"), Duration::from_secs(5))?;
    let nl = |what, interface: &str| {
        let interface = interface.to_owned();
        move |source| NetworkError::Netlink {
            what,
            interface,
            source,
        }
    };
    let mut rtnl = Rtnl::open().map_err(nl("open a netlink socket", "-"))?;
    let lo = ifindex("lo")?;
    rtnl.link_up(lo).map_err(nl("set the link up", "lo"))?;
    let index = ifindex(&interface)?;
    rtnl.link_up(index)
        .map_err(nl("set the link up", &interface))?;
    rtnl.add_ipv4(index, address, prefix)
        .map_err(nl("add the address", &interface))?;
    rtnl.add_default_route(index, gateway)
        .map_err(nl("add the default route", &interface))?;
    write_etc(etc, "resolv.conf", &render_resolv_conf(&config.dns))?;
    write_etc(etc, "hosts", &render_hosts(hostname, address))?;
    Ok(NetworkSummary {
        interface,
        address,
        prefix,
        gateway,
    })
}

fn write_etc(etc: &Path, name: &str, text: &str) -> Result<(), NetworkError> {
    let path = etc.join(name);
    fs::create_dir_all(etc)
        .and_then(|()| fs::write(&path, text))
        .map_err(|source| NetworkError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names_bad_ones() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        );
        for bad in ["10.0.2.15", "10.0.2/24", "10.0.2.15/33", "x/8"] {
            let err = parse_cidr(bad).unwrap_err();
            assert!(err.to_string().starts_with("network.address"), "{err}");
        }
        assert!(parse_gateway("10.0.2.2").is_ok());
        assert!(parse_gateway("gw").is_err());
    }

    #[test]
    fn renders_resolv_conf_and_hosts() {
        let dns = vec!["10.0.2.3".to_owned(), "1.1.1.1".to_owned()];
        assert_eq!(
            render_resolv_conf(&dns),
            "nameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        let hosts = render_hosts("hello", Ipv4Addr::new(10, 0, 2, 15));
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.0.2.15\thello\n"));
    }

    #[test]
    fn hostnames_are_made_safe() {
        assert_eq!(sanitize_hostname("my app_1"), "my-app-1");
        assert_eq!(sanitize_hostname("__"), "dstack");
        assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn finds_the_first_non_loopback_interface() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lo")).unwrap();
        assert_eq!(find_interface(dir.path()), None);
        assert!(wait_for_interface(dir.path(), Duration::from_millis(30)).is_err());
        fs::create_dir(dir.path().join("sit0")).unwrap();
        assert_eq!(find_interface(dir.path()).as_deref(), Some("sit0"));
        fs::create_dir_all(dir.path().join("eth0/device")).unwrap();
        fs::create_dir(dir.path().join("enp0s2")).unwrap();
        assert_eq!(find_interface(dir.path()).as_deref(), Some("eth0"));
    }
}
