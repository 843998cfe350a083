//! One service's life: wait for its dependencies, prepare its root and spec,
//! then run it, restarting it by its policy with exponential back-off until
//! it stops for good or the guest shuts down.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dstack_compose::{
    Compose, DependencyCondition, FileKind, Protocol, RestartPolicy, Service, VolumeSource,
};
use dstack_proto::guest::{ContainerInfo, ContainerState};
use dstack_proto::host::LogStream;
use tokio::sync::oneshot;

use super::spec::{BindMount, MappedDevice, SpecInput, build_spec, hosts_file, resolv_conf};
use super::{ContainerError, Inner, hardening, health, logs, netns, proxy, reap, runner, unpack};

/// First restart delay; doubled per quick failure up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long resets the back-off (as docker does).
const STABLE_RUN: Duration = Duration::from_secs(10);

/// Restart decisions. Time comes in as arguments (STYLE rule 9), so tests
/// drive it with made-up instants.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RestartPolicy,
    restarts: u32,
    delay: Duration,
    started_at: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        Backoff {
            policy,
            restarts: 0,
            delay: FIRST_DELAY,
            started_at: None,
        }
    }

    /// The container started at `now`.
    pub(crate) fn started(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// The container exited with `code` at `now`: how long to wait before
    /// restarting it, or `None` to leave it stopped.
    pub(crate) fn exited(&mut self, code: i32, now: Instant) -> Option<Duration> {
        let restart = match self.policy {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure(max) => code != 0 && max.is_none_or(|max| self.restarts < max),
        };
        if !restart {
            return None;
        }
        let ran = self
            .started_at
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default();
        if ran >= STABLE_RUN {
            self.delay = FIRST_DELAY;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        self.restarts += 1;
        Some(delay)
    }
}

/// Whether a dependency satisfies a `depends_on` condition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Met,
    Wait,
    Failed(String),
}

pub(crate) fn verdict(
    condition: DependencyCondition,
    dep: &ContainerInfo,
    has_healthcheck: bool,
) -> Verdict {
    use ContainerState::*;
    let exited = || format!("exited with code {}", dep.exit_code.unwrap_or(-1));
    match (condition, dep.state) {
        (_, Failed) => Verdict::Failed(format!(
            "failed: {}",
            dep.error.as_deref().unwrap_or("unknown error")
        )),
        (_, Pending) => Verdict::Wait,
        (DependencyCondition::Started, _) => Verdict::Met,
        (DependencyCondition::Healthy, _) if !has_healthcheck => {
            Verdict::Failed("has no healthcheck".into())
        }
        (DependencyCondition::Healthy, Healthy) => Verdict::Met,
        (DependencyCondition::Healthy, Unhealthy) => Verdict::Failed("is unhealthy".into()),
        (DependencyCondition::Healthy, Exited) => Verdict::Failed(exited()),
        (DependencyCondition::Healthy, _) => Verdict::Wait,
        (DependencyCondition::CompletedSuccessfully, Exited) if dep.exit_code == Some(0) => {
            Verdict::Met
        }
        (DependencyCondition::CompletedSuccessfully, Exited) => Verdict::Failed(exited()),
        (DependencyCondition::CompletedSuccessfully, _) => Verdict::Wait,
    }
}

async fn wait_for_dependencies(inner: &Inner, name: &str) -> Result<(), ContainerError> {
    for dep in &inner.compose.services[name].depends_on {
        let has_healthcheck = inner.compose.services[&dep.service].healthcheck.is_some();
        let mut rx = inner.slots[&dep.service].info.subscribe();
        loop {
            let v = verdict(dep.condition, &rx.borrow_and_update(), has_healthcheck);
            match v {
                Verdict::Met => break,
                Verdict::Failed(reason) => {
                    return Err(ContainerError::Dependency {
                        service: name.into(),
                        dependency: dep.service.clone(),
                        reason,
                    });
                }
                Verdict::Wait => {
                    let _ = rx.changed().await;
                }
            }
        }
    }
    Ok(())
}

