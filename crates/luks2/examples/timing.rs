//! Times `format` and `open` on a file: `cargo run --example timing [--release] -- FILE [PASSPHRASE]`.
//!
//! FILE must be at least 16 MiB + 512 bytes; without PASSPHRASE the file is
//! formatted first (its first 16 MiB are overwritten), with one it is only
//! opened (e.g. a disk cryptsetup formatted).

use std::fs::OpenOptions;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: timing FILE [PASSPHRASE]")?;
    let given = args.next();
    let pass = given.clone().unwrap_or_else(|| "00".repeat(32));
    let mut dev = OpenOptions::new()
        .read(true)
        .write(given.is_none())
        .open(&path)?;
    if given.is_none() {
        let start = Instant::now();
        let volume = dstack_luks2::format(&mut dev, pass.as_bytes(), &mut rand_core::OsRng)?;
        dev.sync_all()?;
        println!("format: {:?} ({})", start.elapsed(), volume.uuid());
    }
    let start = Instant::now();
    let volume = dstack_luks2::open(&mut dev, pass.as_bytes())?;
    println!("open:   {:?} ({})", start.elapsed(), volume.uuid());
    Ok(())
}
