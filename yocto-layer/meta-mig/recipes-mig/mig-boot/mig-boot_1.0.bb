# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT,oelint.var.bbclassextend
SUMMARY = "MIG appliance boot plumbing: state partition, boot assessment, A/B backend"
DESCRIPTION = "Makes and opens the TPM-sealed LUKS2 state partition on /var \
               (systemd-repart, crypttab), keeps /etc/mig on it, mounts the ESP, marks a \
               boot good only once migd is ready (systemd-bless-boot), and drives \
               systemd-boot's A/B selection for RAUC."
SECTION = "base"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://mig-rauc-sdboot;beginline=2;endline=2;md5=653b254f286b881bdce1d14afdede628"
# No HOMEPAGE, BUGTRACKER or CVE_PRODUCT: the project has no public site and no CPE yet.

SRC_URI = "\
    file://50-mig-state.conf \
    file://boot.automount \
    file://boot.mount \
    file://crypttab \
    file://etc-mig.mount \
    file://journald-mig.conf \
    file://mig-config-dir.service \
    file://mig-health.service \
    file://mig-rauc-sdboot \
    file://var.mount \
"
S = "${UNPACKDIR}"

inherit systemd allarch

SYSTEMD_SERVICE:${PN} = "boot.automount etc-mig.mount mig-health.service var.mount"

do_install() {
    install -d ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/repart.d \
        ${D}${nonarch_libdir}/systemd/journald.conf.d \
        ${D}${libexecdir} ${D}${sysconfdir}/mig
    for unit in boot.automount boot.mount etc-mig.mount mig-config-dir.service \
        mig-health.service var.mount; do
        install -m 0644 ${S}/$unit ${D}${systemd_system_unitdir}/$unit
    done
    sed -i -e 's|@BINDIR@|${bindir}|' ${D}${systemd_system_unitdir}/mig-health.service
    sed -i -e 's|@BASE_BINDIR@|${base_bindir}|' \
        ${D}${systemd_system_unitdir}/mig-config-dir.service
    install -m 0644 ${S}/50-mig-state.conf ${D}${nonarch_libdir}/repart.d/50-mig-state.conf
    install -m 0644 ${S}/journald-mig.conf ${D}${nonarch_libdir}/systemd/journald.conf.d/50-mig.conf
    install -m 0600 ${S}/crypttab ${D}${sysconfdir}/crypttab
    install -m 0755 ${S}/mig-rauc-sdboot ${D}${libexecdir}/mig-rauc-sdboot
}

FILES:${PN} += "\
    ${systemd_system_unitdir} \
    ${nonarch_libdir}/repart.d \
    ${nonarch_libdir}/systemd/journald.conf.d \
"
CONFFILES:${PN} = "${sysconfdir}/crypttab"

# systemd-repart formats ext4 inside LUKS2 sealed with the TPM (the systemd PACKAGECONFIG of
# conf/distro/mig.conf); the backend and the bundle hook use bootctl (systemd) and sfdisk.
RDEPENDS:${PN} = "\
    e2fsprogs-mke2fs \
    libtss2-tcti-device \
    migctl \
    rauc \
    systemd \
    util-linux-sfdisk \
"
