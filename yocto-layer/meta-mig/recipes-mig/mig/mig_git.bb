# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend,oelint.var.suggestedvar.CVE_PRODUCT
SUMMARY = "MIG appliance: consent-filtering FHIR gateway (migd) and its admin tool (migctl)"
DESCRIPTION = "migd keeps a TPM-sealed, encrypted replica of a GP practice's clinical record \
               and serves consent-filtered FHIR R4 records to partner services over mutually \
               authenticated TLS, auditing every access before data leaves. migctl provisions \
               and administers it."
SECTION = "net"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"
# No HOMEPAGE, BUGTRACKER or CVE_PRODUCT: the project has no public site and no CPE yet.
# No BBCLASSEXTEND: an appliance daemon, built for the target only.

# tss-esapi-sys finds tss2-esys/-mu/-tctildr with pkg-config; SQLCipher links libcrypto.
DEPENDS = "openssl tpm2-tss"

# The workspace itself at one commit, MIG_SRCREV (see docs/yocto.md). By default the
# repository this layer is checked out in (yocto-layer/meta-mig/recipes-mig/mig is four levels
# down); a vendor building from its own mirror sets MIG_GIT_URI, e.g.
# "git://git.example.com/mig.git;protocol=https".
MIG_WORKSPACE_DIR ??= "${@os.path.normpath(os.path.join(d.getVar('FILE_DIRNAME'), '../../../..'))}"
MIG_GIT_URI ??= "git://${MIG_WORKSPACE_DIR};protocol=file"
PV = "0.1.0+git"
SRC_URI = "${MIG_GIT_URI};nobranch=1"
SRCREV = "${MIG_SRCREV}"

require mig-crates.inc

inherit pkgconfig cargo systemd useradd

# One build of the workspace for both binaries: the migctl crate links the mig library. No
# --features: migctl's development `demo` stays out of the appliance.
CARGO_BUILD_FLAGS += "--package mig --bin migd --package migctl --bin migctl"

do_install:append() {
    # One source for the unit, users and directories: the workspace's daemon/systemd/.
    install -d ${D}${systemd_system_unitdir} ${D}${nonarch_libdir}/sysusers.d \
        ${D}${nonarch_libdir}/tmpfiles.d ${D}${docdir}/mig
    install -m 0644 ${S}/daemon/systemd/migd.service ${D}${systemd_system_unitdir}/migd.service
    install -m 0644 ${S}/daemon/systemd/mig.sysusers.conf ${D}${nonarch_libdir}/sysusers.d/mig.conf
    install -m 0644 ${S}/daemon/systemd/mig.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/mig.conf
    install -m 0644 ${S}/docs/operations.md ${D}${docdir}/mig/operations.md
}

PACKAGE_BEFORE_PN = "migd migctl"
ALLOW_EMPTY:${PN} = "1"

FILES:migd += "${bindir}/migd \
               ${systemd_system_unitdir}/migd.service \
               ${nonarch_libdir}/sysusers.d/mig.conf \
               ${nonarch_libdir}/tmpfiles.d/mig.conf \
               ${docdir}/mig"
FILES:migctl += "${bindir}/migctl"

# The root file system is read-only, so the users of mig.sysusers.conf must exist at build
# time: useradd makes them, and oe-core's systemd_sysusers_check compares the two.
USERADD_PACKAGES = "migd"
GROUPADD_PARAM:migd = "--system tss; --system mig-admin"
USERADD_PARAM:migd = "--system --home-dir ${localstatedir}/lib/mig --no-create-home \
                      --shell ${sbindir}/nologin --comment 'MIG appliance daemon' \
                      --user-group --groups tss,mig-admin mig"

SYSTEMD_PACKAGES = "migd"
SYSTEMD_SERVICE:migd = "migd.service"

# The TCTI is loaded at run time (dlopen by libtss2-tctildr): no shlib dependency pulls it.
RDEPENDS:migd = "libtss2-tcti-device"
RDEPENDS:migctl = "libtss2-tcti-device migd"
RDEPENDS:${PN} = "migctl migd"

# nooelint: oelint.task.noanonpython - the only way to skip with a reason before fetching
python () {
    if not d.getVar('MIG_SRCREV'):
        raise bb.parse.SkipRecipe("MIG_SRCREV is not set: the workspace commit to build "
                                  "(kas passes it from the environment; see docs/yocto.md)")
}
