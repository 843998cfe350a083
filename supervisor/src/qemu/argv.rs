//! The QEMU command line, built from a VM's manifest and image by a pure
//! function so every flag is unit-tested without starting anything.

use crate::accel::Accel;
use crate::images::Image;
use crate::state::{Manifest, VmDir};
use base64::Engine as _;

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

/// QEMU's arguments (without the program).
pub fn qemu_argv(spec: &QemuSpec<'_>) -> Vec<String> {
    let QemuSpec {
        manifest,
        dir,
        image,
        accel,
        vsock,
        mr_config_id,
    } = *spec;
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    let memory = manifest.memory_mb;
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));

    push(&["-name", &name_arg(&manifest.id)]);
    // memfd shared memory: vhost-user backends map guest RAM, and -m must
    // equal the backend size (DESIGN §6).
    push(&[
        "-object",
        &format!("memory-backend-memfd,id=mem,size={memory}M,share=on"),
    ]);
    match accel {
        // TCG's default CPU has no RDRAND: the guest's entropy pool then
        // takes seconds to fill and everything that needs randomness at
        // boot (mke2fs, key generation) waits. `max` slows the kernel boot.
        Accel::Tcg => push(&[
            "-accel",
            "tcg",
            "-cpu",
            "qemu64,+rdrand",
            "-machine",
            "q35,memory-backend=mem",
        ]),
        Accel::Kvm => push(&[
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "q35,memory-backend=mem",
        ]),
        Accel::Tdx => push(&[
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-object",
            &format!(
                "tdx-guest,id=tdx,mrconfigid={}",
                base64::engine::general_purpose::STANDARD.encode(mr_config_id)
            ),
            "-machine",
            "q35,confidential-guest-support=tdx,kernel-irqchip=split,memory-backend=mem",
            // A TD always starts in TDVF, which measures the kernel, initrd
            // and command line it loads; there is no direct boot.
            "-bios",
            &path(image.bios.clone()),
        ]),
    }
    push(&[
        "-m",
        &format!("{memory}M"),
        "-smp",
        &manifest.vcpu.to_string(),
        "-kernel",
        &path(image.kernel.clone()),
        "-initrd",
        &path(image.initrd.clone()),
        "-append",
        &image.cmdline,
        "-nographic",
        "-nodefaults",
        // A guest panic or reboot ends QEMU; the supervisor decides whether
        // to boot again (with back-off), instead of a silent reboot loop.
        "-no-reboot",
        // The serial console is a socket the supervisor reads (and reconnects
        // to after its own restart) so it can rotate serial.log; a file
        // chardev could not be rotated under QEMU's feet.
        "-chardev",
        &format!(
            "socket,id=ser0,path={},server=on,wait=off",
            path(dir.serial_sock())
        ),
        "-serial",
        "chardev:ser0",
        "-qmp",
        &format!("unix:{},server=on,wait=off", path(dir.qmp_sock())),
        "-drive",
        &format!(
            "file={},if=virtio,format=raw,cache=writeback",
            path(dir.disk())
        ),
        "-netdev",
        &netdev(manifest),
        // romfile= skips the PXE option ROM: nothing boots from the network.
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]);
    match vsock {
        VsockKind::Kernel => push(&[
            "-device",
            &format!("vhost-vsock-pci,guest-cid={}", manifest.cid),
        ]),
        VsockKind::VhostUser => push(&[
            "-chardev",
            &format!("socket,id=vc,path={}", path(dir.vhost_sock())),
            "-device",
            "vhost-user-vsock-pci,chardev=vc",
        ]),
    }
    args
}

/// `-netdev user,...` with one host forward per published port.
fn netdev(manifest: &Manifest) -> String {
    let mut netdev = String::from("user,id=net0");
    for port in &manifest.ports {
        netdev.push_str(&format!(
            ",hostfwd={}:{}:{}-:{}",
            port.protocol, port.host_address, port.host_port, port.vm_port
        ));
    }
    netdev
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
        assert_eq!(value(&args, "-accel"), "kvm");
        assert_eq!(
            values(&args, "-object"),
            [
                "memory-backend-memfd,id=mem,size=512M,share=on",
                // 48 zero bytes, base64.
                &format!("tdx-guest,id=tdx,mrconfigid={}", "A".repeat(64))
            ]
        );
        assert_eq!(
            value(&args, "-machine"),
            "q35,confidential-guest-support=tdx,kernel-irqchip=split,memory-backend=mem"
        );
        assert_eq!(value(&args, "-bios"), "/i/ovmf.fd");
        assert_eq!(value(&args, "-kernel"), "/i/bzImage");
    }

    #[test]
    fn no_ports_is_plain_user_net() {
        let mut manifest = manifest();
        manifest.ports.clear();
        assert_eq!(netdev(&manifest), "user,id=net0");
    }
}
