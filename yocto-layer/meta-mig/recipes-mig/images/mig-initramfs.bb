# nooelint: oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
SUMMARY = "systemd initrd for the MIG appliance"
DESCRIPTION = "A systemd initrd that opens the dm-verity root named by roothash= on the \
               kernel command line (systemd-veritysetup-generator) and switches to it."
SECTION = "images"
LICENSE = "MIT"

PACKAGE_INSTALL = "\
    base-files \
    base-passwd \
    kmod \
    os-release \
    systemd \
    systemd-initramfs \
    systemd-udev-rules \
    udev \
    ${MACHINE_ESSENTIAL_EXTRA_RDEPENDS} \
"

IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""
# Modules come from the kernel config (mig.cfg builds dm-verity and erofs in).
PACKAGE_EXCLUDE = "kernel-image-*"
IMAGE_FSTYPES = "${INITRAMFS_FSTYPES}"
IMAGE_NAME_SUFFIX ?= ""

inherit image

# The kernel starts /init (systemd-initramfs); systemd behaves as an initrd when
# /etc/initrd-release exists.
ROOTFS_POSTPROCESS_COMMAND += "mig_initrd_release"
mig_initrd_release[doc] = "Marks the image as an initrd for systemd (/etc/initrd-release)"
mig_initrd_release() {
    ln -sf ..${nonarch_libdir}/os-release ${IMAGE_ROOTFS}${sysconfdir}/initrd-release
}
