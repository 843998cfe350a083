# Image type "dstack": the image directory `dstack image build` writes
# (bzImage, initramfs.cpio.lz4, ovmf.fd, metadata.json, sha256sum.txt,
# digest.txt), made from this build's kernel, root filesystem and firmware
# by dstack-image-seal, the reproducible/ crate's own code: the initramfs is
# packed and the metadata written exactly as the image build does, so
# `dstack image measure` and `dstack verify` take the result unchanged.
#
# The result is ${IMGDEPLOYDIR}/${DSTACK_IMAGE_NAME}/, named as its
# metadata.json names it (the supervisor lists images by that name), and
# the same directory as a tar, ${IMAGE_NAME}.dstack.

DSTACK_IMAGE_NAME ?= "dstack-yocto-${DISTRO_VERSION}"
# The inputs.lock packages the build takes as they are, recorded in
# metadata.json with their pins.
DSTACK_IMAGE_PINNED_PACKAGES ?= "linux-source-7.2 ovmf ca-certificates"

do_image_dstack[depends] += " \
    dstack-image-tools-native:do_populate_sysroot \
    virtual/kernel:do_deploy \
    ovmf-debian:do_deploy \
    dstack-init:do_deploy \
"

IMAGE_CMD:dstack() {
    packages=""
    for p in ${DSTACK_IMAGE_PINNED_PACKAGES}; do
        packages="$packages --package $p"
    done
    rm -rf ${IMGDEPLOYDIR}/${DSTACK_IMAGE_NAME}
    dstack-image-seal \
        --out ${IMGDEPLOYDIR} \
        --name ${DSTACK_IMAGE_NAME} \
        --kernel ${DEPLOY_DIR_IMAGE}/${KERNEL_IMAGETYPE} \
        --kernel-release "$(cat ${DEPLOY_DIR_IMAGE}/dstack-kernel.release)" \
        --rootfs ${IMAGE_ROOTFS} \
        --firmware ${DEPLOY_DIR_IMAGE}/ovmf.fd \
        --init-record ${DEPLOY_DIR_IMAGE}/dstack-init.build.json \
        --kernel-toolchain-file ${DEPLOY_DIR_IMAGE}/dstack-kernel.toolchain \
        $packages
    # The same directory as one file, the image type's artifact (and its
    # ${IMAGE_LINK_NAME}.dstack link): a tar with no owners or times, to
    # copy to a host's images directory.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
        --pax-option=delete=atime,delete=ctime \
        -C ${IMGDEPLOYDIR} -cf ${IMGDEPLOYDIR}/${IMAGE_NAME}.dstack ${DSTACK_IMAGE_NAME}
}

IMAGE_TYPES += "dstack"