/// Mounts the root, writes hosts/resolv.conf/config.json, binds published ports.
async fn prepare(inner: &Arc<Inner>, name: &str) -> Result<(), ContainerError> {
    let service = &inner.compose.services[name];
    let image = inner.image_root(name)?;
    let slot = &inner.slots[name];
    let mut binds = vec![
        BindMount {
            source: slot.paths.bundle.join("hosts"),
            destination: "/etc/hosts".into(),
            read_only: true,
        },
        BindMount {
            source: slot.paths.bundle.join("resolv.conf"),
            destination: "/etc/resolv.conf".into(),
            read_only: true,
        },
    ];
    for volume in &service.volumes {
        let source = match &volume.source {
            VolumeSource::Named(volume) => inner.env.data_dir.join("volumes").join(volume),
            VolumeSource::DstackSocket(path) => {
                // A socket by its file name, or the directory of both.
                let source = match std::path::Path::new(path).file_name() {
                    Some(file) if file != "dstack" => inner.env.guest_socket_dir.join(file),
                    _ => inner.env.guest_socket_dir.clone(),
                };
                if !source.exists() {
                    inner.system_log(format!(
                        "{name}: {path} is not mounted: the guest API is not available yet"
                    ));
                    continue;
                }
                source
            }
            // The guest's own filesystem: it holds no mount of the host's.
            VolumeSource::CvmPath(path) => std::path::PathBuf::from(path),
            // The engine's API socket (the engine is healthy by now).
            VolumeSource::DockerSocket(_) => std::path::PathBuf::from(super::engine::ENGINE_SOCKET),
        };
        binds.push(BindMount {
            source,
            destination: volume.target.clone(),
            read_only: volume.read_only,
        });
    }
    // configs and secrets: files on the guest's tmpfs, bound read-only.
    let files_dir = slot.paths.bundle.join("files");
    for (i, file) in service.files.iter().enumerate() {
        binds.push(BindMount {
            source: files_dir.join(i.to_string()),
            destination: file.target.clone(),
            read_only: true,
        });
    }
    let inner2 = inner.clone();
    let name2 = name.to_string();
    tokio::task::spawn_blocking(move || {
        let (inner, name) = (inner2, name2);
        let service = &inner.compose.services[&name];
        let paths = &inner.slots[&name].paths;
        runner::mount_rootfs(&name, paths, &image.rootfs)?;
        for bind in &binds {
            if bind.source.starts_with(inner.env.data_dir.join("volumes")) {
                std::fs::create_dir_all(&bind.source)
                    .map_err(|e| ContainerError::io("creating volume", &bind.source, e))?;
            }
        }
        // A missing source path of the CVM is made a directory, as docker
        // makes a bind mount's missing host path.
        for volume in &service.volumes {
            if let VolumeSource::CvmPath(path) = &volume.source
                && std::fs::symlink_metadata(path).is_err()
            {
                std::fs::create_dir_all(path)
                    .map_err(|e| ContainerError::io("creating bind source", Path::new(path), e))?;
            }
        }
        write_files(&inner.compose, service, &paths.bundle.join("files"))?;
        let write = |file: &str, text: String| {
            let path = paths.bundle.join(file);
            std::fs::write(&path, text).map_err(|e| ContainerError::io("writing", &path, e))
        };
        let lines = match &inner.netplan {
            Ok(plan) => plan.hosts(&inner.compose, &name),
            Err(_) => Vec::new(),
        };
        write("hosts", hosts_file(&lines, service))?;
        write("resolv.conf", resolv_conf(&inner.env.dns, service))?;
        let read_etc = |file: &str| {
            unpack::resolve_in_root(&image.rootfs, std::path::Path::new(file))
                .ok()
                .and_then(|path| std::fs::read_to_string(path).ok())
        };
        let (passwd, group) = (read_etc("etc/passwd"), read_etc("etc/group"));
        let netns = match &inner.netplan {
            Ok(plan) => plan
                .namespace_of(&name)
                .map(|ns| netns::netns_path(&inner.env.run_dir, &ns.owner)),
            Err(e) => return Err(e.clone().into()),
        };
        let devices = if service.security.privileged {
            let dev = std::path::Path::new("/dev");
            hardening::guest_devices(dev)
                .map_err(|e| ContainerError::io("listing devices in", dev, e))?
        } else {
            Vec::new()
        };
        let mapped_devices = service
            .devices
            .iter()
            .map(|d| {
                let source = std::path::Path::new(&d.source);
                Ok(MappedDevice {
                    node: hardening::guest_device(source)
                        .map_err(|e| ContainerError::io("opening device", source, e))?,
                    target: d.target.clone(),
                    permissions: d.permissions.clone(),
                })
            })
            .collect::<Result<Vec<_>, ContainerError>>()?;
        let spec = build_spec(&SpecInput {
            name: &name,
            service,
            image: image.config.config().as_ref(),
            rootfs: &paths.rootfs,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
            binds: &binds,
            devices: &devices,
            nofile: runner::nofile_limit(),
            mapped_devices: &mapped_devices,
            netns: netns.as_deref(),
        })?;
        runner::write_bundle(paths, &spec)
    })
    .await
    .map_err(|e| ContainerError::spec(name, format!("preparing panicked: {e}")))??;
    publish(inner, name).await
}

