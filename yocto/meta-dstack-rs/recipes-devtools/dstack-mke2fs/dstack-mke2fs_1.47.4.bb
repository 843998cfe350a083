SUMMARY = "mke2fs alone, statically linked: what dstack-init formats the data disk with"
DESCRIPTION = "mke2fs and mke2fs.conf from e2fsprogs, built with e2fsprogs' \
own uuid and blkid libraries and linked statically, so the initramfs carries \
one file and no shared libraries or loader for it."
HOMEPAGE = "http://e2fsprogs.sourceforge.net/"
SECTION = "base"
LICENSE = "GPL-2.0-only & LGPL-2.0-only & BSD-3-Clause & MIT"
LIC_FILES_CHKSUM = "file://NOTICE;md5=d50be0580c0b0a7fbc7a4830bbe6c12b"

# The e2fsprogs source oe-core builds (e2fsprogs_1.47.4.bb, same commit).
# oe-core's e2fsprogs recipe itself is not used: it links util-linux's
# libraries, and its other packages need bash and perl, which would put a
# shell into the image's task graph; this recipe depends on nothing but the
# C library.
SRC_URI = "git://git.kernel.org/pub/scm/fs/ext2/e2fsprogs.git;branch=master;protocol=https"
SRCREV = "ece89fac4603e400155b7bbf6326284f8511bca9"

inherit autotools gettext texinfo pkgconfig

EXTRA_OECONF = "--sbindir=${base_sbindir} --disable-elf-shlibs \
                --enable-libuuid --enable-libblkid --disable-uuidd --disable-fsck \
                --disable-debugfs --disable-imager --disable-resizer --disable-defrag \
                --disable-fuse2fs --disable-nls --without-libarchive \
                --enable-verbose-makecmds --with-crond-dir=no \
                --with-udev-rules-dir=no --with-systemd-unit-dir=no"

do_compile() {
    oe_runmake libs
    oe_runmake -C misc mke2fs.static mke2fs.conf
}

# Where dstack image build puts them (and dstack-init runs /sbin/mke2fs).
do_install() {
    install -D -m 0755 ${B}/misc/mke2fs.static ${D}${base_sbindir}/mke2fs
    install -D -m 0644 ${B}/misc/mke2fs.conf ${D}${sysconfdir}/mke2fs.conf
}

FILES:${PN} = "${base_sbindir}/mke2fs ${sysconfdir}/mke2fs.conf"
