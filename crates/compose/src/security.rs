//! A service's security settings: `privileged`, `cap_add`, `cap_drop` and
//! `security_opt`, checked and normalised the way docker reads them. What
//! they change in the container is the runner's business (dstack-init's
//! runtime spec); this module only decides what a compose file may ask for.

use crate::ComposeError;

/// Every Linux capability, by its `CAP_` name, in the kernel's numbering
/// (capabilities(7); CAP_CHECKPOINT_RESTORE, 40, is the last as of Linux 6.12).
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// One `cap_add` / `cap_drop` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CapabilityName {
    /// `ALL`: every capability.
    All,
    /// One capability, as its `CAP_` name (an entry of [`LINUX_CAPABILITIES`]).
    Cap(&'static str),
}

impl CapabilityName {
    /// Reads a name as docker does: case-insensitive, with or without the
    /// `CAP_` prefix, or `ALL`. `None` for a name the kernel does not have.
    pub fn parse(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        if upper == "ALL" {
            return Some(CapabilityName::All);
        }
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        LINUX_CAPABILITIES
            .iter()
            .find(|cap| **cap == full)
            .map(|cap| CapabilityName::Cap(cap))
    }
}

/// The seccomp filter a service runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Docker's default profile (adjusted to the service's capabilities).
    #[default]
    Default,
    /// `security_opt: ["seccomp=unconfined"]`: no filter.
    Unconfined,
}

/// A service's security settings. The default is what a service that sets
/// none of these keys gets: docker's defaults, plus no_new_privs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// `privileged: true`: every capability, every device, no seccomp filter
    /// and no masked or read-only /proc and /sys paths.
    pub privileged: bool,
    /// `cap_add`, normalised and without duplicates, in file order.
    pub cap_add: Vec<CapabilityName>,
    /// `cap_drop`, normalised and without duplicates, in file order.
    pub cap_drop: Vec<CapabilityName>,
    /// The seccomp filter (`security_opt: seccomp=...`).
    pub seccomp: SeccompMode,
    /// Set no_new_privs on the service's processes. On unless
    /// `security_opt: ["no-new-privileges:false"]` (docker's default is off;
    /// a CVM's services should not gain privileges through setuid binaries
    /// or file capabilities unless they ask for it).
    pub no_new_privileges: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: SeccompMode::Default,
            no_new_privileges: true,
        }
    }
}

impl Security {
    /// Checks the four keys' values. `field` builds a key's dotted path for
    /// errors (e.g. `cap_add` → `services.web.cap_add`).
    pub(crate) fn new(
        field: impl Fn(&str) -> String,
        privileged: bool,
        cap_add: &[String],
        cap_drop: &[String],
        security_opt: &[String],
    ) -> Result<Self, ComposeError> {
        let mut security = Security {
            privileged,
            cap_add: capability_list(&field("cap_add"), cap_add)?,
            cap_drop: capability_list(&field("cap_drop"), cap_drop)?,
            ..Security::default()
        };
        for (i, opt) in security_opt.iter().enumerate() {
            security.apply_opt(&format!("{}[{i}]", field("security_opt")), opt)?;
        }
        Ok(security)
    }

    /// Applies one `security_opt` entry. Docker writes `key=value` and, for
    /// older options, `key:value`; both are read.
    fn apply_opt(&mut self, field: &str, opt: &str) -> Result<(), ComposeError> {
        let refuse = |reason: &str| ComposeError::UnsupportedSecurityOpt {
            field: field.to_string(),
            option: opt.to_string(),
            reason: reason.to_string(),
        };
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (opt.trim(), None),
        };
        match (key, value) {
            ("seccomp", Some("unconfined")) => self.seccomp = SeccompMode::Unconfined,
            ("seccomp", _) => {
                return Err(refuse(
                    "only seccomp=unconfined is supported: custom profiles are not (the default is docker's profile)",
                ));
            }
            ("no-new-privileges", None | Some("true")) => self.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => self.no_new_privileges = false,
            ("no-new-privileges", Some(_)) => {
                return Err(refuse("no-new-privileges takes true or false"));
            }
            // The guest runs no Linux security module, so asking for none is
            // true as it stands; asking for a profile or label is refused,
            // because silently running without it would be weaker than asked.
            ("apparmor", Some("unconfined")) | ("label", Some("disable")) => {}
            ("apparmor", _) => {
                return Err(refuse(
                    "the guest has no AppArmor; only apparmor=unconfined is accepted",
                ));
            }
            ("label", _) => {
                return Err(refuse(
                    "the guest has no SELinux; only label=disable is accepted",
                ));
            }
            _ => {
                return Err(refuse(
                    "supported: seccomp=unconfined, no-new-privileges[:true|false], apparmor=unconfined, label=disable",
                ));
            }
        }
        Ok(())
    }
}

