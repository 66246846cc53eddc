# nooelint: oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT
SUMMARY = "MIG appliance image: verified read-only root, A/B slots and the factory disk"
DESCRIPTION = "The root file system of the MIG appliance (migd, migctl, RAUC, the TPM stack) \
               as a dm-verity protected erofs image, the unified kernel image that names \
               its root hash, and the factory disk: ESP with systemd-boot, root A and B with \
               their verity partitions, and room for the TPM-sealed state partition made at \
               first boot."
SECTION = "images"
LICENSE = "MIT"

# Before the inherit: mig_verity_uki (dm-verity-img) adds the verity image types to it.
IMAGE_FSTYPES = "wic wic.bmap"

inherit core-image mig_verity_uki

IMAGE_INSTALL = "\
    packagegroup-core-boot \
    migd \
    migctl \
    mig-boot \
    rauc \
    tpm2-tools \
    ${CORE_IMAGE_EXTRA_INSTALL} \
"
IMAGE_LINGUAS = ""
# Boots are marked good by systemd-bless-boot after mig-health.service, never unconditionally.
BAD_RECOMMENDATIONS += "rauc-mark-good"
IMAGE_FEATURES += "read-only-rootfs"

INITRAMFS_IMAGE = "mig-initramfs"
UKI_FILENAME = "mig.efi"
# The factory disk boots slot A; an update installs the other slot's UKI beside it (the
# bundle's hook).
IMAGE_EFI_BOOT_FILES = "${UKI_FILENAME};EFI/Linux/mig-a.efi"

WKS_FILE = "mig-ab.wks.in"
WKS_FILE_DEPENDS += "systemd-boot"
MIG_ESP_SIZE ?= "256M"
MIG_ROOT_SIZE ?= "1024M"
MIG_VERITY_SIZE ?= "32M"
# Unpartitioned room after the last slot for the state partition (sparse: costs no space in
# the file, and bmaptool does not write it). A real disk is larger and needs none.
MIG_STATE_ROOM ?= "2G"

IMAGE_CMD:wic:append() {
    truncate -s +${MIG_STATE_ROOM} "${IMGDEPLOYDIR}/${IMAGE_NAME}.wic"
}

# runqemu / testimage: boot the disk through UEFI firmware (runqemu's "ovmf"); kernel, initrd
# and command line come from the UKI on the ESP.
QB_DEFAULT_FSTYPE = "wic"
QB_KERNEL_ROOT = ""
QB_DEFAULT_KERNEL = "none"
