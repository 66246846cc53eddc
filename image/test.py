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
import subprocess
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
    nhs = first_record(pki, patients, time.monotonic() + 120, m)
    check_record(pki, nhs)
    m.child.sendline("")
    m.stop()

    # 2. Second boot: the TPM unlocks the state partition by itself; time to the first record.
    m = Machine("second-boot", disk, tpm)
    first_record(pki, [nhs], time.monotonic() + 600, m)
    boot_to_record = time.monotonic() - m.started
    check_record(pki, nhs)
    m.child.sendline("")
    m.expect(r"Records:      20 patients[\s\S]*?Last import:  \d{4}-\d\d-\d\d", 120)
    log("status screen after the reboot: 20 patients, the last import's time")
    log(f"boot to record under TCG: {boot_to_record:.1f} s")
    m.stop()

    # 3. Another TPM (the disk moved to another machine): the state partition stays locked.
    m = Machine("other-tpm", disk, os.path.join(WORK, "tpm-other"))
    m.expect("THE STATE PARTITION DID NOT UNLOCK", 600)
    m.expect(r"systemd-cryptsetup said:[\s\S]*?No passphrase or recovery key registered", 60)
    log("another TPM: the state partition stayed locked (no other way in: no passphrase, no recovery key)")
    code, _ = fetch_record(pki, nhs, timeout=5)
    if code == 0:
        fail("a record was served with another TPM")
    m.stop()

    # 4. Another command line (an attacker's `init=/bin/sh`, say) in an otherwise genuine UKI that
    # keeps the vendor's PCR signature: PCR 11 differs, the TPM refuses, the partition stays locked.
    other_cmdline = os.path.join(WORK, "disk-other-cmdline.raw")
    run("cp", "--sparse=always", disk, other_cmdline)
    with open(os.path.join(OUT, "cmdline-a")) as f:
        cmdline = f.read().strip() + " mig.debug=1"
    with open(os.path.join(WORK, "cmdline-other"), "w") as f:
        f.write(cmdline)
    keys = os.environ.get("MIG_IMAGE_KEYS", os.path.join(ROOT, "image", "keys"))
    uki = os.path.join(WORK, "uki-other-cmdline.efi")
    run("objcopy",
        "--add-section", f".osrel={OUT}/os-release", "--change-section-vma", ".osrel=0x20000",
        "--add-section", f".cmdline={WORK}/cmdline-other", "--change-section-vma", ".cmdline=0x30000",
        "--add-section", f".pcrpkey={keys}/tpm2-pcr-public.pem", "--change-section-vma", ".pcrpkey=0x40000",
        "--add-section", f".pcrsig={OUT}/pcrsig-a.json", "--change-section-vma", ".pcrsig=0x50000",
        "--add-section", f".linux={OUT}/vmlinuz", "--change-section-vma", ".linux=0x2000000",
        "--add-section", f".initrd={OUT}/initrd.img", "--change-section-vma", ".initrd=0x3000000",
        f"{OUT}/linuxx64.efi.stub", uki)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    esp = f"{other_cmdline}@@1M"
    listing = subprocess.run(["mdir", "-b", "-i", esp, "::EFI/Linux"], check=True, env=env,
                             capture_output=True, text=True).stdout.split()
    for entry in listing:
        run("mdel", "-i", esp, entry, env=env)
    run("mcopy", "-i", esp, uki, "::EFI/Linux/mig_0-a.efi", env=env)
    m = Machine("other-cmdline", other_cmdline, tpm)
    m.expect("THE STATE PARTITION DID NOT UNLOCK", 600)
    m.expect(r"Couldn't find signature for this PCR bank, PCR index and public key", 60)
    log("another command line under the vendor's signature: no signed PCR 11 value matches; the state partition stayed locked")
    m.stop()
    os.unlink(other_cmdline)

    # 5. One changed byte in the root (its erofs superblock, read at mount): no boot.
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
