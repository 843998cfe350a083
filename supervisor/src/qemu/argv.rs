//! The QEMU command line, built from a VM's manifest and image by a pure
//! function so every flag is unit-tested without starting anything.

use dstack_machine::{
    BootFiles, Devices, Machine, Platform, Serial, Shape, Vsock, devices_argv, machine_argv,
};

use crate::accel::Accel;
use crate::images::Image;
use crate::state::{Manifest, VmDir};

/// How the guest gets its vsock device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockKind {
    /// The kernel's vhost-vsock (`/dev/vhost-vsock`); CIDs are host-wide.
    Kernel,
    /// vhost-device-vsock over a vhost-user socket (DESIGN §6).
    VhostUser,
}

/// Everything the command line depends on.
#[derive(Debug, Clone, Copy)]
pub struct QemuSpec<'a> {
    /// The VM.
    pub manifest: &'a Manifest,
    /// Its directory.
    pub dir: &'a VmDir,
    /// The OS image it boots.
    pub image: &'a Image,
    /// The accelerator.
    pub accel: Accel,
    /// The vsock device.
    pub vsock: VsockKind,
    /// `mr_config_id` binding the app into the TD's quotes (TDX only).
    pub mr_config_id: [u8; 48],
}

/// The process name QEMU runs under (`comm`, at most 15 bytes for 8-hex ids).
pub fn process_name(id: &str) -> String {
    format!("dstack-{id}")
}

/// The `-name` value. It appears verbatim in `/proc/<pid>/cmdline`, which is
/// how a restarted supervisor recognises its QEMU (see `process::is_ours`).
pub fn name_arg(id: &str) -> String {
    let name = process_name(id);
    format!("{name},process={name}")
}

