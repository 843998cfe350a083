SUMMARY = "The dstack-rs guest kernel"
DESCRIPTION = "Linux 7.2 from Debian's linux-source-7.2, configured from \
allnoconfig plus the fragments in reproducible/kernel/: everything built in, \
no modules, the TDX guest driver with TSM reports and measurements."
HOMEPAGE = "https://github.com/dstack-rs/dstack-rs"
SECTION = "kernel"
LICENSE = "GPL-2.0-only"
LIC_FILES_CHKSUM = "file://COPYING;md5=6bc538ed5bd9a7fc9398086aedcd7e46"

# The source `dstack image build` compiles: the linux-source .deb pinned in
# reproducible/inputs.lock (role kernel-source), by the lock's sha256.
DEBIAN_PINNED_PACKAGE = "linux-source-7.2"
DEBIAN_PINNED_SOURCE = "linux"
inherit debian_pinned

# The upstream release of the pinned package (7.2.12 of 7.2.12-1~bpo13+1).
LINUX_VERSION = "${@d.getVar('DEBIAN_PINNED_VERSION').split('-')[0]}"
PV = "${LINUX_VERSION}"

# The fragments, by name, in the order reproducible/src/kernel.rs merges
# them (FRAGMENTS), read from reproducible/kernel/ itself: there is no copy
# in the layer to drift. yocto/check compares this list and the files
# bitbake resolves with kernel.rs and the directory.
FILESEXTRAPATHS:prepend := "${DSTACK_SRC_DIR}/reproducible/kernel:"
DSTACK_KERNEL_FRAGMENTS = "base.config platform.config tdx.config virtio.config \
                           net.config storage.config containers.config hardening.config"
SRC_URI += "file://base.config \
            file://platform.config \
            file://tdx.config \
            file://virtio.config \
            file://net.config \
            file://storage.config \
            file://containers.config \
            file://hardening.config \
            "

S = "${UNPACKDIR}/${DEBIAN_PINNED_PACKAGE}"

inherit kernel

COMPATIBLE_MACHINE = "tdx-guest"
KERNEL_IMAGETYPE = "bzImage"
KERNEL_LOCALVERSION = ""

# The package ships the tree as a tarball: unpack it where S points.
do_unpack[postfuncs] += "dstack_unpack_kernel_tree"
python dstack_unpack_kernel_tree() {
    import subprocess
    unpackdir = d.getVar("UNPACKDIR")
    name = d.getVar("DEBIAN_PINNED_PACKAGE")
    tarball = os.path.join(unpackdir, "debian", "usr", "src", name + ".tar.xz")
    if not os.path.exists(tarball):
        bb.fatal("%s has no /usr/src/%s.tar.xz" % (name, name + ".tar.xz"))
    subprocess.run(["tar", "-xJf", tarball, "-C", unpackdir], check=True)
    os.unlink(tarball)
}

# As reproducible/src/kernel.rs configures it: `make allnoconfig` with the
# fragments concatenated (each followed by a newline) as KCONFIG_ALLCONFIG,
# then every option a fragment sets must be in the generated .config as
# asked, since Kconfig silently drops an option whose dependencies are off.
KERNEL_CONFIG_COMMAND = "oe_runmake_call -C ${S} O=${B} allnoconfig KCONFIG_ALLCONFIG=${B}/dstack.config"
do_configure:prepend() {
    : > ${B}/dstack.config
    for fragment in ${DSTACK_KERNEL_FRAGMENTS}; do
        cat ${UNPACKDIR}/$fragment >> ${B}/dstack.config
        echo >> ${B}/dstack.config
    done
}
do_configure[postfuncs] += "dstack_check_kernel_config"
python dstack_check_kernel_config() {
    import re
    wanted = []
    for name in d.getVar("DSTACK_KERNEL_FRAGMENTS").split():
        with open(os.path.join(d.getVar("UNPACKDIR"), name)) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    wanted.append(tuple(line.split("=", 1)))
    config = {}
    with open(os.path.join(d.getVar("B"), ".config")) as f:
        for line in f:
            match = re.match(r"^(CONFIG_[A-Z0-9_]+)=(.*)$", line.rstrip("\n"))
            if match:
                config[match.group(1)] = match.group(2)
    unmet = ["%s=%s (got %s)" % (k, v, config.get(k, "n")) for k, v in wanted if config.get(k, "n") != v]
    if unmet:
        bb.fatal("kernel config: Kconfig dropped options the fragments ask for: " + ", ".join(unmet))
}

# The image build's fixed build identity: `uname -v` and the bzImage carry
# no build time, user or host. SOURCE_DATE_EPOCH 0 makes kernel.bbclass take
# REPRODUCIBLE_TIMESTAMP_ROOTFS, also 0: "Thu Jan  1 00:00:00 UTC 1970".
SOURCE_DATE_EPOCH = "0"
REPRODUCIBLE_TIMESTAMP_ROOTFS = "0"
export KBUILD_BUILD_USER = "dstack"
export KBUILD_BUILD_HOST = "dstack"
export KBUILD_BUILD_VERSION = "1"

# The generated config and release beside the bzImage, to compare with the
# image build's kernel cache (<key>/config, <key>/release).
# The toolchain lines are what metadata.json records for the kernel build.
do_deploy:append() {
    install -m 0644 ${B}/.config ${DEPLOYDIR}/dstack-kernel.config
    install -m 0644 ${B}/include/config/kernel.release ${DEPLOYDIR}/dstack-kernel.release
    {
        ${KERNEL_CC} --version | head -n1
        ${KERNEL_LD} --version | head -n1
        make --version | head -n1
    } > ${DEPLOYDIR}/dstack-kernel.toolchain
}
