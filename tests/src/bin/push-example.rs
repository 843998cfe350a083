//! `push-example <examples/APP> [registry] [--layer-out FILE]`: build an
//! example's image from its `image.json` and push it to the local registry
//! (default 127.0.0.1:5000); `--layer-out` also writes the layer (a .tar.gz)
//! for inspection, `--no-push` skips the registry.

use std::path::PathBuf;

use anyhow::Context;
use dstack_e2e::oci::ImageSpec;

fn main() -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut layer_out = None;
    let mut push = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--layer-out" => {
                layer_out = Some(PathBuf::from(args.next().context("--layer-out FILE")?))
            }
            "--no-push" => push = false,
            _ => positional.push(arg),
        }
    }
    let mut positional = positional.into_iter();
    let dir =
        PathBuf::from(positional.next().context(
            "usage: push-example <examples/APP> [registry] [--layer-out FILE] [--no-push]",
        )?);
    let registry = positional.next().unwrap_or_else(|| "127.0.0.1:5000".into());
    let (spec, base) = ImageSpec::load(&dir.join("image.json"))?;
    let image = spec.build(&base)?;
    if let Some(out) = layer_out {
        std::fs::write(&out, &image.layer)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if push {
        image.push(&registry, &spec.repository, &spec.tag)?;
    }
    println!(
        "{registry}/{}:{} {} (layer {} bytes)",
        spec.repository,
        spec.tag,
        image.digest(),
        image.layer.len()
    );
    Ok(())
}
