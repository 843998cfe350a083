//! The CVM's container engine: when a service mounts the Docker Engine API
//! socket (`/var/run/docker.sock`) or builds its image (`build:`, with
//! `/dstack` as upstream's build context), the guest adds one more service to the
//! app, [`ENGINE_SERVICE`]: Debian's podman from the image the OS image
//! pins by digest (`/etc/dstack/engine-image`, part of the OS image hash),
//! pulled from the registry the host names — which needs no trust, since
//! only that digest is accepted. It runs privileged (as docker's daemon
//! does upstream), keeps its images and containers on the encrypted data
//! disk, and serves the API on a socket the services that asked for it see
//! at the path they mounted. They start once the socket answers.

use std::path::Path;

use dstack_compose::{Compose, Dependency, DependencyCondition, ENGINE_SERVICE};
use dstack_proto::host::SysConfig;

/// The engine's socket directory in the guest (bound at `/run/podman` in
/// the engine).
const ENGINE_SOCKET_DIR: &str = "/run/dstack/engine";

/// The socket file services bind at their docker.sock path.
pub(crate) const ENGINE_SOCKET: &str = "/run/dstack/engine/podman.sock";

/// Why the engine cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The OS image carries no engine pin.
    #[error(
        "service {service} needs the container engine (docker.sock or build:), but this OS image pins none ({path}: {reason})"
    )]
    NoPin {
        /// A service that needs the engine.
        service: String,
        /// The pin file.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The pin is not `repository@sha256:<hex>`.
    #[error("the OS image's engine pin {0:?} is not repository@sha256:<hex>")]
    BadPin(String),
    /// The host named no registry to pull the engine from.
    #[error(
        "service {0} needs the container engine (docker.sock or build:), but the host names no engine registry (supervisor --engine-registry)"
    )]
    NoRegistry(String),
    /// The engine's own service did not parse (a bug).
    #[error("the engine service is invalid: {0}")]
    Compose(#[from] dstack_compose::ComposeError),
}

