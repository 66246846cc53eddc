//! `migctl console` driven through a real pseudo-terminal: the built binary, a private swtpm,
//! certificates made here with rcgen, and the files the wizard leaves in the state directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mig_testkit::pki::leaf_params;
use mig_testkit::rcgen::ExtendedKeyUsagePurpose;
use mig_testkit::{Ca, Swtpm};
use rexpect::session::PtySession;

const TIMEOUT_MS: u64 = 90_000;

fn ca(name: &str) -> Ca {
    Ca::root(name).unwrap()
}

/// A leaf with its own fresh key (so not the appliance's TPM key), issued by `ca`.
fn leaf_with_own_key(ca: &Ca, name: &str, usage: ExtendedKeyUsagePurpose) -> String {
    let params = leaf_params(name, vec![name.to_owned()], usage, -1, 365).unwrap();
    ca.issue(params).unwrap().cert_pem
}

/// Issues the appliance's certificate from the CSR the wizard wrote; returns the chain PEM.
fn sign_csr(ca: &Ca, csr_file: &Path) -> String {
    let pem = std::fs::read_to_string(csr_file).unwrap();
    ca.server_chain_for_csr(&pem, Vec::new(), 365).unwrap()
}

struct Box {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
    usb: PathBuf,
}

fn new_box() -> Box {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let usb = dir.join("usb");
    std::fs::create_dir_all(&usb).unwrap();
    Box {
        config: dir.join("etc").join("migd.toml"),
        state: dir.join("state"),
        usb,
        dir,
        _tmp: tmp,
    }
}

fn console(b: &Box) -> PtySession {
    let mut command = Command::new(env!("CARGO_BIN_EXE_migctl"));
    command.arg("--config").arg(&b.config).arg("console");
    rexpect::session::spawn_command(command, Some(TIMEOUT_MS)).unwrap()
}

/// Waits for `prompt`, then types `answer` and Enter.
fn answer(p: &mut PtySession, prompt: &str, answer: &str) {
    if let Err(e) = p.exp_string(prompt) {
        panic!("waiting for {prompt:?}: {e}");
    }
    p.send_line(answer).unwrap();
}

fn expect(p: &mut PtySession, text: &str) {
    if let Err(e) = p.exp_string(text) {
        panic!("waiting for {text:?}: {e}");
    }
}

/// The exit status text of the finished wizard, e.g. "Exited(Pid(1), 0)".
fn finish(p: &mut PtySession) -> String {
    p.exp_eof().unwrap();
    format!("{:?}", p.process().wait().unwrap())
}

/// Steps 1 to 4: practice, ASID, network, TPM; ends after "Initialised.".
fn steps_1_to_4(p: &mut PtySession, b: &Box, tpm: &Swtpm) {
    answer(p, "Practice ODS code: ", "A81001");
    answer(
        p,
        "Practice name (as partners should see it): ",
        "The Surgery",
    );
    answer(p, "ASID: ", "2000 0000 0123");
    answer(p, "Partner listener address [0.0.0.0:8443]: ", "");
    answer(p, "Clinical system listener address (Enter for none): ", "");
    answer(p, "FHIR base URL [", "https://mig.a81001.test:8443/fhir");
    answer(
        p,
        "Admin socket [/run/mig/admin.sock]: ",
        &b.dir.join("admin.sock").display().to_string(),
    );
    answer(p, "TPM access (TCTI) [", &tpm.tcti());
    answer(p, "PCRs [sha256:7]: ", "");
    answer(
        p,
        "State directory [/var/lib/mig]: ",
        &b.state.display().to_string(),
    );
    answer(p, "Initialise now? [Y/n]: ", "");
    expect(p, "Initialised.");
}

/// Step 5: the CSR, written to the "USB stick"; returns its path.
fn step_5(p: &mut PtySession, b: &Box) -> PathBuf {
    let csr = b.usb.join("appliance.csr");
    answer(p, "Subject [CN=mig.a81001.test]: ", "");
    answer(
        p,
        "File for the request (Enter to only show it on screen): ",
        &csr.display().to_string(),
    );
    answer(p, "Show it on screen too? [y/N]: ", "");
    expect(p, "Send the request to your certificate authority");
    csr
}

fn progress_file(b: &Box) -> PathBuf {
    b.config.parent().unwrap().join("console-progress.json")
}

