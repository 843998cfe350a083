//! Writes the known-answer inputs (tests/common) to a directory, for
//! upstream's dstack-mr to measure: `kernel`, `initrd`, `acpi-tables` (what
//! its `dstack-acpi-tables` helper must print), and `cmdline`, the command
//! line as upstream measures it (ours plus the firmware's " initrd=initrd").
//!
//! `cargo run -p dstack-firmware --example write_oracle_inputs -- DIR`

#[path = "../tests/common/mod.rs"]
mod common;

fn main() -> std::io::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: write_oracle_inputs DIR"),
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("kernel"),
        common::synthetic_kernel(common::KERNEL_LEN),
    )?;
    std::fs::write(
        dir.join("initrd"),
        common::synthetic_initrd(common::INITRD_LEN),
    )?;
    std::fs::write(dir.join("acpi-tables"), common::acpi_tables_blob())?;
    std::fs::write(
        dir.join("cmdline"),
        format!("{} initrd=initrd", common::CMDLINE),
    )?;
    Ok(())
}
