SUMMARY = "The TDVF the TD boots: Debian's OVMF build, as dstack image build ships it"
DESCRIPTION = "OVMF.fd from the Debian ovmf package pinned in \
reproducible/inputs.lock (edk2 2025.02, whose OvmfPkgX64 build measures into \
the RTMRs on TDX), deployed as ovmf.fd."
HOMEPAGE = "https://github.com/dstack-rs/dstack-rs"
LICENSE = "BSD-2-Clause-Patent"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/BSD-2-Clause-Patent;md5=0518d409dae93098cca8dfa932f3ab1b"

# The same bytes as `dstack image build`'s ovmf.fd, not a rebuild: the
# firmware is measured into MRTD and RTMR0, and verifiers pin those values
# (and the CFV digest upstream's verifier knows). oe-core's ovmf recipe
# builds another edk2 release from git with another compiler, whose
# measurements would differ; Debian builds this one reproducibly from its
# edk2 source package of the same version.
DEBIAN_PINNED_PACKAGE = "ovmf"
DEBIAN_PINNED_SOURCE = "edk2"
inherit debian_pinned deploy

# The edk2 release of the pinned package (2025.02 of 2025.02-8+deb13u1).
PV = "${@d.getVar('DEBIAN_PINNED_VERSION').split('-')[0]}"

S = "${UNPACKDIR}/debian"

do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${S}/usr/share/ovmf/OVMF.fd ${DEPLOYDIR}/ovmf.fd
}
addtask deploy after do_unpack before do_build

# Nothing of it goes into a package: the firmware is an image file.
PACKAGES = ""
EXCLUDE_FROM_WORLD = "1"
COMPATIBLE_HOST = "x86_64.*-linux.*"
