"""What image/test and image/test-update share: a qemu machine (TCG: these machines have no
usable KVM) with OVMF and a software TPM whose serial console is driven with pexpect, the host's
PKI, the console wizard's answers, and a partner's record request over mTLS."""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pexpect

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.abspath(os.environ.get("MIG_IMAGE_OUT", os.path.join(ROOT, "image", "out")))
RAW = os.path.join(OUT, "mig-appliance.raw")
WORK = os.environ.get("MIG_IMAGE_TEST_WORK", os.path.join(OUT, "test"))
PORT = int(os.environ.get("MIG_IMAGE_TEST_PORT", "18443"))
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
HOST = "mig-appliance"
FHIR_BASE = f"https://{HOST}:8443/fhir"
PRACTICE_ODS = "A12345"
PARTNER_ODS = "RX8"
# The partner's agreement: allergies and medications only (problems must not come back).
PARTNER_SECTIONS = "allergies,medications"
STARTED = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def fail(message):
    log(f"FAIL: {message}")
    sys.exit(1)


def run(*args, **kwargs):
    return subprocess.run(args, check=True, **kwargs)


class Machine:
    """One qemu run: the disk, a TPM state directory, the serial console as a pexpect child."""

    def __init__(self, name, disk, tpm_dir, disk_format="raw"):
        self.name = name
        os.makedirs(tpm_dir, exist_ok=True)
        self.tpm_dir = tpm_dir
        self.swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tpm_dir}",
             "--ctrl", f"type=unixio,path={tpm_dir}/ctrl.sock", "--terminate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if os.path.exists(f"{tpm_dir}/ctrl.sock"):
                break
            time.sleep(0.1)
        vars_fd = os.path.join(WORK, f"{name}-VARS.fd")
        if not os.path.exists(vars_fd):
            shutil.copy(OVMF_VARS, vars_fd)
        self.monitor = os.path.join(WORK, f"{name}-monitor.sock")
        if os.path.exists(self.monitor):
            os.unlink(self.monitor)
        self.serial_log = open(os.path.join(WORK, f"{name}-serial.log"), "w", encoding="utf-8", errors="replace")
        args = [
            "-accel", "tcg", "-machine", "q35", "-m", "1024", "-smp", "2", "-nodefaults",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-monitor", f"unix:{self.monitor},server,nowait",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_fd}",
            "-chardev", f"socket,id=chrtpm,path={tpm_dir}/ctrl.sock",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-drive", f"file={disk},format={disk_format},if=virtio",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{PORT}-:8443",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "qemu-xhci,id=xhci",
        ]
        self.started = time.monotonic()
        self.child = pexpect.spawn("qemu-system-x86_64", args, encoding="utf-8",
                                   codec_errors="replace", timeout=600)
        self.child.logfile_read = self.serial_log
        log(f"{name}: qemu started")

    def expect(self, pattern, timeout=600):
        try:
            return self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            tail = (self.child.before or "")[-3000:]
            fail(f"{self.name}: waiting for {pattern!r}: {type(e).__name__}\n--- serial (last lines) ---\n{tail}")

    def answer(self, prompt, text, timeout=300):
        self.expect(re.escape(prompt), timeout)
        self.child.sendline(text)

    def hmp(self, command):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.monitor)
            s.settimeout(5)
            s.sendall(command.encode() + b"\n")
            time.sleep(1)
            try:
                return s.recv(65536).decode(errors="replace")
            except socket.timeout:
                return ""

    def stop(self):
        if self.child.isalive():
            self.child.terminate(force=True)
        self.swtpm.terminate()
        try:
            self.swtpm.wait(10)
        except subprocess.TimeoutExpired:
            self.swtpm.kill()
        self.serial_log.close()


def openssl_pki(pki):
    """A dev CA for the appliance and a partner CA with one client certificate."""
    os.makedirs(pki, exist_ok=True)
    for ca in ("appliance-ca", "partner-ca"):
        run("openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", f"{pki}/{ca}.key", "-out", f"{pki}/{ca}.pem", "-days", "365",
            "-subj", f"/CN=MIG image test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", capture_output=True)
    run("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{pki}/partner.key", "-out", f"{pki}/partner.csr",
        "-subj", f"/CN=partner.{PARTNER_ODS.lower()}.example.nhs.uk", capture_output=True)
    with open(f"{pki}/partner.ext", "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    run("openssl", "x509", "-req", "-in", f"{pki}/partner.csr", "-CA", f"{pki}/partner-ca.pem",
        "-CAkey", f"{pki}/partner-ca.key", "-CAcreateserial", "-out", f"{pki}/partner.pem", "-days", "365",
        "-extfile", f"{pki}/partner.ext", capture_output=True)


