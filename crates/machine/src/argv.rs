//! The TD's QEMU command line, from one pure function.
//!
//! [`machine_argv`] lays out everything that shapes the guest: memory,
//! accelerator, machine type and options, firmware, kernel, vCPUs and the
//! devices in order. The supervisor runs it with [`Platform::Tdx`]; the ACPI
//! probe ([`crate::probe`]) runs the very same layout with
//! [`Platform::ProbeTcg`], so what a verifier computes from the probe's
//! tables is what QEMU builds for the TD. Where the two differ, and why that
//! cannot change QEMU's ACPI tables, is written at each difference below and
//! listed in [`crate::probe`].

use std::path::Path;

use base64::Engine as _;

/// What a verifier sees of the VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// vCPUs (`-smp`).
    pub vcpus: u32,
    /// Guest RAM in MiB (`-m`, and the memory backend's size).
    pub memory_mb: u32,
}

/// The OS image a TD boots: firmware, kernel, initrd and command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFiles<'a> {
    /// OVMF/TDVF (`-bios`).
    pub firmware: &'a Path,
    /// The kernel (`-kernel`), which the firmware measures and starts.
    pub kernel: &'a Path,
    /// The initramfs (`-initrd`).
    pub initrd: &'a Path,
    /// The kernel command line (`-append`), exactly as measured.
    pub cmdline: &'a str,
}

/// Where the guest's serial console (ttyS0) goes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial<'a> {
    /// A unix socket QEMU listens on; the supervisor reads it (and
    /// reconnects after its own restart) so it can rotate the log.
    Socket(&'a Path),
    /// A plain file QEMU writes.
    File(&'a Path),
}

/// The guest's vsock device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsock<'a> {
    /// `vhost-vsock-pci` on the host kernel's `/dev/vhost-vsock`; CIDs are
    /// host-wide.
    Kernel {
        /// The guest's CID.
        cid: u32,
    },
    /// `vhost-user-vsock-pci`, served by a vhost-user backend
    /// (vhost-device-vsock) listening on `socket` (DESIGN §6).
    VhostUser {
        /// The backend's vhost-user socket.
        socket: &'a Path,
    },
    /// For probes only: a virtio-pci device of vsock's PCI shape that needs
    /// nothing on the host, [`VSOCK_STAND_IN`].
    StandIn,
}

/// The device the ACPI probe puts where the TD has its vsock device.
///
/// QEMU's ACPI tables see a PCI device only as an occupied slot: the DSDT
/// describes slots (hotpluggable or not, display or not, acpi-index), never
/// device types, and the PCI windows in `_CRS` follow the BARs the firmware
/// assigned. Both vsock devices are non-transitional virtio 1.0 devices
/// (QEMU forces it for vsock) with 3 MSI-X vectors by default, so no legacy
/// I/O BAR, an MSI-X BAR and the 16 KiB modern BAR: this virtio-rng is the
/// same. It is hotpluggable like them and not a display device.
///
/// Checked byte for byte with QEMU 10.0.2 and OVMF 2022.11 (1 vCPU,
/// 1024 MiB): the probe with this device and the probe with
/// `vhost-user-vsock-pci` served by a real vhost-device-vsock read the same
/// three blobs; with no device in that slot all three differ. The e2e test
/// `acpi_probe` repeats the comparison against every QEMU it runs with.
/// `vhost-vsock-pci` (kernel) and `vhost-user-vsock-pci` share every PCI
/// property and default (`-device <name>,help`), so the kernel device,
/// which this host cannot open, matches too.
pub const VSOCK_STAND_IN: &str = "virtio-rng-pci-non-transitional,vectors=3";

/// The guest's devices and their host ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices<'a> {
    /// The serial console.
    pub serial: Serial<'a>,
    /// The data disk image (raw, virtio-blk).
    pub disk: &'a Path,
    /// Host forwards of the user-mode NIC, as QEMU's `hostfwd` values
    /// (`tcp:127.0.0.1:8080-:80`).
    pub host_forwards: &'a [String],
    /// The vsock device.
    pub vsock: Vsock<'a>,
}

/// A TD's machine: its shape, what it boots, and its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine<'a> {
    /// vCPUs and memory.
    pub shape: Shape,
    /// Firmware, kernel, initrd, command line.
    pub boot: BootFiles<'a>,
    /// Devices.
    pub devices: Devices<'a>,
}

