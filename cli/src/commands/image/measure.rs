//! `dstack image measure`: the registers a TD booted from an image reports
//! for a VM shape, predicted from the image's files (MRTD from the
//! firmware's TDVF metadata; RTMR0 from the TD HOB, the firmware's CFV and
//! variables, the ACPI tables the QEMU builds for the shape; RTMR1 from the
//! kernel; RTMR2 from the command line and initrd).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use dstack_attest::eventlog::key_provider;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::commands::Failure;
use crate::commands::verify::resolve_image;
use crate::predict::{ACPI_FILES, MachineArgs, Prediction, VmShape, predict};

/// Arguments of `dstack image measure`.
#[derive(Debug, Args)]
pub(crate) struct MeasureArgs {
    /// The image: its directory, or its os_image_hash or name among the
    /// images in $DSTACK_IMAGES_DIR (default: the supervisor's images).
    image: String,
    /// vCPUs of the VM.
    #[arg(long, value_name = "N")]
    vcpu: u32,
    /// Memory of the VM: MiB, or a size like 512M or 2G.
    #[arg(long, value_name = "SIZE")]
    memory: String,
    /// The `key-provider` event's payload mr_system covers (compact JSON,
    /// as the app's event log shows it) [default: no key provider].
    #[arg(long, value_name = "JSON")]
    key_provider_info: Option<String>,
    /// Also write the ACPI tables measured into RTMR0 to this directory
    /// (`table-loader`, `rsdp`, `tables`; `--acpi-tables` reads them back).
    #[arg(long, value_name = "DIR")]
    save_acpi: Option<PathBuf>,
    /// Print the boot event log (RTMR0-2) too.
    #[arg(long)]
    events: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    machine: MachineArgs,
}

/// SHA-256 over the boot registers and the key provider, as dstack's
/// `mr_system`, and over the registers with an empty RTMR3 (`mr_aggregated`
/// of the TD as booted, before any runtime event).
fn summaries(p: &Prediction, key_provider_info: &str) -> ([u8; 32], [u8; 32]) {
    let mut system = Sha256::new();
    let mut aggregated = Sha256::new();
    system.update(p.mr_td);
    aggregated.update(p.mr_td);
    for rtmr in &p.rtmr {
        system.update(rtmr);
        aggregated.update(rtmr);
    }
    system.update(Sha256::digest(key_provider_info.as_bytes()));
    aggregated.update([0u8; 48]);
    (system.finalize().into(), aggregated.finalize().into())
}

pub(crate) fn run(args: MeasureArgs) -> Result<(), Failure> {
    let image = resolve_image(&args.image)?;
    let memory_mb = crate::commands::vm::parse_memory(&args.memory)
        .with_context(|| format!("--memory {:?}", args.memory))?;
    let shape = VmShape {
        vcpus: args.vcpu,
        memory_mb,
    };
    if args.vcpu == 0 {
        return Err(Failure::BadInput(anyhow::anyhow!(
            "--vcpu must be at least 1"
        )));
    }
    let started = Instant::now();
    let p = predict(&image.dir, shape, &args.machine)?;
    let elapsed = started.elapsed();
    if let Some(dir) = &args.save_acpi {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, bytes) in ACPI_FILES
            .iter()
            .zip([&p.acpi.loader, &p.acpi.rsdp, &p.acpi.tables])
        {
            let path = dir.join(name);
            dstack_fsutil::write_atomic(&path, bytes, 0o644)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let key_provider_info = args
        .key_provider_info
        .as_deref()
        .unwrap_or(key_provider::NONE);
    let (mr_system, mr_aggregated) = summaries(&p, key_provider_info);
    let acpi = match p.acpi_outcome {
        None => "given (--acpi-tables)".to_owned(),
        Some(outcome) => format!("{outcome:?}").to_lowercase(),
    };
    if args.json {
        let mut out = json!({
            "image": image.name,
            "image_dir": image.dir.display().to_string(),
            "os_image_hash": p.os_image_hash,
            "vcpus": shape.vcpus,
            "memory_mb": shape.memory_mb,
            "qemu_version": p.qemu_version,
            "acpi_tables": acpi,
            "cmdline": p.cmdline,
            "mrtd": hex::encode(p.mr_td),
            "rtmr0": hex::encode(p.rtmr[0]),
            "rtmr1": hex::encode(p.rtmr[1]),
            "rtmr2": hex::encode(p.rtmr[2]),
            "mr_system": hex::encode(mr_system),
            "key_provider_info": key_provider_info,
            "mr_aggregated": hex::encode(mr_aggregated),
            "seconds": elapsed.as_secs_f64(),
        });
        if args.events {
            out["event_log"] = serde_json::to_value(&p.events).unwrap_or_default();
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    println!("image:          {} ({})", image.name, image.dir.display());
    println!("os_image_hash:  {}", p.os_image_hash);
    println!(
        "vm shape:       {} vCPU{}, {} MiB; QEMU {} (ACPI tables {acpi})",
        shape.vcpus,
        if shape.vcpus == 1 { "" } else { "s" },
        shape.memory_mb,
        p.qemu_version
    );
    println!("mrtd:           {}", hex::encode(p.mr_td));
    for (i, rtmr) in p.rtmr.iter().enumerate() {
        println!("rtmr{i}:          {}", hex::encode(rtmr));
    }
    println!(
        "mr_system:      {} (key provider {key_provider_info})",
        hex::encode(mr_system)
    );
    println!(
        "mr_aggregated:  {} (RTMR3 empty: before the app's events)",
        hex::encode(mr_aggregated)
    );
    if args.events {
        println!("boot event log (RTMR0-2):");
        for event in &p.events {
            let name = if event.event.is_empty() {
                ""
            } else {
                &event.event
            };
            println!(
                "  rtmr{} type {:#010x} {} {name}",
                event.imr,
                event.event_type,
                hex::encode(&event.digest)
            );
        }
    }
    println!("measured in {:.2}s", elapsed.as_secs_f64());
    Ok(())
}
