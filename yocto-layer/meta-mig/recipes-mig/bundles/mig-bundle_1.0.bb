# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT,oelint.var.bbclassextend
SUMMARY = "MIG appliance update bundle (RAUC, verity format)"
DESCRIPTION = "A signed RAUC bundle with the erofs root and its dm-verity hash tree for the \
               inactive slot, the unified kernel image that names the new root hash, and the \
               hooks that refuse an older version and install the UKI with fresh \
               boot-counting tries."
SECTION = "images"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://mig-bundle-hook;beginline=2;endline=2;md5=653b254f286b881bdce1d14afdede628"
# No HOMEPAGE, BUGTRACKER or CVE_PRODUCT: the project has no public site and no CPE yet.

SRC_URI = "file://mig-bundle-hook"

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "${MIG_RAUC_COMPATIBLE}"
MIG_RAUC_COMPATIBLE ?= "mig-appliance-${MACHINE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_FORMAT = "verity"

RAUC_BUNDLE_HOOKS[file] = "mig-bundle-hook"
RAUC_BUNDLE_HOOKS[hooks] = "install-check"

RAUC_BUNDLE_SLOTS = "rootfs verity"
RAUC_SLOT_rootfs = "mig-image"
RAUC_SLOT_rootfs[fstype] = "erofs-lz4hc.verity"
RAUC_SLOT_rootfs[imagetype] = "raw"
RAUC_SLOT_rootfs[rename] = "root.erofs"
# The hash tree is written after its root; its post-install hook finishes the slot.
RAUC_SLOT_verity = "mig-image"
RAUC_SLOT_verity[file] = "mig-image${IMAGE_MACHINE_SUFFIX}${IMAGE_NAME_SUFFIX}.erofs-lz4hc.vhash"
RAUC_SLOT_verity[imagetype] = "raw"
RAUC_SLOT_verity[rename] = "root.verity"
RAUC_SLOT_verity[hooks] = "post-install"

RAUC_BUNDLE_EXTRA_DEPENDS = "mig-image:do_image_complete"
RAUC_BUNDLE_EXTRA_FILES = "mig.efi mig.efi.roothash"

# The vendor's signing key and certificate (never in this repository): see docs/yocto.md.
RAUC_KEY_FILE ?= "${MIG_RAUC_KEY_FILE}"
RAUC_CERT_FILE ?= "${MIG_RAUC_CERT_FILE}"
