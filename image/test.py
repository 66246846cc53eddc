"""The appliance image test (run by image/test, which installs what it needs).

Boots a copy of the built disk under qemu with OVMF and a software TPM, drives the console
wizard over the serial console, and checks SPEC §13 from the outside: a partner on the host gets
a consent-filtered record over mTLS through a forwarded port, after a reboot too (the
boot-to-record time); a changed byte in the root stops the boot; another TPM cannot open the
state partition.
"""

import json
import os
import shutil
import sys
import time

import pexpect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vm import (OUT, RAW, ROOT, STARTED, WORK, Machine, check_record, fail, fetch_record,  # noqa: E402
                first_record, log, openssl_pki, pick_patient, provision, run)


def main():
    if not os.path.exists(RAW):
        fail(f"{RAW} does not exist: run image/build first")
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    pki = os.path.join(WORK, "pki")
    openssl_pki(pki)
    practice = os.path.join(WORK, "practice")
    migctl = os.path.join(ROOT, "target", "release", "migctl")
    run(migctl, "demo-data", "--patients", "20", "--seed", "1", "--out", practice, capture_output=True)
    patients = list(pick_patient(practice))

    disk = os.path.join(WORK, "disk.raw")
    run("cp", "--sparse=always", RAW, disk)
    run("truncate", "-s", "+1G", disk)
    tpm = os.path.join(WORK, "tpm")

    # 1. First boot: the state partition is made, the wizard runs, records are imported, served.
    m = Machine("first-boot", disk, tpm)
    provision(m, pki, practice)
    nhs = first_record(pki, patients, time.monotonic() + 120)
    check_record(pki, nhs)
    m.child.sendline("")
    m.stop()

    # 2. Second boot: the TPM unlocks the state partition by itself; time to the first record.
    m = Machine("second-boot", disk, tpm)
    first_record(pki, [nhs], time.monotonic() + 600)
    boot_to_record = time.monotonic() - m.started
    check_record(pki, nhs)
    log(f"boot to record under TCG: {boot_to_record:.1f} s")
    m.stop()

    # 3. Another TPM (the disk moved to another machine): the state partition stays locked.
    m = Machine("other-tpm", disk, os.path.join(WORK, "tpm-other"))
    m.expect("THE STATE PARTITION DID NOT UNLOCK", 600)
    log("another TPM: the state partition stayed locked")
    code, _ = fetch_record(pki, nhs, timeout=5)
    if code == 0:
        fail("a record was served with another TPM")
    m.stop()

    # 4. One changed byte in the root (its erofs superblock, read at mount): no boot.
    tampered = os.path.join(WORK, "tampered.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", disk, "-F", "raw", tampered)
    offset = (1 + 128) * 1048576 + 1024
    run("qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset} 1", tampered, capture_output=True)
    m = Machine("tampered-root", tampered, tpm, disk_format="qcow2")
    i = m.expect([r"Kernel panic", pexpect.EOF], 600)
    m.expect(pexpect.EOF, 120)
    log("tampered root: the kernel stopped the boot (dm-verity panic-on-corruption), qemu exited")
    with open(os.path.join(WORK, "tampered-root-serial.log"), encoding="utf-8", errors="replace") as f:
        if "MIG appliance" in f.read():
            fail("the tampered root reached the appliance console")
    m.stop()

    print(json.dumps({"boot_to_record_seconds": round(boot_to_record, 1),
                      "test_seconds": round(time.monotonic() - STARTED, 1)}))
    log("image test: OK")


if __name__ == "__main__":
    main()