#[test]
fn first_boot_provisions_a_working_appliance() {
    let b = new_box();
    let tpm = Swtpm::start_software().unwrap();
    let mut p = console(&b);
    steps_1_to_4(&mut p, &b, &tpm);
    let csr = step_5(&mut p, &b);

    // Step 6: the CA issues the certificate from the CSR on the "USB stick".
    let appliance_ca = ca("Test Appliance CA");
    let chain = b.usb.join("chain.pem");
    std::fs::write(&chain, sign_csr(&appliance_ca, &csr)).unwrap();
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &chain.display().to_string(),
    );
    expect(&mut p, "Installed the appliance's certificate");

    // Step 7: a partner CA and one partner.
    let partner_ca = ca("Test Partner CA");
    let ca_file = b.usb.join("partner-ca.pem");
    std::fs::write(&ca_file, partner_ca.pem()).unwrap();
    let partner_cert = b.usb.join("ambulance.crt");
    std::fs::write(
        &partner_cert,
        leaf_with_own_key(
            &partner_ca,
            "Test Ambulance",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    )
    .unwrap();
    answer(
        &mut p,
        "Partner CA certificate file (Enter when there are no more): ",
        &ca_file.display().to_string(),
    );
    expect(&mut p, "Trusted 1 CA certificate(s)");
    answer(
        &mut p,
        "Partner CA certificate file (Enter when there are no more): ",
        "",
    );
    answer(&mut p, "Register a partner now? [Y/n]: ", "");
    answer(&mut p, "Partner ODS code: ", "RX6");
    answer(&mut p, "Partner name: ", "Test Ambulance Service");
    answer(&mut p, "Partner type: ", "ambulance");
    answer(
        &mut p,
        "Partner's client certificate file (PEM): ",
        &partner_cert.display().to_string(),
    );
    answer(&mut p, "Sections the partner may see [all]: ", "");
    // A bad role code is refused by partner_from_args and the partner is asked again.
    answer(&mut p, "Roles that may read records: ", "R8000,not a role");
    answer(
        &mut p,
        "Roles that may override in an emergency (Enter for none): ",
        "R8000",
    );
    expect(&mut p, "is not an SDS job role code");
    answer(&mut p, "Partner ODS code [RX6]: ", "");
    answer(&mut p, "Partner name [Test Ambulance Service]: ", "");
    answer(&mut p, "Partner type [ambulance]: ", "");
    answer(&mut p, "Partner's client certificate file (PEM) [", "");
    answer(&mut p, "Sections the partner may see [all]: ", "");
    answer(
        &mut p,
        "Roles that may read records [R8000,not a role]: ",
        "R8000,R8003",
    );
    answer(
        &mut p,
        "Roles that may override in an emergency (Enter for none) [R8000]: ",
        "",
    );
    expect(&mut p, "Registered Test Ambulance Service (RX6).");
    answer(&mut p, "Add another partner? [y/N]: ", "");

    // Step 8: the summary, then the final word.
    expect(&mut p, "The Surgery (A81001)");
    expect(&mut p, "installed: CN=mig.a81001.test");
    expect(&mut p, "RX6 Test Ambulance Service (ambulance)");
    answer(&mut p, "Is all of this right? [Y/n]: ", "y");
    expect(&mut p, "The appliance is provisioned.");
    expect(&mut p, "systemctl enable --now migd");
    expect(&mut p, "migctl check");
    let status = finish(&mut p);
    assert!(status.ends_with(", 0)"), "exit status {status}");

    // What is on disk: config, TPM keys, replica, certificate, partner CA, partner.
    let config = mig::config::Config::load(&b.config).unwrap();
    assert_eq!(config.appliance.ods.as_str(), "A81001");
    assert_eq!(config.appliance.asid.as_str(), "200000000123");
    assert_eq!(config.tpm.tcti.to_string(), tpm.tcti());
    assert!(b.state.join(mig::tpm::KEY_DIR).is_dir());
    assert!(b.state.join(mig::service::REPLICA_FILE).is_file());
    assert!(b.state.join(mig::registry::CHAIN_FILE).is_file());
    assert_eq!(
        std::fs::read_dir(b.state.join(mig::registry::TRUST_DIR))
            .unwrap()
            .count(),
        1
    );
    let partners = mig::registry::list_partners(&b.state).unwrap();
    assert_eq!(partners.len(), 1);
    assert_eq!(partners[0].agreement.ods, "RX6");
    // The files the running appliance will load pass its own checks.
    assert!(mig::registry::load(&b.state, None).problems.is_empty());

    // The progress file: private, no secrets or certificates, every step done.
    let progress = progress_file(&b);
    let mode = std::fs::metadata(&progress).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&progress).unwrap();
    assert!(!text.contains("BEGIN"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["done"].as_array().unwrap().len(), 8, "{text}");

    // A rerun has nothing left to do and says so.
    let mut p = console(&b);
    expect(
        &mut p,
        "Step 8 of 8: Summary and confirmation: already done",
    );
    expect(&mut p, "The appliance is provisioned.");
    let status = finish(&mut p);
    assert!(status.ends_with(", 0)"), "exit status {status}");
}

