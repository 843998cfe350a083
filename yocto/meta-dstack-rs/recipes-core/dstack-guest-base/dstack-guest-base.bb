SUMMARY = "The files dstack-init expects in its initramfs, besides itself and mke2fs"
DESCRIPTION = "The directories PID1 mounts on, the Mozilla CA bundle its \
registry and KMS clients trust, and the pin of the container engine image."
HOMEPAGE = "https://github.com/dstack-rs/dstack-rs"
LICENSE = "Apache-2.0 & MPL-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10 \
                    file://${COMMON_LICENSE_DIR}/MPL-2.0;md5=815ca599c9df247a0c7f619bab123dad"

# The CA roots are the same Debian package `dstack image build` uses
# (inputs.lock role ca-certificates), so both images trust the same bundle.
DEBIAN_PINNED_PACKAGE = "ca-certificates"
DEBIAN_PINNED_SOURCE = "ca-certificates"
inherit debian_pinned allarch

S = "${UNPACKDIR}/debian"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# The bundle as reproducible/src/certs.rs makes it (what Debian's
# update-ca-certificates makes for the default selection, without running
# a maintainer script): every mozilla/*.crt in byte order of its name, each
# ending in a newline.
python do_install() {
    import dstack.reproducible
    dest = d.getVar("D")
    mozilla = os.path.join(d.getVar("S"), "usr", "share", "ca-certificates", "mozilla")
    names = sorted((n for n in os.listdir(mozilla) if n.endswith(".crt")), key=lambda n: n.encode())
    if not names:
        bb.fatal("no mozilla/*.crt in %s" % mozilla)
    bundle = bytearray()
    for name in names:
        with open(os.path.join(mozilla, name), "rb") as f:
            pem = f.read()
        bundle += pem if pem.endswith(b"\n") else pem + b"\n"
    certs = os.path.join(dest, "etc", "ssl", "certs")
    os.makedirs(certs, exist_ok=True)
    with open(os.path.join(certs, "ca-certificates.crt"), "wb") as f:
        f.write(bundle)
    # The engine image the guest may pull, by digest (inputs.lock [engine]);
    # part of the OS image hash, as in `dstack image build`.
    etc_dstack = os.path.join(dest, "etc", "dstack")
    os.makedirs(etc_dstack, exist_ok=True)
    with open(os.path.join(etc_dstack, "engine-image"), "w") as f:
        f.write(dstack.reproducible.engine_reference(d.getVar("DSTACK_SRC_DIR")) + "\n")
    # The directories PID1 mounts on or writes to, with the image build's modes.
    for path, mode in (("data", 0o755), ("dev", 0o755), ("proc", 0o555), ("run", 0o755),
                       ("sys", 0o555), ("tmp", 0o1777), ("var/run", 0o755)):
        os.makedirs(os.path.join(dest, path), exist_ok=True)
        os.chmod(os.path.join(dest, path), mode)
}
# The engine pin is read from the lock when the task runs: a new pin must
# rerun it.
do_install[file-checksums] += "${DSTACK_SRC_DIR}/reproducible/inputs.lock:True"

FILES:${PN} = "/data /dev /proc /run /sys /tmp /var/run \
               ${sysconfdir}/ssl/certs/ca-certificates.crt ${sysconfdir}/dstack/engine-image"
