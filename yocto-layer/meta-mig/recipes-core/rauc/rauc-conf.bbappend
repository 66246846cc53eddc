# The appliance's RAUC system.conf (A/B slots, systemd-boot backend), for the mig distro only.
# The keyring is the vendor's: set RAUC_KEYRING_FILE and RAUC_KEYRING_URI (docs/yocto.md).
FILESEXTRAPATHS:prepend:mig := "${THISDIR}/files:"

MIG_RAUC_COMPATIBLE:mig ?= "mig-appliance-${MACHINE}"

do_install:append:mig() {
    sed -i -e 's|@COMPATIBLE@|${MIG_RAUC_COMPATIBLE}|' \
        -e 's|@KEYRING@|${RAUC_KEYRING_FILE}|' \
        -e 's|@LIBEXECDIR@|${libexecdir}|' \
        ${D}${nonarch_libdir}/rauc/system.conf
}