#[test]
fn a_wrong_ods_code_is_asked_again() {
    let b = new_box();
    let mut p = console(&b);
    answer(&mut p, "Practice ODS code: ", "A81-001!");
    expect(&mut p, "is not an ODS code");
    expect(&mut p, "Please try again.");
    answer(&mut p, "Practice ODS code: ", "a81001");
    answer(&mut p, "Practice name (as partners should see it): ", "");
    expect(&mut p, "the name is empty");
    answer(
        &mut p,
        "Practice name (as partners should see it): ",
        "The Surgery",
    );
    answer(&mut p, "ASID: ", "12345");
    expect(&mut p, "is not an ASID (exactly 12 digits)");
    // Ctrl-D at a prompt stops cleanly, keeping step 1.
    expect(&mut p, "ASID: ");
    p.send_control('d').unwrap();
    expect(
        &mut p,
        "progress saved, run migctl console again to continue",
    );
    let status = finish(&mut p);
    assert!(status.ends_with(", 3)"), "exit status {status}");
    let text = std::fs::read_to_string(progress_file(&b)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["answers"]["ods"], "A81001", "{text}");
    assert_eq!(json["done"], serde_json::json!(["practice"]), "{text}");
    assert!(!b.config.exists());
}

#[test]
fn an_interrupted_run_resumes_where_it_stopped() {
    let b = new_box();
    let tpm = Swtpm::start_software().unwrap();
    let mut p = console(&b);
    steps_1_to_4(&mut p, &b, &tpm);
    expect(&mut p, "Subject [CN=mig.a81001.test]: ");
    p.send_control('d').unwrap();
    expect(
        &mut p,
        "progress saved, run migctl console again to continue",
    );
    let status = finish(&mut p);
    assert!(status.ends_with(", 3)"), "exit status {status}");
    assert!(b.config.is_file());

    let mut p = console(&b);
    for (n, title) in [
        (1, "The practice"),
        (2, "The appliance's ASID"),
        (3, "Network"),
        (4, "TPM, then initialise the appliance"),
    ] {
        expect(
            &mut p,
            &format!("Step {n} of 8: {title}: already done, skipping."),
        );
    }
    // This time the request goes to the stick's folder, under the usual name.
    let csr = b.usb.join("appliance.csr");
    answer(&mut p, "Subject [CN=mig.a81001.test]: ", "");
    answer(
        &mut p,
        "File for the request (Enter to only show it on screen): ",
        &b.usb.display().to_string(),
    );
    expect(&mut p, &format!("Wrote the request to {}.", csr.display()));
    answer(&mut p, "Show it on screen too? [y/N]: ", "y");
    expect(&mut p, "-----BEGIN CERTIFICATE REQUEST-----");
    let appliance_ca = ca("Test Appliance CA");
    let chain = b.usb.join("chain.pem");
    std::fs::write(&chain, sign_csr(&appliance_ca, &csr)).unwrap();
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &chain.display().to_string(),
    );
    expect(&mut p, "Installed the appliance's certificate");
    answer(
        &mut p,
        "Partner CA certificate file (Enter when there are no more): ",
        "",
    );
    answer(&mut p, "Register a partner now? [Y/n]: ", "n");
    // "No" at the summary offers the steps that can be done again.
    answer(&mut p, "Is all of this right? [Y/n]: ", "n");
    answer(&mut p, "(request), 6 (certificate) or 7 (partners)?: ", "4");
    expect(&mut p, "answer 5, 6 or 7");
    answer(&mut p, "(request), 6 (certificate) or 7 (partners)?: ", "7");
    expect(&mut p, "Step 7 of 8: Partner CA and partners\r\n");
    answer(
        &mut p,
        "Partner CA certificate file (Enter when there are no more): ",
        "",
    );
    answer(&mut p, "Register a partner now? [Y/n]: ", "n");
    answer(&mut p, "Is all of this right? [Y/n]: ", "");
    expect(&mut p, "The appliance is provisioned.");
    let status = finish(&mut p);
    assert!(status.ends_with(", 0)"), "exit status {status}");
    assert!(b.state.join(mig::registry::CHAIN_FILE).is_file());
}