/// Opens `name`'s published ports in the guest: each forwards to the
/// service's address (or loopback for a service in the guest's stack).
/// Done once: the proxies outlive restarts, as the namespace does.
async fn publish(inner: &Arc<Inner>, name: &str) -> Result<(), ContainerError> {
    let slot = &inner.slots[name];
    if slot
        .published
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return Ok(());
    }
    let service = &inner.compose.services[name];
    let target_ip = match &inner.netplan {
        Ok(plan) => plan.port_target(name),
        Err(e) => return Err(e.clone().into()),
    };
    let Some(target_ip) = target_ip else {
        if !service.ports.is_empty() {
            inner.system_log(format!(
                "{name}: ports are not published: network_mode none has no network"
            ));
        }
        return Ok(());
    };
    for port in &service.ports {
        // In the guest's own stack the service already listens there.
        if target_ip.is_loopback() && port.published == port.target {
            continue;
        }
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], port.published));
        let target = std::net::SocketAddr::from((target_ip, port.target));
        let spawned = match port.protocol {
            Protocol::Tcp => proxy::spawn_proxy(listen, target).await,
            Protocol::Udp => proxy::spawn_udp_relay(listen, target).await,
        };
        let (_, task) = spawned.map_err(|source| ContainerError::Publish {
            service: name.into(),
            port: port.published,
            source,
        })?;
        inner
            .proxies
            .lock()
            .map_err(|_| ContainerError::spec(name, "proxy list poisoned"))?
            .push(task);
    }
    Ok(())
}

/// Writes a service's `configs` and `secrets` into `dir` (on the guest's
/// tmpfs) as `0`, `1`, ... in the service's order, each with its owner and
/// mode; the directory itself is private to the guest.
fn write_files(compose: &Compose, service: &Service, dir: &Path) -> Result<(), ContainerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    if service.files.is_empty() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| ContainerError::io("creating", dir, e))?;
    for (i, file) in service.files.iter().enumerate() {
        let content = match file.kind {
            FileKind::Config => compose.configs.get(&file.source),
            FileKind::Secret => compose.secrets.get(&file.source),
        }
        .ok_or_else(|| ContainerError::spec(&file.source, "is not declared"))?;
        let path = dir.join(i.to_string());
        std::fs::write(&path, content.as_bytes())
            .map_err(|e| ContainerError::io("writing", &path, e))?;
        std::os::unix::fs::chown(&path, Some(file.uid), Some(file.gid))
            .map_err(|e| ContainerError::io("setting the owner of", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| ContainerError::io("setting the mode of", &path, e))?;
    }
    Ok(())
}