/// QEMU's arguments (without the program). A TD's machine and devices
/// come from `dstack-machine`, whose ACPI probe boots the very same layout;
/// direct-boot (TCG, KVM) VMs get the same devices.
pub fn qemu_argv(spec: &QemuSpec<'_>) -> Vec<String> {
    let QemuSpec {
        manifest,
        dir,
        image,
        accel,
        vsock,
        mr_config_id,
    } = *spec;
    let (serial_sock, disk, vhost_sock) = (dir.serial_sock(), dir.disk(), dir.vhost_sock());
    let host_forwards = host_forwards(manifest);
    let devices = Devices {
        serial: Serial::Socket(&serial_sock),
        disk: &disk,
        host_forwards: &host_forwards,
        vsock: match vsock {
            VsockKind::Kernel => Vsock::Kernel { cid: manifest.cid },
            VsockKind::VhostUser => Vsock::VhostUser {
                socket: &vhost_sock,
            },
        },
    };
    let mut args: Vec<String> = vec!["-name".into(), name_arg(&manifest.id)];
    let direct = |accel: &str, cpu: &str| {
        let memory = manifest.memory_mb;
        let mut args: Vec<String> = [
            // memfd shared memory: vhost-user backends map guest RAM, and
            // -m must equal the backend size (DESIGN §6).
            "-object",
            &format!("memory-backend-memfd,id=mem,size={memory}M,share=on"),
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-machine",
            "q35,memory-backend=mem",
            "-m",
            &format!("{memory}M"),
            "-smp",
            &manifest.vcpu.to_string(),
            "-kernel",
            &path(&image.kernel),
            "-initrd",
            &path(&image.initrd),
            "-append",
            &image.cmdline,
            "-nographic",
            "-nodefaults",
            // A guest panic or reboot ends QEMU; the supervisor decides
            // whether to boot again (with back-off), instead of a silent
            // reboot loop.
            "-no-reboot",
        ]
        .map(String::from)
        .into();
        args.extend(devices_argv(&devices));
        args
    };
    args.extend(match accel {
        // TCG's default CPU has no RDRAND: the guest's entropy pool then
        // takes seconds to fill and everything that needs randomness at
        // boot (mke2fs, key generation) waits. `max` slows the kernel boot.
        Accel::Tcg => direct("tcg", "qemu64,+rdrand"),
        Accel::Kvm => direct("kvm", "host"),
        Accel::Tdx => machine_argv(
            &Machine {
                shape: Shape {
                    vcpus: manifest.vcpu,
                    memory_mb: manifest.memory_mb,
                },
                boot: BootFiles {
                    firmware: &image.bios,
                    kernel: &image.kernel,
                    initrd: &image.initrd,
                    cmdline: &image.cmdline,
                },
                devices,
            },
            &Platform::Tdx { mr_config_id },
        ),
    });
    args.push("-qmp".into());
    args.push(format!("unix:{},server=on,wait=off", path(&dir.qmp_sock())));
    args
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The user-mode NIC's `hostfwd` values, one per published port.
fn host_forwards(manifest: &Manifest) -> Vec<String> {
    manifest
        .ports
        .iter()
        .map(|port| {
            format!(
                "{}:{}:{}-:{}",
                port.protocol, port.host_address, port.host_port, port.vm_port
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use dstack_proto::supervisor::PortMapping;

    use super::*;
    use crate::state::Desired;

    fn manifest() -> Manifest {
        Manifest {
            id: "0a1b2c3d".into(),
            name: "web".into(),
            image: "img".into(),
            vcpu: 2,
            memory_mb: 512,
            disk_gb: 4,
            ports: vec![
                PortMapping {
                    protocol: "tcp".into(),
                    host_address: "127.0.0.1".into(),
                    host_port: 8080,
                    vm_port: 80,
                },
                PortMapping {
                    protocol: "udp".into(),
                    host_address: "0.0.0.0".into(),
                    host_port: 5353,
                    vm_port: 53,
                },
            ],
            encrypted_env: String::new(),
            user_config: String::new(),
            cid: 7,
            created_at_ms: 0,
            desired: Desired::Running,
            kms_urls: vec![],
            gateway_urls: vec![],
            format_nonempty_disk: false,
        }
    }

    fn image() -> Image {
        let images = tempfile::tempdir().unwrap();
        crate::test_util::write_image(images.path(), "img", "1.0");
        let mut image = crate::images::ImageCatalog::new(images.path().to_owned())
            .resolve("img")
            .unwrap();
        image.kernel = PathBuf::from("/i/bzImage");
        image.initrd = PathBuf::from("/i/initramfs.cpio.gz");
        image.bios = PathBuf::from("/i/ovmf.fd");
        image.cmdline = "console=ttyS0 panic=1".into();
        image
    }

    fn argv(accel: Accel, vsock: VsockKind) -> Vec<String> {
        let manifest = manifest();
        let dir = VmDir::new(Path::new("/s/vms"), &manifest.id);
        let image = image();
        qemu_argv(&QemuSpec {
            manifest: &manifest,
            dir: &dir,
            image: &image,
            accel,
            vsock,
            mr_config_id: [0; 48],
        })
    }

    /// The value following `flag` (the first occurrence).
    fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        &args[at + 1]
    }

    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_boots_directly_with_every_device() {
        let args = argv(Accel::Tcg, VsockKind::VhostUser);
        assert_eq!(
            value(&args, "-name"),
            "dstack-0a1b2c3d,process=dstack-0a1b2c3d"
        );
        assert_eq!(value(&args, "-accel"), "tcg");
        assert_eq!(value(&args, "-machine"), "q35,memory-backend=mem");
        assert_eq!(
            values(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(value(&args, "-m"), "512M");
        assert_eq!(value(&args, "-smp"), "2");
        assert_eq!(value(&args, "-kernel"), "/i/bzImage");
        assert_eq!(value(&args, "-initrd"), "/i/initramfs.cpio.gz");
        assert_eq!(value(&args, "-append"), "console=ttyS0 panic=1");
        assert!(!args.iter().any(|a| a == "-bios"));
        assert_eq!(value(&args, "-cpu"), "qemu64,+rdrand");
        for flag in ["-nographic", "-nodefaults", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(
            values(&args, "-chardev"),
            [
                "socket,id=ser0,path=/s/vms/0a1b2c3d/serial.sock,server=on,wait=off",
                "socket,id=vc,path=/s/vms/0a1b2c3d/vhost.sock",
            ]
        );
        assert_eq!(value(&args, "-serial"), "chardev:ser0");
        assert_eq!(
            value(&args, "-qmp"),
            "unix:/s/vms/0a1b2c3d/qmp.sock,server=on,wait=off"
        );
        assert_eq!(
            value(&args, "-drive"),
            "file=/s/vms/0a1b2c3d/disk.img,if=virtio,format=raw,cache=writeback"
        );
        assert_eq!(
            value(&args, "-netdev"),
            "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53"
        );
        assert_eq!(
            values(&args, "-device"),
            [
                "virtio-net-pci,netdev=net0,romfile=",
                "vhost-user-vsock-pci,chardev=vc"
            ]
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu_and_kernel_vsock() {
        let args = argv(Accel::Kvm, VsockKind::Kernel);
        assert_eq!(value(&args, "-accel"), "kvm");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(value(&args, "-machine"), "q35,memory-backend=mem");
        assert_eq!(values(&args, "-device")[1], "vhost-vsock-pci,guest-cid=7");
        assert_eq!(values(&args, "-chardev").len(), 1, "no vhost-user chardev");
    }

    #[test]
    fn tdx_goes_through_the_firmware() {
        let args = argv(Accel::Tdx, VsockKind::Kernel);
        assert_eq!(
            value(&args, "-name"),
            "dstack-0a1b2c3d,process=dstack-0a1b2c3d"
        );
        assert_eq!(value(&args, "-accel"), "kvm");
        assert_eq!(value(&args, "-cpu"), "host");
        assert_eq!(
            values(&args, "-object"),
            [
                "memory-backend-memfd,id=mem,size=512M,share=on",
                // 48 zero bytes, base64.
                &format!("tdx-guest,id=tdx,mrconfigid={}", "A".repeat(64))
            ]
        );
        // What QEMU's TDX forces (SMM and PIC off), and no HPET, written
        // out so that the ACPI probe's plain VM has them too.
        assert_eq!(
            value(&args, "-machine"),
            "q35,confidential-guest-support=tdx,kernel-irqchip=split,memory-backend=mem,\
             hpet=off,smm=off,pic=off"
        );
        assert_eq!(value(&args, "-bios"), "/i/ovmf.fd");
        assert_eq!(value(&args, "-m"), "512M");
        assert_eq!(value(&args, "-smp"), "2");
        assert_eq!(value(&args, "-kernel"), "/i/bzImage");
        assert_eq!(value(&args, "-initrd"), "/i/initramfs.cpio.gz");
        assert_eq!(value(&args, "-append"), "console=ttyS0 panic=1");
        assert_eq!(
            value(&args, "-qmp"),
            "unix:/s/vms/0a1b2c3d/qmp.sock,server=on,wait=off"
        );
        assert_eq!(values(&args, "-device")[1], "vhost-vsock-pci,guest-cid=7");
    }

    #[test]
    fn every_accelerator_gets_the_same_devices() {
        let devices = |args: &[String]| -> Vec<String> {
            let from = args.iter().position(|a| a == "-chardev").unwrap();
            let to = args.iter().position(|a| a == "-qmp").unwrap();
            args[from..to].to_vec()
        };
        for vsock in [VsockKind::Kernel, VsockKind::VhostUser] {
            let tcg = devices(&argv(Accel::Tcg, vsock));
            assert_eq!(tcg, devices(&argv(Accel::Kvm, vsock)));
            assert_eq!(tcg, devices(&argv(Accel::Tdx, vsock)));
        }
    }

    #[test]
    fn no_ports_is_plain_user_net() {
        let mut manifest = manifest();
        manifest.ports.clear();
        assert!(host_forwards(&manifest).is_empty());
        let dir = VmDir::new(Path::new("/s/vms"), &manifest.id);
        let image = image();
        let args = qemu_argv(&QemuSpec {
            manifest: &manifest,
            dir: &dir,
            image: &image,
            accel: Accel::Tcg,
            vsock: VsockKind::VhostUser,
            mr_config_id: [0; 48],
        });
        assert_eq!(value(&args, "-netdev"), "user,id=net0");
    }
}