/// Where the machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// A TD under KVM on a TDX host.
    Tdx {
        /// Binds the app into the TD's quotes (the TDX module reports it).
        mr_config_id: [u8; 48],
    },
    /// The ACPI probe: the same machine under TCG, as a plain VM (no TD),
    /// on any host.
    ProbeTcg {
        /// The physical address width the TD's firmware sees (CPUID
        /// 0x80000008), which decides where it puts the 64-bit PCI window
        /// that the DSDT describes; see [`TD_PHYS_BITS`].
        phys_bits: u8,
    },
}

/// The physical address width the ACPI probe's CPU reports by default: what
/// TDX hosts' TDs show their firmware, as far as we know (to be checked on
/// a TDX host).
///
/// OVMF places 64-bit PCI BARs in a window at the top eighth of the address
/// space its CPU reports, capping the width at 47 bits (OVMF 2022.11), or at
/// 40 bits when the CPU has no 1 GiB pages; QEMU's DSDT describes the
/// window from where the BARs landed. A TD always has 1 GiB pages (a
/// fixed-1 CPUID bit of TDX) and sees the host's width. Measured with QEMU
/// 10.0.2 and OVMF 2022.11, the window starts at 0xE0_0000_0000 for TCG's
/// plain `qemu64` (no 1 GiB pages, 40 bits), at 0x3800_0000_0000 with
/// `+pdpe1gb,phys-bits=46` and at 0x7000_0000_0000 with `phys-bits=52`;
/// the other blobs do not move. Upstream dstack's ACPI generator (a patched
/// QEMU) assumes 0x3800_0000_0000, i.e. 46 bits, for its TDs.
pub const TD_PHYS_BITS: u8 = 46;

/// q35 options a TD gets whether or not they are written, written so that
/// the probe's plain VM has them too; each changes QEMU's ACPI tables.
///
/// QEMU's TDX support (`tdx_kvm_init`, QEMU 10.1) turns SMM and the legacy
/// 8259 PIC off (and refuses them on), and upstream dstack runs its TDs
/// with `hpet=off`. The PIC shows in the MADT, SMM in the FADT (SMI command
/// port) and the HPET as a table of its own: with QEMU 10.0.2 and
/// OVMF 2022.11, leaving the three at their defaults changes all three
/// blobs, and `pic=off` alone changes the tables.
pub const TD_MACHINE_OPTIONS: &str = "hpet=off,smm=off,pic=off";

