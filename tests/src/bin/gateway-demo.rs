//! `gateway-demo`: the main job, end to end. A supervisor boots a KMS-keyed
//! gateway CVM (wildcard certificate from a local ACME CA through DNS-01),
//! then `examples/hello` in a CVM that registers with the gateway over
//! RA-TLS and peers with it over WireGuard; curl reaches the app by name
//! through the gateway. Everything it starts is stopped at the end.

use std::process::Command;

use anyhow::Context;
use dstack_e2e::gateway::{App, GatewayWorld, app_compose};
use dstack_e2e::harness::{Supervisor, push_example};

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn main() -> anyhow::Result<()> {
    step("supervisor (scratch state), example image into the local registry");
    let sup = Supervisor::start("demo")?;
    push_example("hello")?;
    let compose = std::fs::read_to_string(
        dstack_e2e::harness::repo_root().join("examples/hello/compose.yml"),
    )?;
    let hello = App::write(
        sup.state.path(),
        "hello",
        &app_compose("hello", &compose, true, None),
    )?;
    let world = GatewayWorld::start(&sup, std::slice::from_ref(&hello), step)?;

    step("dstack vm deploy examples/hello (KMS keys, registers with the gateway)");
    world.deploy(&sup, &hello);
    world.wait_registered(&sup, &[&hello]);
    println!("{}", sup.dstack_ok(&["vm", "info", "hello"]));

    let name = format!("{}.apps.test", hello.id);
    let port = world.ports.proxy;
    let roots = sup.state.path().join("acme-roots.pem");
    std::fs::write(
        &roots,
        world.runtime.block_on(world.pebble.issuer_roots_pem()),
    )?;
    step(&format!(
        "curl https://{name}:{port}/ (through the gateway; TLS by its wildcard certificate)"
    ));
    // The first request may wait for the gateway to see the registration.
    world.get(&name, true)?;
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}/");
    let status = Command::new("curl")
        .args(["-fsS", "--resolve", &resolve, "--cacert"])
        .arg(&roots)
        .arg(&url)
        .status()
        .context("curl is needed for the demo")?;
    anyhow::ensure!(status.success(), "curl {url} failed");

    step("dstack vm logs hello");
    println!("{}", sup.dstack_ok(&["vm", "logs", "-n", "20", "hello"]));

    step("stop everything");
    for vm in ["hello", "gateway"] {
        sup.dstack_ok(&["vm", "rm", "--force", vm]);
    }
    drop(world);
    println!("demo finished");
    Ok(())
}