#[test]
fn a_certificate_for_another_key_is_refused_and_asked_again() {
    let b = new_box();
    let tpm = Swtpm::start_software().unwrap();
    let mut p = console(&b);
    steps_1_to_4(&mut p, &b, &tpm);
    step_5(&mut p, &b);

    // Issued by a proper CA, in date, but for a key that is not the appliance's TPM key.
    let appliance_ca = ca("Test Appliance CA");
    let wrong = b.usb.join("wrong-chain.pem");
    std::fs::write(
        &wrong,
        format!(
            "{}{}",
            leaf_with_own_key(
                &appliance_ca,
                "mig.a81001.test",
                ExtendedKeyUsagePurpose::ServerAuth
            ),
            appliance_ca.pem()
        ),
    )
    .unwrap();
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &wrong.display().to_string(),
    );
    expect(&mut p, "does not hold this appliance's TLS key");
    expect(
        &mut p,
        "must be the one issued for this appliance's request",
    );
    // A missing file is explained too, and asked again.
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &b.usb.join("nothing.pem").display().to_string(),
    );
    expect(&mut p, "cannot read");
    // "skip for now": the rest goes on, and the end says the certificate is still to come.
    answer(&mut p, "Certificate chain file (or skip): ", "skip");
    answer(
        &mut p,
        "Partner CA certificate file (Enter when there are no more): ",
        "",
    );
    answer(&mut p, "Register a partner now? [Y/n]: ", "n");
    expect(&mut p, "NOT INSTALLED YET");
    answer(&mut p, "Is all of this right? [Y/n]: ", "");
    expect(&mut p, "the appliance's certificate is not installed yet");
    let status = finish(&mut p);
    assert!(status.ends_with(", 3)"), "exit status {status}");
    assert!(!b.state.join(mig::registry::CHAIN_FILE).exists());

    // The next run goes straight back to the certificate.
    let mut p = console(&b);
    expect(
        &mut p,
        "Step 5 of 8: Certificate signing request: already done, skipping.",
    );
    expect(&mut p, "Step 6 of 8: The appliance's certificate\r\n");
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &wrong.display().to_string(),
    );
    expect(&mut p, "does not hold this appliance's TLS key");
    let good = b.usb.join("chain.pem");
    std::fs::write(&good, sign_csr(&appliance_ca, &b.usb.join("appliance.csr"))).unwrap();
    answer(
        &mut p,
        "Certificate chain file (or skip): ",
        &good.display().to_string(),
    );
    expect(&mut p, "Installed the appliance's certificate");
    expect(
        &mut p,
        "Step 7 of 8: Partner CA and partners: already done, skipping.",
    );
    answer(&mut p, "Is all of this right? [Y/n]: ", "");
    expect(&mut p, "The appliance is provisioned.");
    let status = finish(&mut p);
    assert!(status.ends_with(", 0)"), "exit status {status}");
}

#[test]
fn a_failed_or_declined_initialisation_is_asked_again() {
    let b = new_box();
    // Nothing listens on this port: the TPM cannot be reached.
    let port = mig_testkit::ports::free_port_pair().unwrap();
    let unreachable = format!("swtpm:host=127.0.0.1,port={port}");
    let mut p = console(&b);
    answer(&mut p, "Practice ODS code: ", "A81001");
    answer(
        &mut p,
        "Practice name (as partners should see it): ",
        "The Surgery",
    );
    answer(&mut p, "ASID: ", "200000000123");
    answer(&mut p, "Partner listener address [0.0.0.0:8443]: ", "8443");
    expect(&mut p, "is not an address and port like 0.0.0.0:8443");
    answer(&mut p, "Partner listener address [0.0.0.0:8443]: ", "");
    answer(
        &mut p,
        "Clinical system listener address (Enter for none): ",
        "",
    );
    answer(&mut p, "FHIR base URL [", "http://mig.test/fhir");
    expect(&mut p, "it must start with https://");
    answer(&mut p, "FHIR base URL [", "https://mig.test/fhir");
    answer(&mut p, "Admin socket [/run/mig/admin.sock]: ", "");
    answer(&mut p, "TPM access (TCTI) [", "usb:/dev/tpm");
    expect(&mut p, "Not accepted");
    answer(&mut p, "TPM access (TCTI) [", &unreachable);
    answer(&mut p, "PCRs [sha256:7]: ", "");
    answer(&mut p, "State directory [/var/lib/mig]: ", "state");
    expect(&mut p, "is not a full path");
    answer(
        &mut p,
        "State directory [/var/lib/mig]: ",
        &b.state.display().to_string(),
    );
    answer(&mut p, "Initialise now? [Y/n]: ", "y");
    expect(&mut p, "Initialisation failed");
    // Asked again, the answers given so far offered back.
    answer(&mut p, &format!("TPM access (TCTI) [{unreachable}]: "), "");
    answer(&mut p, "PCRs [sha256:7]: ", "");
    answer(
        &mut p,
        &format!("State directory [{}]: ", b.state.display()),
        "",
    );
    answer(&mut p, "Initialise now? [Y/n]: ", "n");
    expect(&mut p, "your answers are the suggestions");
    answer(&mut p, "Practice ODS code [A81001]: ", "");
    answer(
        &mut p,
        "Practice name (as partners should see it) [The Surgery]: ",
        "",
    );
    expect(&mut p, "ASID [200000000123]: ");
    p.send_control('d').unwrap();
    expect(&mut p, "progress saved");
    let status = finish(&mut p);
    assert!(status.ends_with(", 3)"), "exit status {status}");
    assert!(!b.config.exists());
}