/// QEMU's arguments (without the program) for `machine` on `platform`.
/// Add only what does not reach the guest (`-name`, `-qmp`, `-monitor`).
pub fn machine_argv(machine: &Machine<'_>, platform: &Platform) -> Vec<String> {
    let Machine {
        shape,
        boot,
        devices,
    } = *machine;
    let memory = shape.memory_mb;
    let mut args = Strings::default();
    // memfd shared memory: vhost-user backends map guest RAM, and -m must
    // equal the backend size (DESIGN §6).
    args.push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory}M,share=on"),
    ]);
    let machine_type = match platform {
        Platform::Tdx { mr_config_id } => {
            args.push(&[
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-object",
                &format!(
                    "tdx-guest,id=tdx,mrconfigid={}",
                    base64::engine::general_purpose::STANDARD.encode(mr_config_id)
                ),
            ]);
            format!(
                "q35,confidential-guest-support=tdx,kernel-irqchip=split,\
                 memory-backend=mem,{TD_MACHINE_OPTIONS}"
            )
        }
        // TCG, because the probe must run where there is no KVM, and as a
        // plain VM, because only a TDX host can run a TD. What differs
        // from the TD cannot show in QEMU's ACPI tables (QEMU 10.0
        // sources, hw/i386):
        // - the accelerator: acpi-build.c and acpi-common.c never test it;
        //   the machine facts they read that depend on it are whether SMM
        //   is on when `smm=auto` (TCG: yes; KVM: if the host kernel has
        //   it; x86.c) and where the PIC lives, both fixed by
        //   TD_MACHINE_OPTIONS; the MADT's IRQ0 override is a constant of
        //   the machine class (pc.c);
        // - `kernel-irqchip=split` keeps the I/O APIC in QEMU, as TCG does:
        //   the MADT has the same I/O APIC at the same address;
        // - the CPU model: the tables list CPUs by APIC ID, never by model;
        //   but the firmware sizes the 64-bit PCI window the DSDT describes
        //   from the CPU's 1 GiB page support and physical address width,
        //   so the probe's CPU has both as a TD has them (TD_PHYS_BITS).
        //   Nothing else of the model counted in our runs (`-cpu max` and
        //   `qemu64` read the same blobs at 40 bits). `+rdrand` feeds the
        //   guest's entropy pool, as for the supervisor's TCG VMs;
        // - the `tdx-guest` object and `confidential-guest-support`: what
        //   TDX changes in the machine (tdx_kvm_init, QEMU 10.1) is SMM,
        //   the PIC and the split irqchip, all above.
        Platform::ProbeTcg { phys_bits } => {
            args.push(&[
                "-accel",
                "tcg",
                "-cpu",
                &format!("qemu64,+rdrand,+pdpe1gb,phys-bits={phys_bits}"),
            ]);
            format!("q35,memory-backend=mem,{TD_MACHINE_OPTIONS}")
        }
    };
    args.push(&[
        "-machine",
        &machine_type,
        // A TD always starts in TDVF, which measures the kernel, initrd and
        // command line it loads; there is no direct boot.
        "-bios",
        &display(boot.firmware),
        "-m",
        &format!("{memory}M"),
        "-smp",
        &shape.vcpus.to_string(),
        "-kernel",
        &display(boot.kernel),
        "-initrd",
        &display(boot.initrd),
        "-append",
        boot.cmdline,
        "-nographic",
        "-nodefaults",
        // A guest panic or reboot ends QEMU; the supervisor decides whether
        // to boot again (with back-off), instead of a silent reboot loop.
        "-no-reboot",
    ]);
    args.0.extend(devices_argv(&devices));
    args.0
}

/// The devices' arguments, in the order the guest sees them: serial
/// console, data disk, NIC, vsock. The supervisor's direct-boot (TCG, KVM)
/// VMs get the same devices.
pub fn devices_argv(devices: &Devices<'_>) -> Vec<String> {
    let mut args = Strings::default();
    let serial = match devices.serial {
        Serial::Socket(path) => format!("socket,id=ser0,path={},server=on,wait=off", display(path)),
        Serial::File(path) => format!("file,id=ser0,path={}", display(path)),
    };
    let mut netdev = String::from("user,id=net0");
    for forward in devices.host_forwards {
        netdev.push_str(",hostfwd=");
        netdev.push_str(forward);
    }
    args.push(&[
        "-chardev",
        &serial,
        "-serial",
        "chardev:ser0",
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,cache=writeback",
            display(devices.disk)
        ),
        "-netdev",
        &netdev,
        // romfile= skips the PXE option ROM: nothing boots from the network.
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]);
    match devices.vsock {
        Vsock::Kernel { cid } => {
            args.push(&["-device", &format!("vhost-vsock-pci,guest-cid={cid}")])
        }
        Vsock::VhostUser { socket } => args.push(&[
            "-chardev",
            &format!("socket,id=vc,path={}", display(socket)),
            "-device",
            "vhost-user-vsock-pci,chardev=vc",
        ]),
        Vsock::StandIn => args.push(&["-device", VSOCK_STAND_IN]),
    }
    args.0
}

/// A path as QEMU's option parser gets it.
fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[derive(Debug, Default)]
struct Strings(Vec<String>);

