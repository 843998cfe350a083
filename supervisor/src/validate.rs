//! Checks on a deploy request that need no host state, plus the host-port
//! probes that do. Each failure names the request field.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use dstack_proto::supervisor::{DeployRequest, PortMapping};

use crate::error::VmmError;

/// Most vCPUs a VM may have.
pub const MAX_VCPU: u32 = 256;
/// Least memory a VM may have, MiB (the 6.12 kernel + initramfs need about this).
pub const MIN_MEMORY_MB: u32 = 128;
/// Most memory a VM may have, MiB (4 TiB).
pub const MAX_MEMORY_MB: u32 = 4 << 20;
/// Largest data disk, GiB (it is sparse, so this only bounds typos).
pub const MAX_DISK_GB: u32 = 16 << 10;
/// Largest user_config, bytes.
pub const MAX_USER_CONFIG: usize = 1 << 20;

/// Whether `name` is a valid VM name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Whether `text` looks like a VM id (8 lowercase hex digits), so that a
/// name can never shadow another VM's id.
pub fn looks_like_id(text: &str) -> bool {
    text.len() == 8
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks every field of a deploy request that needs no host state.
/// The compose file and the image are checked by their own owners.
pub fn check_request(req: &DeployRequest) -> Result<(), VmmError> {
    if !is_valid_name(&req.name) {
        return Err(VmmError::invalid(
            "name",
            format!("{:?} must match [a-z0-9][a-z0-9-]{{0,62}}", req.name),
        ));
    }
    if looks_like_id(&req.name) {
        return Err(VmmError::invalid(
            "name",
            format!(
                "{:?} looks like a VM id (8 hex digits); choose another",
                req.name
            ),
        ));
    }
    if !(1..=MAX_VCPU).contains(&req.vcpu) {
        return Err(VmmError::invalid(
            "vcpu",
            format!("must be between 1 and {MAX_VCPU}"),
        ));
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&req.memory_mb) {
        return Err(VmmError::invalid(
            "memory_mb",
            format!("must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB}"),
        ));
    }
    if !(1..=MAX_DISK_GB).contains(&req.disk_gb) {
        return Err(VmmError::invalid(
            "disk_gb",
            format!("must be between 1 and {MAX_DISK_GB}"),
        ));
    }
    if hex::decode(&req.encrypted_env).is_err() {
        return Err(VmmError::invalid("encrypted_env", "must be hex"));
    }
    if req.user_config.len() > MAX_USER_CONFIG {
        return Err(VmmError::invalid(
            "user_config",
            format!("must be at most {MAX_USER_CONFIG} bytes"),
        ));
    }
    if !req.app_id.is_empty() && hex::decode(&req.app_id).map(|b| b.len()) != Ok(20) {
        return Err(VmmError::invalid(
            "app_id",
            format!("{:?} is not 20 bytes of hex", req.app_id),
        ));
    }
    for (i, url) in req.kms_urls.iter().enumerate() {
        crate::config::parse_kms_url(url)
            .map_err(|e| VmmError::invalid(format!("kms_urls[{i}]"), e))?;
    }
    for (i, url) in req.gateway_urls.iter().enumerate() {
        crate::config::parse_gateway_url(url)
            .map_err(|e| VmmError::invalid(format!("gateway_urls[{i}]"), e))?;
    }
    check_ports(&req.ports)
}

/// Checks the shape of published ports and that none repeats within the request.
pub fn check_ports(ports: &[PortMapping]) -> Result<(), VmmError> {
    for (i, port) in ports.iter().enumerate() {
        let field = |name: &str| format!("ports[{i}].{name}");
        if port.protocol != "tcp" && port.protocol != "udp" {
            return Err(VmmError::invalid(
                field("protocol"),
                format!("{:?} is not tcp or udp", port.protocol),
            ));
        }
        if port.host_address.parse::<Ipv4Addr>().is_err() {
            return Err(VmmError::invalid(
                field("host_address"),
                format!("{:?} is not an IPv4 address", port.host_address),
            ));
        }
        if port.host_port == 0 {
            return Err(VmmError::invalid(field("host_port"), "must not be 0"));
        }
        if port.vm_port == 0 {
            return Err(VmmError::invalid(field("vm_port"), "must not be 0"));
        }
        if let Some(j) = ports[..i].iter().position(|other| overlaps(other, port)) {
            return Err(VmmError::invalid(
                field("host_port"),
                format!("{} is already published by ports[{j}]", port.host_port),
            ));
        }
    }
    Ok(())
}

/// Whether two mappings would bind the same host socket (0.0.0.0 overlaps every address).
pub fn overlaps(a: &PortMapping, b: &PortMapping) -> bool {
    a.protocol == b.protocol
        && a.host_port == b.host_port
        && (a.host_address == b.host_address
            || a.host_address == "0.0.0.0"
            || b.host_address == "0.0.0.0")
}

/// Whether the host port is free right now (we can bind it).
pub fn port_is_free(port: &PortMapping) -> bool {
    let Ok(ip) = port.host_address.parse::<Ipv4Addr>() else {
        return false;
    };
    let addr = SocketAddrV4::new(ip, port.host_port);
    // Bound and dropped at once; QEMU binds it moments later. A race with
    // another program is possible, and QEMU then fails to start, loudly.
    match port.protocol.as_str() {
        "udp" => UdpSocket::bind(addr).is_ok(),
        _ => TcpListener::bind(addr).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> DeployRequest {
        serde_json::from_value(serde_json::json!({"name": "web", "app_compose": "{}"})).unwrap()
    }

    fn port(addr: &str, host: u16, vm: u16) -> PortMapping {
        PortMapping {
            protocol: "tcp".into(),
            host_address: addr.into(),
            host_port: host,
            vm_port: vm,
        }
    }

    #[test]
    fn kms_urls_must_be_https_host_port() {
        let mut req = request();
        req.kms_urls = vec![
            "https://10.0.2.2:8000".into(),
            "https://kms.example:443/prpc".into(),
        ];
        check_request(&req).unwrap();
        for bad in [
            "http://10.0.2.2:8000",
            "https://kms",
            "https://:1",
            "https://a:1/x",
        ] {
            req.kms_urls = vec![bad.into()];
            let err = check_request(&req).unwrap_err();
            assert!(err.to_string().contains("kms_urls[0]"), "{bad}: {err}");
        }
    }

    #[test]
    fn gateway_urls_must_be_https_host_port_with_an_optional_path() {
        let mut req = request();
        // Old clients send no gateway_urls at all.
        assert!(req.gateway_urls.is_empty());
        req.gateway_urls = vec![
            "https://10.0.2.2:9012".into(),
            "https://gateway.example:443/prpc".into(),
            "https://gw:8000/base".into(),
        ];
        check_request(&req).unwrap();
        for bad in [
            "http://10.0.2.2:9012",
            "https://gateway",
            "https://:1",
            "https://gw:1/x?y",
        ] {
            req.gateway_urls = vec!["https://10.0.2.2:9012".into(), bad.into()];
            let err = check_request(&req).unwrap_err();
            assert!(
                err.to_string().starts_with("gateway_urls[1]: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn names() {
        for good in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(looks_like_id("0a1b2c3d"));
        assert!(!looks_like_id("0a1b2c3g"));
    }

    #[test]
    fn request_fields_are_named() {
        let field_of = |req: &DeployRequest| match check_request(req) {
            Err(VmmError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        assert!(check_request(&request()).is_ok());
        let mut req = request();
        req.name = "Web".into();
        assert_eq!(field_of(&req), "name");
        req.name = "deadbeef".into();
        assert_eq!(field_of(&req), "name");
        let mut req = request();
        req.vcpu = 0;
        assert_eq!(field_of(&req), "vcpu");
        let mut req = request();
        req.memory_mb = 16;
        assert_eq!(field_of(&req), "memory_mb");
        let mut req = request();
        req.disk_gb = 0;
        assert_eq!(field_of(&req), "disk_gb");
        let mut req = request();
        req.encrypted_env = "xyz".into();
        assert_eq!(field_of(&req), "encrypted_env");
        let mut req = request();
        req.ports = vec![port("localhost", 80, 80)];
        assert_eq!(field_of(&req), "ports[0].host_address");
        req.ports = vec![port("127.0.0.1", 8080, 80), port("0.0.0.0", 8080, 81)];
        assert_eq!(field_of(&req), "ports[1].host_port");
        req.ports = vec![port("127.0.0.1", 8080, 0)];
        assert_eq!(field_of(&req), "ports[0].vm_port");
        req.ports = vec![PortMapping {
            protocol: "sctp".into(),
            ..port("127.0.0.1", 1, 1)
        }];
        assert_eq!(field_of(&req), "ports[0].protocol");
    }

    #[test]
    fn port_probe_sees_a_bound_port() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener.local_addr().unwrap().port();
        assert!(!port_is_free(&port("127.0.0.1", taken, 80)));
        drop(listener);
        assert!(port_is_free(&port("127.0.0.1", taken, 80)));
    }

    #[test]
    fn overlap_rules() {
        assert!(overlaps(&port("127.0.0.1", 1, 1), &port("127.0.0.1", 1, 2)));
        assert!(overlaps(&port("0.0.0.0", 1, 1), &port("127.0.0.1", 1, 2)));
        assert!(!overlaps(
            &port("127.0.0.2", 1, 1),
            &port("127.0.0.1", 1, 2)
        ));
        let udp = PortMapping {
            protocol: "udp".into(),
            ..port("127.0.0.1", 1, 1)
        };
        assert!(!overlaps(&udp, &port("127.0.0.1", 1, 1)));
    }
}
