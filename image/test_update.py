"""The update test (run by image/test-update, which builds the versions and bundles first)."""

import os
import re
import shutil
import sys
import time

import pexpect

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vm import (OUT, RAW, ROOT, STARTED, WORK, Machine, check_record, fail,  # noqa: E402
                first_record, log, make_stick, openssl_pki, pick_patient, provision, run)

BUNDLES = os.path.join(OUT, "test-update", "bundles")
# Boots a falling-back box may take: three tries of the bad version, then the good one.
MAX_BOOTS = 6
BOOTS = []


def stop(machine):
    """Stops the machine and keeps its serial log as update-serial-N.log (every boot's)."""
    machine.stop()
    log_path = os.path.join(WORK, f"{machine.name}-serial.log")
    kept = os.path.join(WORK, f"{machine.name}-serial-{len(BOOTS) + 1}.log")
    os.rename(log_path, kept)
    BOOTS.append(kept)
    return kept


def serial_text(machine):
    machine.serial_log.flush()
    with open(os.path.join(WORK, f"{machine.name}-serial.log"), encoding="utf-8", errors="replace") as f:
        return f.read()


def plug_stick(machine, files, generation):
    """Replaces the USB stick with a new one holding `files`."""
    if generation > 1:
        machine.hmp(f"device_del stickdev{generation - 1}")
        time.sleep(3)
    stick = os.path.join(WORK, f"stick{generation}.img")
    make_stick(stick, files, size_mib=1024)
    machine.hmp(f"drive_add 0 if=none,id=stick{generation},format=raw,file={stick}")
    machine.hmp(f"device_add usb-storage,bus=xhci.0,drive=stick{generation},id=stickdev{generation}")
    time.sleep(5)


def at_status_screen(machine):
    child = machine.child
    child.sendline("")
    machine.expect("MIG appliance status", 120)
    machine.expect("verify   check the audit trail", 60)


def slots(machine):
    """Runs `verify` at the console: the audit trail must verify; returns the update status text."""
    at_status_screen(machine)
    machine.child.sendline("verify")
    i = machine.expect([r"audit trail verified", r"AUDIT TRAIL FAILED VERIFICATION.*"], 300)
    if i != 0:
        fail(f"the audit trail does not verify: {machine.child.after}")
    machine.expect(r"Running:    version (\S+), from slot (\S+)[\s\S]*?Press Enter to go back", 120)
    text = machine.child.after
    machine.child.sendline("")
    return text


def install(machine, bundle, expect_ok):
    at_status_screen(machine)
    machine.child.sendline("update")
    machine.answer("Which one (file name)?", bundle)
    if expect_ok:
        machine.expect(r"Version (\S+) is installed", 900)
        machine.answer("Restart now to run it?", "y")
        machine.expect("Restarting", 60)
        machine.expect(pexpect.EOF, 300)
    else:
        # The serial console ends a line with \r\r\n (the tty adds one \r).
        machine.expect(r"Refused, nothing was written: ([^\r\n]*)\r*\n", 600)
        reason = machine.child.match.group(1)
        machine.expect("Press Enter to go back", 60)
        machine.child.sendline("")
        return reason
    return None


def boot_until_record(pki, nhs, disk, tpm, label):
    """Boots (again and again while the box restarts itself) until a record is served; returns
    the machine and how many boots failed their health gate first."""
    failed = 0
    for boot in range(MAX_BOOTS):
        m = Machine(label, disk, tpm)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            # The health gate's verdict, not the status screen: the console shows that on a
            # boot whose migd never starts too.
            i = m.child.expect([r"health gate: FAILED", r"health gate: migd is ready and healthy",
                                pexpect.EOF, pexpect.TIMEOUT], timeout=10)
            if i == 0:
                failed += 1
                log(f"{label}: boot {boot + 1}: the health gate failed; the box restarts itself")
                m.expect(pexpect.EOF, 300)
                break
            if i == 2:
                log(f"{label}: boot {boot + 1}: the machine stopped before the health gate's verdict")
                break
            if i == 1:
                first_record(pki, [nhs], time.monotonic() + 300, m)
                return m, failed
        else:
            fail(f"{label}: boot {boot + 1}: no health gate verdict in 900 s:\n{(m.child.before or '')[-3000:]}")
        stop(m)
    fail(f"{label}: no record after {MAX_BOOTS} boots")


