# testimage for the MIG appliance under qemu: a software TPM (swtpm from meta-tpm) on a unix
# socket for the run, given to qemu as a TPM 2.0 CRB device, so migd seals and unseals with a
# real TPM protocol as on the box. Inherit together with testimage (kas/mig-test.yml).

DEPENDS:append = " swtpm-native"

MIG_SWTPM_DIR = "${WORKDIR}/swtpm"
MIG_SWTPM_QEMUPARAMS = "-chardev socket,id=chrtpm,path=${MIG_SWTPM_DIR}/ctrl.sock \
                        -tpmdev emulator,id=tpm0,chardev=chrtpm \
                        -device tpm-crb,tpmdev=tpm0"
TEST_QEMUPARAMS:append = " ${MIG_SWTPM_QEMUPARAMS}"

python mig_swtpm_start() {
    import subprocess
    import time
    state = d.getVar('MIG_SWTPM_DIR')
    bb.utils.remove(state, recurse=True)
    bb.utils.mkdirhier(state)
    swtpm = os.path.join(d.getVar('STAGING_BINDIR_NATIVE'), 'swtpm')
    subprocess.run([swtpm, 'socket', '--tpm2', '--daemon',
                    '--tpmstate', 'dir=%s' % state,
                    '--ctrl', 'type=unixio,path=%s/ctrl.sock' % state,
                    '--pid', 'file=%s/swtpm.pid' % state,
                    '--log', 'file=%s/swtpm.log' % state], check=True)
    sock = os.path.join(state, 'ctrl.sock')
    for _ in range(50):
        if os.path.exists(sock):
            return
        time.sleep(0.1)
    bb.fatal("swtpm did not create %s (see %s/swtpm.log)" % (sock, state))
}
mig_swtpm_start[doc] = "Starts a software TPM for the qemu run of testimage"

python mig_swtpm_stop() {
    import signal
    pidfile = os.path.join(d.getVar('MIG_SWTPM_DIR'), 'swtpm.pid')
    if os.path.exists(pidfile):
        with open(pidfile) as f:
            pid = int(f.read().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
}
mig_swtpm_stop[doc] = "Stops the software TPM started for testimage"

do_testimage[prefuncs] += "mig_swtpm_start"
do_testimage[postfuncs] += "mig_swtpm_stop"