def sign_appliance_csr(pki, csr_pem):
    with open(f"{pki}/appliance.csr", "w") as f:
        f.write(csr_pem)
    with open(f"{pki}/appliance.ext", "w") as f:
        f.write(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{HOST}\n")
    run("openssl", "x509", "-req", "-in", f"{pki}/appliance.csr", "-CA", f"{pki}/appliance-ca.pem",
        "-CAkey", f"{pki}/appliance-ca.key", "-CAcreateserial", "-out", f"{pki}/appliance.pem",
        "-days", "365", "-extfile", f"{pki}/appliance.ext", capture_output=True)
    with open(f"{pki}/chain.pem", "w") as f:
        for part in ("appliance.pem", "appliance-ca.pem"):
            with open(f"{pki}/{part}") as p:
                f.write(p.read())


def make_stick(path, files, size_mib=16):
    """A USB stick image (vfat, made without mounting) holding `files` at its top level."""
    if os.path.exists(path):
        os.unlink(path)
    run("mkfs.vfat", "-C", path, str(size_mib * 1024), capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    for src, name in files:
        run("mcopy", "-i", path, src, f"::{name}", env=env)


def token():
    now = int(time.time())
    claims = {
        "iss": "https://partner.example.nhs.uk", "sub": "practitioner-1", "aud": FHIR_BASE,
        "iat": now, "exp": now + 300, "reason_for_request": "directcare",
        "requested_scope": "patient/*.read",
        "requesting_device": {"resourceType": "Device", "identifier": [
            {"system": "https://partner.example.nhs.uk/Id/device", "value": "image-test"}],
            "model": "image-test", "version": "1"},
        "requesting_organization": {"resourceType": "Organization", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": PARTNER_ODS}],
            "name": "Partner"},
        "requesting_practitioner": {"resourceType": "Practitioner", "id": "practitioner-1", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "111222333444"},
            {"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "444555666777"}],
            "name": [{"family": "Khan", "given": ["Amira"], "prefix": ["Dr"]}],
            "practitionerRole": [{"role": {"coding": [
                {"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName",
                 "code": "R8000"}]}}]},
        "permission_to_view": "granted",
    }
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}."


def fetch_record(pki, nhs_number, timeout=5):
    """POST gpc.getstructuredrecord as the partner; returns (curl exit code, body)."""
    body = json.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "patientNHSNumber", "valueIdentifier": {
            "system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}},
        {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": False}]},
        {"name": "includeMedication"}, {"name": "includeProblems"}]})
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(timeout), "--cacert", f"{pki}/appliance-ca.pem",
         "--cert", f"{pki}/partner.pem", "--key", f"{pki}/partner.key",
         "--resolve", f"{HOST}:{PORT}:127.0.0.1",
         "-H", "Ssp-TraceID: 6f1c2a9e-5b7d-4c1e-9f3a-2d8b7e6a1c40", "-H", "Ssp-From: 200000000999",
         "-H", "Ssp-To: 200000000123",
         "-H", "Ssp-InteractionID: urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1",
         "-H", f"Authorization: Bearer {token()}", "-H", "Content-Type: application/fhir+json",
         "-d", body, f"https://{HOST}:{PORT}/fhir/Patient/$gpc.getstructuredrecord"],
        capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def check_record(pki, nhs_number):
    code, body = fetch_record(pki, nhs_number)
    if code != 0 or '"resourceType":"Bundle"' not in body.replace(" ", ""):
        fail(f"fetching {nhs_number}: curl exit {code}: {body[:800]}")
    bundle = json.loads(body)
    types = sorted({e["resource"]["resourceType"] for e in bundle.get("entry", [])})
    if "Patient" not in types:
        fail(f"the Bundle has no Patient: {types}")
    if "Condition" in types:
        fail(f"the partner's agreement ({PARTNER_SECTIONS}) excludes problems, yet Conditions came back: {types}")
    log(f"record of {nhs_number}: a Bundle of {len(bundle.get('entry', []))} resources ({', '.join(types)}), no problems")


def pick_patient(practice_dir):
    """The first patient in the synthetic practice whose record the agreement releases."""
    with open(os.path.join(practice_dir, "Patient.ndjson")) as f:
        for line in f:
            patient = json.loads(line)
            for ident in patient.get("identifier", []):
                if ident.get("system") == "https://fhir.nhs.uk/Id/nhs-number":
                    yield ident["value"]