/// Creates and starts the container; returns its pid and exit receiver.
async fn spawn(
    inner: &Arc<Inner>,
    name: &str,
) -> Result<(i32, oneshot::Receiver<std::process::ExitStatus>), ContainerError> {
    let guard = inner.reaping.spawn_guard().await;
    let (helper, root, id, paths) = (
        inner.helper.clone(),
        inner.state_root.clone(),
        name.to_string(),
        inner.slots[name].paths.clone(),
    );
    let started =
        tokio::task::spawn_blocking(move || runner::create_and_start(&helper, &root, &id, &paths))
            .await
            .map_err(|e| ContainerError::spec(name, format!("create panicked: {e}")))??;
    let exit = inner.reaping.register(started.pid);
    drop(guard);
    let slot = &inner.slots[name];
    for (stream, fd) in [
        (LogStream::Stdout, started.stdout),
        (LogStream::Stderr, started.stderr),
    ] {
        logs::spawn_reader(
            name.into(),
            stream,
            fd,
            slot.recent.clone(),
            inner.logs.clone(),
        )
        .map_err(|e| ContainerError::io("reading container output", &slot.paths.bundle, e))?;
    }
    Ok((started.pid, exit))
}

/// Runs service `name` until it stops for good; `ready` learns whether it
/// started (or why not).
pub(crate) async fn supervise(
    inner: Arc<Inner>,
    name: String,
    ready: oneshot::Sender<Result<(), ContainerError>>,
) {
    let slot = &inner.slots[&name];
    let fail = |e: &ContainerError| {
        slot.info.send_modify(|i| {
            i.state = ContainerState::Failed;
            i.pid = None;
            i.error = Some(super::error_chain(e));
        })
    };
    if let Err(e) = async {
        wait_for_dependencies(&inner, &name).await?;
        if inner.image_root(&name).is_err() {
            super::build::build_image(&inner, &name).await?;
        }
        prepare(&inner, &name).await
    }
    .await
    {
        fail(&e);
        let _ = ready.send(Err(e));
        return;
    }
    let mut ready = Some(ready);
    let mut stopping = slot.stopping.subscribe();
    let mut backoff = Backoff::new(inner.compose.services[&name].restart);
    while !*stopping.borrow() {
        let (pid, exit) = match spawn(&inner, &name).await {
            Ok(spawned) => spawned,
            Err(e) => {
                fail(&e);
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                }
                return;
            }
        };
        backoff.started(Instant::now());
        slot.info.send_modify(|i| {
            i.state = ContainerState::Running;
            i.pid = u32::try_from(pid).ok();
            i.error = None;
        });
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let checks = inner.compose.services[&name]
            .healthcheck
            .clone()
            .map(|check| tokio::spawn(health::run(inner.clone(), name.clone(), check)));
        let code = exit.await.map(reap::exit_code).unwrap_or(-1);
        if let Some(checks) = checks {
            checks.abort();
        }
        let (root, id) = (inner.state_root.clone(), name.clone());
        let _ = tokio::task::spawn_blocking(move || runner::delete(&root, &id)).await;
        slot.info.send_modify(|i| {
            i.pid = None;
            i.exit_code = Some(code);
        });
        let delay = if *stopping.borrow() {
            None
        } else {
            backoff.exited(code, Instant::now())
        };
        let Some(delay) = delay else { break };
        inner.system_log(format!(
            "{name}: exited with code {code}; restarting in {}s",
            delay.as_secs()
        ));
        slot.info.send_modify(|i| {
            i.state = ContainerState::Restarting;
            i.restarts += 1;
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
    slot.info.send_modify(|i| i.state = ContainerState::Exited);
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
