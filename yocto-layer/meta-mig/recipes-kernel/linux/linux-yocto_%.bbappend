# What the appliance's boot chain needs built into the kernel, for the mig distro (a vendor
# kernel that is not linux-yocto needs the same options: recipes-kernel/linux/files/mig.cfg).
FILESEXTRAPATHS:prepend:mig := "${THISDIR}/files:"
SRC_URI:append:mig = " file://mig.cfg"