def provision(machine, pki, practice_dir):
    child = machine.child
    machine.expect("Press Enter to start the setup", 900)
    log("console: the wizard is offered")
    child.sendline("")
    machine.answer("Practice ODS code", PRACTICE_ODS)
    machine.answer("Practice name", "The Image Test Surgery")
    machine.answer("ASID", "200000000123")
    machine.answer("Partner listener address", "")
    machine.answer("Clinical system listener address", "")
    machine.answer("FHIR base URL", FHIR_BASE)
    machine.answer("Admin socket", "")
    machine.answer("TPM access (TCTI)", "")
    machine.answer("PCRs", "")
    machine.answer("State directory", "")
    machine.answer("Initialise now?", "")
    machine.expect("Initialised.", 300)
    log("console: initialised (TPM keys, sealed replica key)")
    machine.answer("Subject", f"CN={HOST}")
    machine.answer("File for the request", "")
    machine.expect(r"-----BEGIN CERTIFICATE REQUEST-----[\s\S]*?-----END CERTIFICATE REQUEST-----", 60)
    csr = re.sub(r"\r", "", child.after)
    sign_appliance_csr(pki, csr + "\n")
    log("host: signed the appliance's CSR; plugging in the USB stick")
    stick = os.path.join(WORK, "stick.img")
    files = [(f"{pki}/chain.pem", "chain.pem"), (f"{pki}/partner-ca.pem", "partner-ca.pem"),
             (f"{pki}/partner.pem", "partner.pem")]
    files += [(os.path.join(practice_dir, n), n) for n in sorted(os.listdir(practice_dir)) if n.endswith(".ndjson")]
    make_stick(stick, files)
    machine.hmp(f"drive_add 0 if=none,id=stick1,format=raw,file={stick}")
    machine.hmp("device_add usb-storage,bus=xhci.0,drive=stick1,id=stickdev1")
    machine.expect(re.escape("Certificate chain file (or skip)"), 120)
    for attempt in range(30):
        child.sendline("/media/usb/chain.pem")
        i = machine.expect([r"Installed the appliance's certificate", r"Not accepted: cannot read"], 60)
        if i == 0:
            break
        time.sleep(2)
    else:
        fail("the USB stick never appeared at /media/usb")
    machine.answer("Partner CA certificate file", "/media/usb/partner-ca.pem")
    machine.expect("Trusted 1 CA certificate", 60)
    machine.answer("Partner CA certificate file", "")
    machine.answer("Register a partner now?", "")
    machine.answer("Partner ODS code", PARTNER_ODS)
    machine.answer("Partner name", "Image Test Ambulance Service")
    machine.answer("Partner type", "ambulance")
    machine.answer("Partner's client certificate file (PEM)", "/media/usb/partner.pem")
    machine.answer("Sections the partner may see", PARTNER_SECTIONS)
    machine.answer("Roles that may read records", "R8000")
    machine.answer("Roles that may override", "")
    machine.expect(f"Registered Image Test Ambulance Service", 60)
    machine.answer("Add another partner?", "")
    machine.answer("Is all of this right?", "")
    machine.expect("The appliance is provisioned.", 120)
    machine.expect("The appliance is serving.", 300)
    log("console: provisioned; migd started")
    machine.expect("MIG appliance status", 120)
    machine.expect("verify   check the audit trail", 120)
    child.sendline("import")
    machine.expect(r"imported (\d+) resources from (\d+) files", 600)
    log(f"console: {child.match.group(0)}")
    machine.expect("Press Enter to go back", 60)
    child.sendline("")


def first_record(pki, patients, deadline, machine=None):
    """Polls until a record comes back; returns the NHS number that was served. Reads the
    machine's console meanwhile, so that it is logged and qemu never waits on a full pty."""
    last = ""
    while time.monotonic() < deadline:
        for nhs in patients[:5]:
            code, body = fetch_record(pki, nhs, timeout=10)
            if code == 0 and '"resourceType":"Bundle"' in body.replace(" ", ""):
                return nhs
            last = f"curl exit {code}: {body[:300]}"
        if machine is not None:
            try:
                machine.child.expect(pexpect.TIMEOUT, timeout=2)
            except pexpect.EOF:
                fail(f"{machine.name}: qemu exited while waiting for a record")
        else:
            time.sleep(2)
    fail(f"no record came back: {last}")


