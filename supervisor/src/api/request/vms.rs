//! `/v1/vms` and `/v1/vms/{vm}`.

use std::collections::HashMap;

use dstack_proto::supervisor::DeployRequest;

use super::parse_json;
use crate::api::Command;
use crate::error::VmmError;

/// `POST /v1/vms` with a [`DeployRequest`] body (unknown fields refused).
pub fn deploy(body: &[u8]) -> Result<Command, VmmError> {
    parse_json::<DeployRequest>(body).map(Command::Deploy)
}

/// The `force` flag of stop and remove (no other parameter is accepted).
pub fn force(params: &HashMap<String, String>) -> Result<bool, VmmError> {
    flag(params, "force")
}

/// `POST /v1/vms/{vm}/start` with its one-shot `format_nonempty_disk` flag
/// (no other parameter is accepted).
pub fn start(vm: String, params: &HashMap<String, String>) -> Result<Command, VmmError> {
    Ok(Command::Start {
        vm,
        format_nonempty_disk: flag(params, "format_nonempty_disk")?,
    })
}

/// The boolean query parameter `name`, false when absent; any other
/// parameter is refused.
fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, VmmError> {
    let mut value = false;
    for (key, given) in params {
        if key != name {
            return Err(VmmError::invalid(
                key.as_str(),
                format!("unknown parameter ({name})"),
            ));
        }
        value = match given.as_str() {
            "" | "1" | "true" | "yes" => true,
            "0" | "false" | "no" => false,
            other => {
                return Err(VmmError::invalid(
                    name,
                    format!("{other:?} is not a boolean"),
                ));
            }
        };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_field() {
        let err = deploy(br#"{"name":"a","app_compose":"{}","vcpu":"two"}"#).unwrap_err();
        assert!(err.to_string().starts_with("vcpu: invalid type"), "{err}");
        let err = deploy(br#"{"name":"a","app_compose":"{}","colour":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = deploy(br#"{"name":"a"}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `app_compose`"),
            "{err}"
        );
        let err = deploy(
            br#"{"name":"a","app_compose":"{}","ports":[{"host_port":1,"vm_port":2,"x":3}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("ports[0]"), "{err}");
        let err = deploy(b"nope").unwrap_err();
        assert!(err.to_string().starts_with("body: "), "{err}");
        let params = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert!(force(&params("force", "true")).unwrap());
        assert!(!force(&HashMap::new()).unwrap());
        assert!(force(&params("force", "maybe")).is_err());
        assert!(force(&params("graceful", "1")).is_err());
        match start("web".into(), &params("format_nonempty_disk", "true")).unwrap() {
            Command::Start {
                vm,
                format_nonempty_disk,
            } => assert_eq!((vm.as_str(), format_nonempty_disk), ("web", true)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            start("web".into(), &HashMap::new()).unwrap(),
            Command::Start {
                format_nonempty_disk: false,
                ..
            }
        ));
        let err = start("web".into(), &params("force", "1")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "force: unknown parameter (format_nonempty_disk)"
        );
        match deploy(br#"{"name":"a","app_compose":"{}"}"#).unwrap() {
            Command::Deploy(req) => {
                assert_eq!((req.vcpu, req.memory_mb, req.disk_gb), (1, 1024, 4))
            }
            other => panic!("{other:?}"),
        }
    }
}
