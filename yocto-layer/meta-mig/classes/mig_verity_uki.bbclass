# The appliance's boot chain for an image recipe: a read-only erofs root verified by dm-verity
# (meta-security's dm-verity-img, hash tree on its own partition) and a unified kernel image
# (oe-core's uki) whose command line carries the root hash. systemd-veritysetup-generator in the
# initrd finds both partitions by roothash= alone: per the Discoverable Partitions
# Specification their GPT UUIDs are the first and the last 128 bits of the root hash.
#
# Sets UKI_CMDLINE from MIG_UKI_CMDLINE plus roothash=, and offers mig_verity_value() for
# the .wks.in (partition UUIDs) and the update bundle (the root hash beside the UKI).

inherit dm-verity-img uki

DM_VERITY_IMAGE = "${PN}"
DM_VERITY_IMAGE_TYPE ?= "erofs-lz4hc"
DM_VERITY_SEPARATE_HASH = "1"
# erofs uses 4 KiB blocks; matching data blocks keep the hash tree small.
DM_VERITY_IMAGE_DATA_BLOCK_SIZE = "4096"
# Discoverable Partitions type GUIDs of the root and its verity partition per architecture
# (dm-verity-img's defaults are the x86-64 ones).
DM_VERITY_ROOT_GUID:aarch64 = "b921b045-1df0-41c3-af44-4c6f280d3fae"
DM_VERITY_RHASH_GUID:aarch64 = "df3300ce-d69f-4c92-978c-9bfb0f38d820"

MIG_VERITY_TASK = "do_image_${@d.getVar('DM_VERITY_IMAGE_TYPE').replace('-', '_')}"
MIG_VERITY_ENV = "${STAGING_VERITY_DIR}/${IMAGE_BASENAME}.${DM_VERITY_IMAGE_TYPE}.verity.env"

# ro: the root is read-only by construction; panic-on-corruption: a changed block stops the
# box instead of hanging or serving altered code.
MIG_UKI_CMDLINE ?= "root=/dev/mapper/root rootfstype=erofs ro \
                    systemd.verity_root_options=panic-on-corruption panic=10"
# roothash= is added when do_uki runs (mig_uki_roothash): the hash exists only then.
UKI_CMDLINE = "${MIG_UKI_CMDLINE}"

def mig_verity_value(d, key):
    """A value (ROOT_HASH, ROOT_UUID, RHASH_UUID) from the verity .env of this image. Only
    known once the verity image exists: at parse time the answer is a placeholder."""
    path = d.getVar('MIG_VERITY_ENV')
    if not os.path.exists(path):
        if d.getVar('BB_CURRENTTASK'):
            bb.fatal("%s does not exist: %s has not produced the verity image" %
                     (path, d.getVar('MIG_VERITY_TASK')))
        return 'unknown-before-%s' % d.getVar('MIG_VERITY_TASK')
    with open(path) as f:
        for line in f:
            name, _, value = line.strip().partition('=')
            if name == key and value:
                return value
    bb.fatal("%s has no %s" % (path, key))

python mig_uki_roothash() {
    roothash = mig_verity_value(d, 'ROOT_HASH')
    d.setVar('UKI_CMDLINE', '%s roothash=%s' % (d.getVar('MIG_UKI_CMDLINE'), roothash))
    # The update bundle carries the hash beside the UKI: its hook names the partitions by it.
    with open(os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), d.getVar('UKI_FILENAME') + '.roothash'), 'w') as f:
        f.write(roothash + '\n')
}
mig_uki_roothash[doc] = "Adds roothash= of the verity image to the UKI command line"
do_uki[prefuncs] += "mig_uki_roothash"
do_uki[depends] += "${PN}:${MIG_VERITY_TASK}"
# The .wks.in is expanded by do_write_wks_template: the partition UUIDs need the root hash.
do_write_wks_template[depends] += "${PN}:${MIG_VERITY_TASK}"
