SUMMARY = "The dstack-rs guest OS image"
DESCRIPTION = "Our kernel, an initramfs whose PID1 is dstack-init with exactly \
what it needs (mke2fs for the data disk, the CA roots, the engine pin), and the \
firmware, sealed into the directory dstack image build writes."
LICENSE = "MIT"

# The initramfs: dstack-init as /init, a static mke2fs (and mke2fs.conf)
# for the encrypted data disk, and the directories, CA bundle and engine pin
# of dstack-guest-base; two static binaries, no shared library or loader.
# Set as PACKAGE_INSTALL itself, so no image feature, bootstrap package
# (run-postinsts) or locale is added.
PACKAGE_INSTALL = "dstack-init dstack-guest-base dstack-mke2fs"
IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
NO_RECOMMENDATIONS = "1"
# Anything that would bring a shell, a service manager, a package manager or
# busybox fails the rootfs instead of entering the image.
PACKAGE_EXCLUDE = "busybox* bash* dash* mksh* zsh* tcsh* systemd* sysvinit* opkg* update-alternatives-opkg rpm* dnf* apt* dpkg* base-files base-passwd"

IMAGE_FSTYPES = "dstack"
inherit image image_types_dstack

# The initramfs holds the packages' files and nothing else (no /etc/timestamp).
ROOTFS_POSTPROCESS_COMMAND:remove = "rootfs_update_timestamp"

# The image is a kernel and one initramfs: the rootfs size estimate of disk
# images does not apply.
IMAGE_ROOTFS_EXTRA_SPACE = "0"
COMPATIBLE_MACHINE = "tdx-guest"
