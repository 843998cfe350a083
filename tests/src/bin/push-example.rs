//! `push-example <examples/APP> [registry]`: build an example's image from its
//! `image.json` and push it to the local registry (default 127.0.0.1:5000).

use std::path::PathBuf;

use anyhow::Context;
use dstack_e2e::oci::ImageSpec;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: push-example <examples/APP> [registry]")?,
    );
    let registry = args.next().unwrap_or_else(|| "127.0.0.1:5000".into());
    let (spec, base) = ImageSpec::load(&dir.join("image.json"))?;
    let image = spec.build(&base)?;
    image.push(&registry, &spec.repository, &spec.tag)?;
    println!(
        "{registry}/{}:{} {}",
        spec.repository,
        spec.tag,
        image.digest()
    );
    Ok(())
}
