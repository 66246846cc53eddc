# SPDX-License-Identifier: Apache-2.0
"""MIG appliance runtime tests (testimage, qemu with OVMF and swtpm: kas/mig-test.yml).

The image boots from its dm-verity root with the state partition made and opened through the
TPM; the tests then provision the appliance the way IT staff do (migctl init, csr, cert
install, trust add) and check that migd reaches READY under its hardened unit.
"""
from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage


class MigTest(OERuntimeTestCase):
    def run_ok(self, command, timeout=None):
        status, output = self.target.run(command, timeout=timeout)
        self.assertEqual(status, 0, msg='%s\n%s' % (command, output))
        return output

    @OEHasPackage(['migd'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_boot_chain(self):
        # Root from dm-verity, read-only; /var on the LUKS2 state partition opened by the TPM.
        self.run_ok('grep -q "roothash=" /proc/cmdline')
        self.run_ok('test "$(findmnt -no SOURCE /)" = /dev/mapper/root')
        self.run_ok('findmnt -no OPTIONS / | grep -qw ro')
        self.run_ok('test "$(findmnt -no SOURCE /var)" = /dev/mapper/mig-state')
        self.run_ok('cryptsetup luksDump /dev/disk/by-partlabel/mig-state | grep -q systemd-tpm2')
        self.run_ok('test -c /dev/tpmrm0')

    @OEHasPackage(['migd', 'migctl'])
    @OETestDepends(['mig.MigTest.test_boot_chain'])
    def test_migd_ready(self):
        self.run_ok(
            'migctl init --state-dir /var/lib/mig --ods A81001 --name "Test Surgery" '
            '--asid 200000000123 --tcti device:/dev/tpmrm0 --listen 0.0.0.0:8443 '
            '--fhir-base https://mig.test:8443/fhir', timeout=300)
        self.run_ok('migctl csr --subject "CN=mig.test,O=MIG test,C=GB" --out /tmp/mig.csr',
                    timeout=120)
        # A throwaway CA on the target issues the appliance certificate and stands in for a
        # partner CA; its key never leaves /tmp of this test image.
        self.run_ok(
            'cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes '
            '-subj "/CN=MIG test CA" -days 2 -keyout ca.key -out ca.pem '
            '-addext basicConstraints=critical,CA:TRUE '
            '-addext keyUsage=critical,keyCertSign,cRLSign '
            '&& printf "extendedKeyUsage=serverAuth\\nkeyUsage=critical,digitalSignature\\n'
            'subjectAltName=DNS:mig.test\\n" > leaf.ext '
            '&& openssl x509 -req -in mig.csr -CA ca.pem -CAkey ca.key -CAcreateserial '
            '-days 2 -extfile leaf.ext -out leaf.pem && cat leaf.pem ca.pem > chain.pem')
        self.run_ok('migctl cert install /tmp/chain.pem', timeout=120)
        self.run_ok('migctl trust add /tmp/ca.pem')
        # Type=notify: start returns once migd has sent READY=1 (TPM, replica, listeners up).
        self.run_ok('systemctl start migd.service', timeout=300)
        self.run_ok('systemctl is-active migd.service')
        output = self.run_ok('migctl status', timeout=60)
        self.assertIn('ready: true', output)

    @OEHasPackage(['mig-boot'])
    @OETestDepends(['mig.MigTest.test_migd_ready'])
    def test_boot_assessment(self):
        # The health unit passes once migd is ready, so boot-complete.target is reached.
        self.run_ok('systemctl start mig-health.service boot-complete.target', timeout=120)
        backend = '/usr/libexec/mig-rauc-sdboot'
        self.assertEqual(self.run_ok('%s get-current' % backend).strip(), 'a')
        self.assertEqual(self.run_ok('%s get-state a' % backend).strip(), 'good')
