SUMMARY = "dstack-image-seal: the image step of dstack image build, for the build host"
DESCRIPTION = "The reproducible/ crate's seal example: packs a root filesystem \
into the initramfs and writes metadata.json, sha256sum.txt and digest.txt \
with the code `dstack image build` uses."
HOMEPAGE = "https://github.com/dstack-rs/dstack-rs"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Built from the repository, as dstack-init is (dstack_workspace.bbclass);
# its inputs.lock and kernel fragment list are compiled in, so the metadata
# it writes names this tree's pins.
require dstack-image-tools-crates.inc

inherit dstack_workspace
inherit_defer native

do_compile() {
    oe_cargo_build -p dstack-reproducible --example seal
}

do_install() {
    install -D -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/examples/seal ${D}${bindir}/dstack-image-seal
}