def main():
    v1 = sys.argv[1]
    v2, v3 = f"{v1}.2", f"{v1}.3"
    os.makedirs(WORK, exist_ok=True)
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

    # v1: provisioned and serving.
    m = Machine("update", disk, tpm)
    provision(m, pki, practice)
    nhs = first_record(pki, patients, time.monotonic() + 120, m)
    check_record(pki, nhs)
    status = slots(m)
    if f"version {v1}, from slot A" not in status:
        fail(f"v1 should run from slot A: {status}")
    def bundles(*names):
        return [(os.path.join(BUNDLES, n), n) for n in names]
    plug_stick(m, bundles("v2.raucb"), 2)

    # v2: installed, restarted into, serving; the data survived.
    install(m, "v2.raucb", True)
    stop(m)
    m, failed = boot_until_record(pki, nhs, disk, tpm, "update")
    if failed:
        fail(f"v2 failed its health gate {failed} times")
    check_record(pki, nhs)
    status = slots(m)
    if f"version {v2}, from slot B" not in status:
        fail(f"v2 should run from slot B: {status}")
    if not re.search(rf"Slot B: +version {re.escape(v2)}, good, running now", status):
        fail(f"v2 passed its health gate, so systemd-bless-boot should have kept it (no trial counter): {status}")
    log(f"v2 runs from slot B, marked good, and serves the record that v1 imported")

    # v3: its migd never starts; after its tries the box is back on v2 by itself.
    plug_stick(m, bundles("v3-unhealthy.raucb"), 3)
    install(m, "v3-unhealthy.raucb", True)
    stop(m)
    rollback_started = time.monotonic()
    m, failed = boot_until_record(pki, nhs, disk, tpm, "update")
    if failed < 1:
        fail("v3 should have failed its health gate")
    check_record(pki, nhs)
    status = slots(m)
    if f"version {v2}, from slot B" not in status or "BAD" not in status:
        fail(f"after v3 failed, v2 should run from slot B and slot A be bad: {status}")
    rolled_back = re.search(rf"health gate: update: version {re.escape(v3)} in slot A failed its trial boots; "
                            rf"rolled back to version {re.escape(v2)} in slot B", serial_text(m))
    if not rolled_back:
        fail("the boot back on v2 did not report the rollback (health gate, MESSAGE_ID UPDATE_ROLLED_BACK)")
    log(f"serial: {rolled_back.group(0)}")
    log(f"v3 failed its health gate {failed} times; back on v2 by itself in "
        f"{time.monotonic() - rollback_started:.0f} s; the record is still served")

    # Bad bundles: each refused before anything is written.
    plug_stick(m, bundles("other-key.raucb", "corrupted.raucb", "truncated.raucb", "v1-older.raucb"), 4)
    for bundle, why in [("other-key.raucb", r"signature|certificate|verif"),
                        ("corrupted.raucb", r"signature|verif|invalid|format"),
                        ("truncated.raucb", r"invalid|format|size|signature"),
                        ("v1-older.raucb", r"not newer")]:
        reason = install(m, bundle, False)
        if not re.search(why, reason, re.IGNORECASE):
            fail(f"{bundle} refused for an unexpected reason: {reason}")
        log(f"{bundle}: refused: {reason}")
    after = slots(m)
    if f"version {v2}, from slot B" not in after:
        fail(f"the refused bundles changed the slots: {after}")
    check_record(pki, nhs)
    stop(m)
    log(f"image update test: OK ({time.monotonic() - STARTED:.0f} s)")


if __name__ == "__main__":
    main()
