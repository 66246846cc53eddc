# What the appliance's boot chain needs built into the kernel (a vendor kernel needs the same).
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://mig.cfg"