fn capability_list(field: &str, names: &[String]) -> Result<Vec<CapabilityName>, ComposeError> {
    let mut caps = Vec::new();
    for name in names {
        let cap = CapabilityName::parse(name).ok_or_else(|| ComposeError::UnknownCapability {
            field: field.to_string(),
            name: name.clone(),
        })?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(key: &str) -> String {
        format!("services.web.{key}")
    }

    fn opts(list: &[&str]) -> Result<Security, ComposeError> {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        Security::new(field, false, &[], &[], &list)
    }

    #[test]
    fn capability_names_are_read_as_docker_reads_them() {
        for name in ["SYS_ADMIN", "CAP_SYS_ADMIN", "sys_admin", "cap_sys_admin "] {
            assert_eq!(
                CapabilityName::parse(name),
                Some(CapabilityName::Cap("CAP_SYS_ADMIN")),
                "{name}"
            );
        }
        assert_eq!(CapabilityName::parse("all"), Some(CapabilityName::All));
        assert_eq!(CapabilityName::parse("CAP_ALL"), None);
        assert_eq!(CapabilityName::parse("SYS_WIZARD"), None);
        assert_eq!(CapabilityName::parse(""), None);
    }

    #[test]
    fn cap_lists_are_normalised_and_unknown_names_refused() {
        let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let security = Security::new(
            field,
            false,
            &list(&["NET_ADMIN", "CAP_NET_ADMIN", "sys_time"]),
            &list(&["ALL"]),
            &[],
        )
        .unwrap();
        assert_eq!(
            security.cap_add,
            [
                CapabilityName::Cap("CAP_NET_ADMIN"),
                CapabilityName::Cap("CAP_SYS_TIME")
            ]
        );
        assert_eq!(security.cap_drop, [CapabilityName::All]);
        let err = Security::new(field, false, &[], &list(&["CAP_FLY"]), &[]).unwrap_err();
        assert_eq!(
            err,
            ComposeError::UnknownCapability {
                field: "services.web.cap_drop".into(),
                name: "CAP_FLY".into()
            }
        );
    }

    #[test]
    fn defaults_are_filtered_with_no_new_privileges() {
        let security = opts(&[]).unwrap();
        assert_eq!(security, Security::default());
        assert!(security.no_new_privileges);
        assert_eq!(security.seccomp, SeccompMode::Default);
        assert!(!security.privileged);
    }

    #[test]
    fn supported_security_opts() {
        assert_eq!(
            opts(&["seccomp=unconfined"]).unwrap().seccomp,
            SeccompMode::Unconfined
        );
        assert_eq!(
            opts(&["seccomp:unconfined"]).unwrap().seccomp,
            SeccompMode::Unconfined
        );
        assert!(
            !opts(&["no-new-privileges:false"])
                .unwrap()
                .no_new_privileges
        );
        assert!(
            !opts(&["no-new-privileges=false"])
                .unwrap()
                .no_new_privileges
        );
        assert!(opts(&["no-new-privileges"]).unwrap().no_new_privileges);
        assert!(opts(&["no-new-privileges:true"]).unwrap().no_new_privileges);
        // Later entries win, as in docker.
        assert!(
            opts(&["no-new-privileges:false", "no-new-privileges:true"])
                .unwrap()
                .no_new_privileges
        );
        assert_eq!(
            opts(&["apparmor=unconfined", "label=disable", "label:disable"]).unwrap(),
            Security::default()
        );
    }

    #[test]
    fn other_security_opts_are_refused_naming_the_entry() {
        for bad in [
            "seccomp=/etc/profile.json",
            "seccomp=default.json",
            "apparmor=docker-default",
            "label=type:svirt_apache_t",
            "label=user:USER",
            "no-new-privileges:maybe",
            "systempaths=unconfined",
            "mask=/proc/kcore",
        ] {
            match opts(&["no-new-privileges", bad]).unwrap_err() {
                ComposeError::UnsupportedSecurityOpt { field, option, .. } => {
                    assert_eq!(field, "services.web.security_opt[1]", "{bad}");
                    assert_eq!(option, bad);
                }
                other => panic!("{bad}: {other}"),
            }
        }
    }
}