/// Reads the engine pin (`repository@sha256:<hex>`) from `path`.
fn read_pin(path: &Path, service: &str) -> Result<String, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::NoPin {
        service: service.into(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let pin = text.trim().to_string();
    let ok = pin.split_once("@sha256:").is_some_and(|(repo, hex)| {
        !repo.is_empty() && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(pin)
    } else {
        Err(EngineError::BadPin(pin))
    }
}

/// `registries.conf` for the engine: the host's registry rewrites (so
/// `docker pull 127.0.0.1:5000/x` in a service reaches what the app's own
/// images come from) and its plain-HTTP registries.
fn registries_conf(sys: &SysConfig) -> String {
    let mut text = String::new();
    for alias in &sys.registry_aliases {
        let insecure = sys.insecure_registries.contains(&alias.to);
        text.push_str(&format!(
            "[[registry]]\nprefix = \"{}\"\nlocation = \"{}\"\ninsecure = {insecure}\n\n",
            alias.from, alias.to
        ));
    }
    for registry in &sys.insecure_registries {
        if !sys.registry_aliases.iter().any(|a| &a.from == registry) {
            text.push_str(&format!(
                "[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n\n"
            ));
        }
    }
    text
}

/// Adds the engine to `compose` when a service mounts the Docker Engine
/// API socket; the services that do wait for it to be healthy (its socket
/// answers). Returns `compose` unchanged otherwise.
pub fn add_engine(
    mut compose: Compose,
    sys: &SysConfig,
    pin_file: &Path,
) -> Result<Compose, EngineError> {
    let users: Vec<String> = compose
        .services
        .iter()
        .filter(|(_, s)| s.needs_engine())
        .map(|(name, _)| name.clone())
        .collect();
    let Some(first) = users.first() else {
        return Ok(compose);
    };
    let pin = read_pin(pin_file, first)?;
    if sys.engine_registry.trim().is_empty() {
        return Err(EngineError::NoRegistry(first.clone()));
    }
    let image = format!("{}/{pin}", sys.engine_registry.trim().trim_end_matches('/'));
    let yaml = format!(
        r#"
services:
  engine:
    image: "{image}"
    privileged: true
    # The engine's containers share the guest's network stack
    # (containers.conf: netns=host), like the engine itself.
    network_mode: host
    restart: always
    volumes:
      - "{ENGINE_SERVICE}:/var/lib/containers"
      - "{ENGINE_SOCKET_DIR}:/run/podman"
      - "/dstack:/dstack:ro"
    configs:
      - source: registries
        target: /etc/containers/registries.conf.d/dstack.conf
    healthcheck:
      test: ["CMD-SHELL", "test -S /run/podman/podman.sock"]
      interval: 1s
      timeout: 5s
      retries: 600
    stop_grace_period: 20s
configs:
  registries:
    content: {content}
volumes:
  {ENGINE_SERVICE}: {{}}
"#,
        content = serde_json::to_string(&registries_conf(sys)).unwrap_or_default(),
    );
    // Parsed under a plain name: the real one is reserved for this service.
    let mut engine = Compose::parse(&yaml)?;
    let service = engine
        .services
        .remove("engine")
        .ok_or_else(|| EngineError::BadPin(pin.clone()))?;
    // The engine's config lives under a name no app can declare.
    let config_name = format!("{ENGINE_SERVICE}.registries");
    let mut service = service;
    for file in &mut service.files {
        file.source = config_name.clone();
    }
    if let Some(content) = engine.configs.remove("registries") {
        compose.configs.insert(config_name, content);
    }
    compose.volumes.insert(ENGINE_SERVICE.to_string());
    compose.services.insert(ENGINE_SERVICE.to_string(), service);
    for name in &users {
        let user = compose
            .services
            .get_mut(name)
            .ok_or_else(|| EngineError::BadPin(pin.clone()))?;
        if !user.depends_on.iter().any(|d| d.service == ENGINE_SERVICE) {
            user.depends_on.push(Dependency {
                service: ENGINE_SERVICE.to_string(),
                condition: DependencyCondition::Healthy,
            });
        }
    }
    Ok(compose)
}

#[cfg(test)]
mod tests {
    use dstack_proto::host::RegistryAlias;

    use super::*;

    const PIN: &str =
        "dstack/engine@sha256:cb4295d889d60d1fe58628ccd530e6323386163e1dc3386ba2cc735c1f9eb123";

    fn sys() -> SysConfig {
        let mut sys = SysConfig::new("id", "name");
        sys.registry_aliases = vec![RegistryAlias {
            from: "127.0.0.1:5000".into(),
            to: "10.0.2.2:5000".into(),
        }];
        sys.insecure_registries = vec!["10.0.2.2:5000".into()];
        sys.engine_registry = "127.0.0.1:5000".into();
        sys
    }

    fn pin_file(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("engine-image");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_docker_socket_mount_brings_the_pinned_engine() {
        let dir = tempfile::tempdir().unwrap();
        let compose = Compose::parse(
            "services:\n  ci:\n    image: x\n    volumes: [/var/run/docker.sock:/var/run/docker.sock]\n  web:\n    image: y\n",
        )
        .unwrap();
        let out = add_engine(compose, &sys(), &pin_file(dir.path(), &format!("{PIN}\n"))).unwrap();
        let engine = &out.services[ENGINE_SERVICE];
        assert_eq!(engine.image, format!("127.0.0.1:5000/{PIN}"));
        assert!(engine.security.privileged);
        assert!(out.volumes.contains(ENGINE_SERVICE));
        let conf = &out.configs[&engine.files[0].source];
        assert!(
            conf.contains(
                "prefix = \"127.0.0.1:5000\"\nlocation = \"10.0.2.2:5000\"\ninsecure = true"
            ),
            "{conf}"
        );
        assert_eq!(
            out.services["ci"].depends_on,
            [Dependency {
                service: ENGINE_SERVICE.into(),
                condition: DependencyCondition::Healthy
            }]
        );
        assert!(out.services["web"].depends_on.is_empty());
        assert_eq!(out.start_order().unwrap()[0], ENGINE_SERVICE);
    }

    #[test]
    fn no_socket_no_engine_and_bad_pins_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let plain = Compose::parse("services:\n  web:\n    image: y\n").unwrap();
        let missing = dir.path().join("none");
        assert_eq!(add_engine(plain.clone(), &sys(), &missing).unwrap(), plain);
        let user = Compose::parse(
            "services:\n  ci:\n    image: x\n    volumes: [/var/run/docker.sock:/var/run/docker.sock]\n",
        )
        .unwrap();
        assert!(matches!(
            add_engine(user.clone(), &sys(), &missing),
            Err(EngineError::NoPin { .. })
        ));
        assert!(matches!(
            add_engine(
                user.clone(),
                &sys(),
                &pin_file(dir.path(), "dstack/engine:latest")
            ),
            Err(EngineError::BadPin(_))
        ));
        let mut no_registry = sys();
        no_registry.engine_registry.clear();
        assert!(matches!(
            add_engine(user, &no_registry, &pin_file(dir.path(), PIN)),
            Err(EngineError::NoRegistry(_))
        ));
    }
}