impl Strings {
    fn push(&mut self, items: &[&str]) {
        self.0.extend(items.iter().map(|s| (*s).to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FORWARDS: &[String] = &[];

    fn boot() -> BootFiles<'static> {
        BootFiles {
            firmware: Path::new("/i/ovmf.fd"),
            kernel: Path::new("/i/bzImage"),
            initrd: Path::new("/i/initramfs.cpio.lz4"),
            cmdline: "console=ttyS0 panic=-1",
        }
    }

    fn devices(vsock: Vsock<'static>) -> Devices<'static> {
        Devices {
            serial: Serial::Socket(Path::new("/vm/serial.sock")),
            disk: Path::new("/vm/disk.img"),
            host_forwards: FORWARDS,
            vsock,
        }
    }

    fn machine(vsock: Vsock<'static>) -> Machine<'static> {
        Machine {
            shape: Shape {
                vcpus: 2,
                memory_mb: 2048,
            },
            boot: boot(),
            devices: devices(vsock),
        }
    }

    #[test]
    fn a_td_boots_tdvf_with_the_options_tdx_forces() {
        let args = machine_argv(
            &machine(Vsock::Kernel { cid: 7 }),
            &Platform::Tdx {
                mr_config_id: [0; 48],
            },
        );
        let expected = [
            "-object",
            "memory-backend-memfd,id=mem,size=2048M,share=on",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-object",
            // 48 zero bytes, base64.
            &format!("tdx-guest,id=tdx,mrconfigid={}", "A".repeat(64)),
            "-machine",
            "q35,confidential-guest-support=tdx,kernel-irqchip=split,memory-backend=mem,\
             hpet=off,smm=off,pic=off",
            "-bios",
            "/i/ovmf.fd",
            "-m",
            "2048M",
            "-smp",
            "2",
            "-kernel",
            "/i/bzImage",
            "-initrd",
            "/i/initramfs.cpio.lz4",
            "-append",
            "console=ttyS0 panic=-1",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
            "-chardev",
            "socket,id=ser0,path=/vm/serial.sock,server=on,wait=off",
            "-serial",
            "chardev:ser0",
            "-drive",
            "file=/vm/disk.img,if=virtio,format=raw,cache=writeback",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
            "-device",
            "vhost-vsock-pci,guest-cid=7",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn the_mr_config_id_is_base64() {
        let mut id = [0u8; 48];
        id[0] = 0xff;
        let args = machine_argv(
            &machine(Vsock::StandIn),
            &Platform::Tdx { mr_config_id: id },
        );
        assert!(args.contains(&format!("tdx-guest,id=tdx,mrconfigid=/w{}", "A".repeat(62))));
    }

    #[test]
    fn the_probe_runs_the_td_machine_under_tcg() {
        let m = machine(Vsock::StandIn);
        let td = machine_argv(
            &m,
            &Platform::Tdx {
                mr_config_id: [1; 48],
            },
        );
        let probe = machine_argv(&m, &Platform::ProbeTcg { phys_bits: 46 });
        // The TD's accelerator, CPU and TD object become TCG's; the machine
        // loses exactly the TD's options; nothing else moves.
        let td_only = [
            "-accel", "kvm", "-cpu", "host", "-object", &td[7], "-machine", &td[9],
        ];
        assert!(td[7].starts_with("tdx-guest,"));
        let probe_only = [
            "-accel",
            "tcg",
            "-cpu",
            "qemu64,+rdrand,+pdpe1gb,phys-bits=46",
            "-machine",
            "q35,memory-backend=mem,hpet=off,smm=off,pic=off",
        ];
        assert_eq!(td[..2], probe[..2], "memory backend");
        assert_eq!(td[2..10], td_only);
        assert_eq!(probe[2..8], probe_only);
        assert_eq!(td[10..], probe[8..], "firmware, kernel, shape, devices");
        assert_eq!(
            td[9].replace("confidential-guest-support=tdx,kernel-irqchip=split,", ""),
            probe[7]
        );
    }

    #[test]
    fn devices_keep_their_order_and_host_ends() {
        let forwards = [
            "tcp:127.0.0.1:8080-:80".to_owned(),
            "udp:0.0.0.0:5353-:53".to_owned(),
        ];
        let socket = Path::new("/vm/vhost.sock");
        let args = devices_argv(&Devices {
            serial: Serial::File(Path::new("/p/serial.log")),
            disk: Path::new("/p/disk.img"),
            host_forwards: &forwards,
            vsock: Vsock::VhostUser { socket },
        });
        assert_eq!(
            args,
            [
                "-chardev",
                "file,id=ser0,path=/p/serial.log",
                "-serial",
                "chardev:ser0",
                "-drive",
                "file=/p/disk.img,if=virtio,format=raw,cache=writeback",
                "-netdev",
                "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53",
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
                "-chardev",
                "socket,id=vc,path=/vm/vhost.sock",
                "-device",
                "vhost-user-vsock-pci,chardev=vc",
            ]
        );
        let stand_in = devices_argv(&devices(Vsock::StandIn));
        assert_eq!(stand_in[stand_in.len() - 2..], ["-device", VSOCK_STAND_IN]);
    }
}
