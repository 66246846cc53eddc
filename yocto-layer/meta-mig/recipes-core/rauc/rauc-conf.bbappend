# The appliance's RAUC system.conf (A/B slots, systemd-boot backend). The keyring is the
# vendor's: set RAUC_KEYRING_FILE and RAUC_KEYRING_URI (see docs/yocto.md).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

MIG_RAUC_COMPATIBLE ?= "mig-appliance-${MACHINE}"

do_install:append() {
    sed -i -e 's|@COMPATIBLE@|${MIG_RAUC_COMPATIBLE}|' \
           -e 's|@KEYRING@|${RAUC_KEYRING_FILE}|' \
           -e 's|@LIBEXECDIR@|${libexecdir}|' \
           ${D}${nonarch_libdir}/rauc/system.conf
}
