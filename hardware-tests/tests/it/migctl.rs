//! Every `migctl` command (SPEC §9, issue 8) against a real appliance on swtpm: what it does,
//! and each refusal with the message an administrator sees.
//!
//! Run: `cargo build --workspace --bins && cargo test -p hardware-tests --test migctl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use hardware_tests::appliance::TestAppliance;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn appliance(patients: usize) -> TestAppliance {
    TestAppliance::start(patients).unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs migctl and expects success; returns standard output.
fn ok(app: &TestAppliance, args: &[&str]) -> String {
    let output = app.migctl(args);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "migctl {args:?} failed: {stdout}{stderr}"
    );
    stdout
}

/// Runs migctl and expects a refusal whose message contains every one of `expect`.
fn refused(app: &TestAppliance, args: &[&str], expect: &[&str]) -> String {
    let output = app.migctl(args);
    let (stdout, stderr) = text(&output);
    assert!(
        !output.status.success(),
        "migctl {args:?} should have failed: {stdout}{stderr}"
    );
    for want in expect {
        assert!(
            stderr.contains(want),
            "migctl {args:?}: message lacks {want:?}: {stderr}"
        );
    }
    println!("migctl {}: {}", args.join(" "), stderr.trim());
    stderr
}

fn pki(app: &TestAppliance, name: &str) -> PathBuf {
    app.app.pki.join(name)
}

fn write(app: &TestAppliance, name: &str, contents: &str) -> PathBuf {
    let path = app.app.dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn dates(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
}

fn fresh_ca(name: &str) -> Ca {
    let key = key();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    dates(&mut params, -1, 3650);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// The demo appliance CA, rebuilt from its key and certificate in `pki/`.
fn appliance_ca(app: &TestAppliance) -> Ca {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(pki(app, "appliance-ca.key")).unwrap()).unwrap();
    let params = CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(pki(app, "appliance-ca.pem")).unwrap(),
    )
    .unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A server certificate for the appliance's TPM key (from a fresh `migctl csr`), issued by `ca`,
/// valid from `from_days` to `to_days` relative to now.
fn leaf_for_tpm_key(app: &TestAppliance, ca: &Ca, from_days: i64, to_days: i64) -> String {
    let out = app.app.dir.join("leaf.csr");
    ok(
        app,
        &["csr", "--subject", "CN=localhost,O=Test", "--out", s(&out)],
    );
    let mut csr =
        CertificateSigningRequestParams::from_pem(&std::fs::read_to_string(&out).unwrap()).unwrap();
    csr.params
        .subject_alt_names
        .push(SanType::DnsName("localhost".try_into().unwrap()));
    csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    dates(&mut csr.params, from_days, to_days);
    csr.signed_by(&ca.cert, &ca.key).unwrap().pem()
}

fn status_count(app: &TestAppliance, label: &str) -> u64 {
    // "Records:      3 patients, 120 resources"
    let status = ok(app, &["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("Records:"))
        .unwrap_or_else(|| panic!("{status}"));
    let words: Vec<_> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with(label)).unwrap();
    words[at - 1].parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Identity: init, csr, cert install
// ---------------------------------------------------------------------------------------------

#[test]
fn init_refuses_an_initialised_appliance() {
    let app = appliance(0);
    let before = std::fs::read(app.config_path()).unwrap();
    let state = app.app.dir.join("other-state");
    let tcti = format!("swtpm:host=127.0.0.1,port={}", app.app.tpm_port);
    refused(
        &app,
        &[
            "init",
            "--state-dir",
            s(&state),
            "--ods",
            "A81001",
            "--name",
            "Second",
            "--asid",
            "200000000123",
            "--tcti",
            &tcti,
        ],
        &["already initialised", "refusing to overwrite"],
    );
    assert_eq!(std::fs::read(app.config_path()).unwrap(), before);
    assert!(!state.exists());
}

#[test]
fn csr_is_a_valid_pkcs10_signed_by_the_tpm_key() {
    let app = appliance(0);
    let out = app.app.dir.join("appliance.csr");
    let stdout = ok(
        &app,
        &[
            "csr",
            "--subject",
            "CN=mig.a81001.nhs.uk,O=The Surgery,C=GB",
            "--out",
            s(&out),
        ],
    );
    assert!(stdout.contains("migctl cert install"), "{stdout}");
    let pem = std::fs::read_to_string(&out).unwrap();
    let csr = CertificateSigningRequestParams::from_pem(&pem).unwrap();
    // The CSR carries the TPM's TLS key, as recorded at init.
    let (tls_key, _) =
        migctl::commands::public_keys(&app.app.config).expect("public keys recorded at init");
    let point = rcgen::PublicKeyData::der_bytes(&csr.public_key);
    assert!(
        tls_key.ends_with(point),
        "the CSR's key is not the TPM's TLS key"
    );
    if which("openssl") {
        let verify = std::process::Command::new("openssl")
            .args(["req", "-verify", "-noout", "-in"])
            .arg(&out)
            .output()
            .unwrap();
        let (o, e) = text(&verify);
        assert!(verify.status.success(), "openssl: {o}{e}");
        assert!(format!("{o}{e}").contains("verify OK"), "{o}{e}");
    }
}

fn which(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("version")
        .output()
        .is_ok()
}

#[test]
fn cert_install_accepts_a_good_chain_and_refuses_bad_ones() {
    let app = appliance(0);
    let ca = appliance_ca(&app);
    let chain_file = app.app.config.state_dir.join(mig::registry::CHAIN_FILE);
    let installed = std::fs::read(&chain_file).unwrap();

    // A chain for another key.
    let other = {
        let mut params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        dates(&mut params, -1, 365);
        params.signed_by(&key(), &ca.cert, &ca.key).unwrap().pem()
    };
    let file = write(&app, "other-key.pem", &format!("{other}{}", ca.cert.pem()));
    refused(
        &app,
        &["cert", "install", s(&file)],
        &["does not hold this appliance's TLS key", "migctl csr"],
    );

    // Expired.
    let expired = leaf_for_tpm_key(&app, &ca, -400, -1);
    let file = write(&app, "expired.pem", &format!("{expired}{}", ca.cert.pem()));
    refused(&app, &["cert", "install", s(&file)], &["expired"]);

    // Issued by a CA other than the one that follows it in the file.
    let stranger = fresh_ca("Some Other CA");
    let leaf = leaf_for_tpm_key(&app, &stranger, -1, 365);
    let file = write(
        &app,
        "broken-chain.pem",
        &format!("{leaf}{}", ca.cert.pem()),
    );
    refused(
        &app,
        &["cert", "install", s(&file)],
        &["the chain does not build"],
    );
    assert_eq!(
        std::fs::read(&chain_file).unwrap(),
        installed,
        "a refused chain replaced the installed one"
    );

    // A good one installs.
    let good = leaf_for_tpm_key(&app, &ca, -1, 365);
    let file = write(&app, "good.pem", &format!("{good}{}", ca.cert.pem()));
    let stdout = ok(&app, &["cert", "install", s(&file)]);
    assert!(stdout.contains("installed"), "{stdout}");
    assert_ne!(std::fs::read(&chain_file).unwrap(), installed);
}

// ---------------------------------------------------------------------------------------------
// Trust, CRLs, upstream
// ---------------------------------------------------------------------------------------------

#[test]
fn trust_add_takes_a_ca_and_refuses_a_leaf() {
    let app = appliance(0);
    refused(
        &app,
        &["trust", "add", s(&pki(&app, "ambulance.crt"))],
        &["ambulance.crt", "CA"],
    );
    let ca = fresh_ca("Second Partner CA");
    let file = write(&app, "second-ca.pem", &ca.cert.pem());
    let stdout = ok(&app, &["trust", "add", s(&file)]);
    assert!(stdout.contains("trusted partner CA"), "{stdout}");
}

#[test]
fn crl_install_refuses_a_crl_from_an_untrusted_ca() {
    let app = appliance(0);
    let now = time::OffsetDateTime::now_utc();
    let crl = |ca: &Ca| {
        CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(2u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .unwrap()
        .pem()
        .unwrap()
    };
    let stranger = fresh_ca("Untrusted CA");
    let file = write(&app, "untrusted.crl", &crl(&stranger));
    refused(
        &app,
        &["crl", "install", s(&file)],
        &["untrusted.crl", "Untrusted CA"],
    );

    // The same CA once trusted: its CRL installs.
    let ca_file = write(&app, "stranger-ca.pem", &stranger.cert.pem());
    ok(&app, &["trust", "add", s(&ca_file)]);
    let stdout = ok(&app, &["crl", "install", s(&file)]);
    assert!(stdout.contains("installed CRL from"), "{stdout}");
}

#[test]
fn upstream_add_registers_a_clinical_system() {
    let app = appliance(0);
    let before = ok(&app, &["status"]);
    assert!(before.contains("1 clinical systems"), "{before}");
    let stdout = ok(
        &app,
        &[
            "upstream",
            "add",
            "--name",
            "second-system",
            "--cert",
            s(&pki(&app, "out-of-hours.crt")),
        ],
    );
    assert!(
        stdout.contains("registered clinical system second-system"),
        "{stdout}"
    );
    // A running migd picks the change up within a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = ok(&app, &["status"]);
        if status.contains("2 clinical systems") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Partners
// ---------------------------------------------------------------------------------------------

/// A client certificate no registered partner uses yet (partners are pinned by key).
fn fresh_partner_cert(app: &TestAppliance) -> PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "Test Community Trust");
    dates(&mut params, -1, 365);
    let cert = params.self_signed(&key()).unwrap();
    write(app, "rx9.crt", &cert.pem())
}

fn partner_args<'a>(cert: &'a str, change: (&'a str, &'a str)) -> Vec<&'a str> {
    let mut args = vec![
        "partner",
        "add",
        "--ods",
        "RX9",
        "--name",
        "Test Community Trust",
        "--type",
        "community-health",
        "--cert",
        cert,
        "--sections",
        "allergies,medications",
        "--roles",
        "R8000,R8003",
        "--expires",
        "2030-03-31",
    ];
    if let Some(at) = args.iter().position(|a| *a == change.0) {
        args[at + 1] = change.1;
    }
    args
}

#[test]
fn partner_add_list_remove_and_each_bad_flag() {
    let app = appliance(0);
    // A certificate already pinned by another partner.
    let taken = pki(&app, "out-of-hours.crt");
    refused(
        &app,
        &partner_args(s(&taken), ("", "")),
        &["claims the same certificate as", "DEMOOH"],
    );
    let cert = fresh_partner_cert(&app);
    let cert = s(&cert);
    let cases: [((&str, &str), &[&str]); 5] = [
        (("--ods", "NOT AN ODS!"), &["--ods"]),
        (
            ("--type", "dentist"),
            &["--type", "unknown partner type", "\"dentist\""],
        ),
        (
            ("--sections", "allergies,horoscope"),
            &["--sections", "unknown section", "\"horoscope\""],
        ),
        (
            ("--roles", "R8000,nurse-in-charge"),
            &["--roles", "\"nurse-in-charge\"", "SDS job role"],
        ),
        (
            ("--expires", "31/03/2030"),
            &["--expires", "\"31/03/2030\"", "2027-03-31"],
        ),
    ];
    for (change, expect) in cases {
        refused(&app, &partner_args(cert, change), expect);
    }
    let list = ok(&app, &["partner", "list"]);
    assert!(
        !list.contains("RX9"),
        "a refused partner was registered: {list}"
    );

    let stdout = ok(&app, &partner_args(cert, ("", "")));
    assert!(
        stdout.contains("registered Test Community Trust (RX9)"),
        "{stdout}"
    );
    let list = ok(&app, &["partner", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("RX9"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("community-health")
            && line.contains("sections=allergies,medications")
            && line.contains("roles=R8000,R8003")
            && line.contains("expires=2030-03-31"),
        "{line}"
    );
    assert_eq!(list.lines().count(), 4, "{list}");

    let stdout = ok(&app, &["partner", "remove", "RX9"]);
    assert!(stdout.contains("removed partner RX9"), "{stdout}");
    assert!(!ok(&app, &["partner", "list"]).contains("RX9"));
    refused(&app, &["partner", "remove", "RX9"], &["RX9"]);
}

// ---------------------------------------------------------------------------------------------
// Import, status, check
// ---------------------------------------------------------------------------------------------

#[test]
fn import_reports_the_bad_line_and_keeps_what_was_stored() {
    let app = appliance(3);
    let resources = status_count(&app, "resources");
    let patients = status_count(&app, "patients");
    assert_eq!(patients, 3);

    // Six patients: three already stored, three new; then a broken line 7.
    let bigger = tempfile::tempdir().unwrap();
    mig_synthetic::write_practice(bigger.path(), 6, 1).unwrap();
    let lines = std::fs::read_to_string(bigger.path().join("Patient.ndjson")).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 6);
    let file = write(
        &app,
        "Patient-bad.ndjson",
        &format!(
            "{}\n{{\"resourceType\": \"Patient\", \"id\": \n",
            lines.join("\n")
        ),
    );
    refused(
        &app,
        &["import", s(&file)],
        &["Patient-bad.ndjson", "line 7"],
    );
    assert_eq!(
        status_count(&app, "patients"),
        patients,
        "part of a bad file was stored"
    );
    assert_eq!(status_count(&app, "resources"), resources);

    // Without the bad line, the same file imports.
    let file = write(
        &app,
        "Patient-good.ndjson",
        &format!("{}\n", lines.join("\n")),
    );
    let stdout = ok(&app, &["import", s(&file)]);
    assert!(
        stdout.contains("imported 6 resources from 1 files"),
        "{stdout}"
    );
    assert_eq!(status_count(&app, "patients"), 6);
}

#[test]
fn status_describes_the_running_appliance() {
    let app = appliance(3);
    let stdout = ok(&app, &["status"]);
    for want in [
        "(A81001)",
        "Health:       good",
        "Records:      3 patients",
        "Partners:     3 registered, 1 partner CRLs, 1 clinical systems",
        "DEMAMB Demo Ambulance Service (ambulance)",
    ] {
        assert!(stdout.contains(want), "no {want:?} in {stdout}");
    }
}

#[test]
fn status_refuses_when_migd_is_not_running() {
    let mut app = appliance(0);
    app.stop();
    // The status screen says so in plain words and the exit status says it failed.
    let output = app.migctl(&["status"]);
    let (stdout, _) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("NOT RUNNING: the appliance service does not answer"),
        "{stdout}"
    );
}

#[test]
fn check_passes_on_a_healthy_appliance_and_warns_of_an_expiring_partner() {
    let app = appliance(0);
    let stdout = ok(&app, &["check"]);
    for line in stdout.lines() {
        // Disk space depends on the machine running the tests, not on the appliance.
        if line.contains("disk space") {
            continue;
        }
        assert!(line.starts_with("ok"), "not ok: {line}\n{stdout}");
    }
    for name in [
        "migd running",
        "TPM and keys",
        "certificate matches key",
        "certificate expiry",
        "CRL freshness",
        "partner agreements",
        "clock sane",
    ] {
        assert!(stdout.contains(name), "no {name:?} check: {stdout}");
    }

    let soon = (time::OffsetDateTime::now_utc() + time::Duration::days(10))
        .date()
        .to_string();
    let cert = fresh_partner_cert(&app);
    ok(&app, &partner_args(s(&cert), ("--expires", &soon)));
    let output = app.migctl(&["check"]);
    let (stdout, _) = text(&output);
    assert!(
        output.status.success(),
        "a warning is not a failure: {stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("partner agreements"))
        .unwrap();
    assert!(
        line.starts_with("warn") && line.contains("Test Community Trust (RX9)"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// Alerts and audit
// ---------------------------------------------------------------------------------------------

#[test]
fn alerts_ack_of_an_unknown_id_fails() {
    let app = appliance(0);
    let list = ok(&app, &["alerts", "list"]);
    assert!(list.contains("no unacknowledged alerts"), "{list}");
    refused(
        &app,
        &["alerts", "ack", "4242", "--note", "checked"],
        &["4242"],
    );
}

#[test]
fn audit_patient_refuses_an_invalid_nhs_number_and_lists_a_valid_one() {
    let app = appliance(3);
    refused(
        &app,
        &["audit", "patient", "1234567890"],
        &["not a valid NHS number"],
    );
    let nhs = mig_synthetic::demo_patients()[0].nhs_number.clone();
    let stdout = ok(&app, &["audit", "patient", &nhs]);
    assert!(
        stdout.contains(&format!("no recorded access to {nhs}")),
        "{stdout}"
    );
    let verify = ok(&app, &["audit", "verify"]);
    assert!(verify.contains("audit trail verified"), "{verify}");
    let export = ok(&app, &["audit", "export"]);
    let first: serde_json::Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(first["resourceType"], "AuditEvent");
}

// ---------------------------------------------------------------------------------------------
// Registry files apply one by one; names and sites (issue 13)
// ---------------------------------------------------------------------------------------------

#[test]
fn upstream_add_takes_a_display_name_with_spaces() {
    let app = appliance(0);
    let cert = pki(&app, "out-of-hours.crt");
    let stdout = ok(
        &app,
        &["upstream", "add", "--name", "EMIS Web", "--cert", s(&cert)],
    );
    assert!(
        stdout.contains("registered clinical system EMIS Web"),
        "{stdout}"
    );
    assert!(app
        .app
        .config
        .state_dir
        .join("upstream/emis-web.toml")
        .exists());
    // Printable and bounded: a control character or an over-long name is refused.
    let other = fresh_partner_cert(&app);
    let long = "x".repeat(101);
    for bad in ["EMIS\nWeb", "EMIS\u{1b}[31m", " ", long.as_str()] {
        refused(
            &app,
            &["upstream", "add", "--name", bad, "--cert", s(&other)],
            &["upstream name"],
        );
    }
}

#[test]
fn partner_add_refuses_a_site_that_is_another_partners_ods_code() {
    let app = appliance(0);
    let before = ok(&app, &["partner", "list"]);
    let cert = fresh_partner_cert(&app);
    let mut args = partner_args(s(&cert), ("", ""));
    args.extend(["--sites", "A12345,DEMAMB"]);
    refused(
        &app,
        &args,
        &["site DEMAMB", "(DEMAMB)", "may not be another partner"],
    );
    // The other way round: a new partner whose ODS code is already another's site.
    let mut args = partner_args(s(&cert), ("", ""));
    args.extend(["--sites", "RX8"]);
    ok(&app, &args);
    let second = fresh_partner_cert(&app);
    let args = partner_args(s(&second), ("--ods", "RX8"));
    refused(
        &app,
        &args,
        &[
            "RX8 is a site of registered partner",
            "may not be another partner",
        ],
    );
    assert!(!app.app.config.state_dir.join("partners/RX8.toml").exists());
    let after = ok(&app, &["partner", "list"]);
    assert_eq!(after.lines().count(), before.lines().count() + 1, "{after}");
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// GET /healthz as `who` (a demo partner's certificate file name).
fn healthz(
    runtime: &tokio::runtime::Runtime,
    app: &TestAppliance,
    who: &str,
) -> Result<hardware_tests::load::OneShot, String> {
    let tls = app.partner_tls(who);
    let config = hardware_tests::load::client_config_with_alpn(&tls, &[b"http/1.1"]).unwrap();
    let request = http::Request::get("/healthz")
        .header("host", "localhost")
        .body(bytes::Bytes::new())
        .unwrap();
    runtime.block_on(hardware_tests::load::send_once(
        app.address(),
        config,
        &tls.server_name,
        request,
    ))
}

/// The packaged set-up: migd runs as its own user (here `nobody`) and owns the state directory;
/// the administrator runs `sudo migctl`. A file migd cannot read (root-owned, 0600, as `sudo cp`
/// leaves one) sits beside a CRL that `migctl crl install` writes: the CRL still applies within
/// a second, and `/healthz` and `migctl check` name the unreadable file.
#[test]
fn migd_as_its_own_user_applies_a_crl_from_sudo_migctl_beside_a_file_it_cannot_read() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED migd_as_its_own_user_…: needs root to run migd as another user");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    let mut app = appliance(0);
    app.stop();
    let dir = app.app.dir.clone();
    std::fs::set_permissions(
        dir.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    chown_tree(&dir, uid, gid);
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    assert!(config.contains("[service]\n"), "{config}");
    let config = config.replacen("[service]\n", "[service]\nuser = \"nobody\"\n", 1);
    std::fs::write(app.config_path(), config).unwrap();
    app.start_migd(&[]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let before = healthz(&runtime, &app, "ambulance").unwrap();
    assert_eq!(before.status, 200, "{:?}", before.body);

    // Root writes a file migd cannot read...
    let state = app.app.config.state_dir.clone();
    let unreadable = state.join("partners/RX0.toml");
    std::fs::write(&unreadable, "[agreement]\n").unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o600)).unwrap();
    // ...and `sudo migctl crl install` revokes the ambulance's certificate.
    let ca = {
        let key = KeyPair::from_pem(&std::fs::read_to_string(pki(&app, "partner-ca.key")).unwrap())
            .unwrap();
        let params = CertificateParams::from_ca_cert_pem(
            &std::fs::read_to_string(pki(&app, "partner-ca.pem")).unwrap(),
        )
        .unwrap();
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    };
    let serial = CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(pki(&app, "ambulance.crt")).unwrap(),
    )
    .unwrap()
    .serial_number
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(7),
        crl_number: SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: serial,
            revocation_time: now - time::Duration::minutes(1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap();
    let file = write(&app, "revoke-ambulance.crl", &crl.pem().unwrap());
    let stdout = ok(&app, &["crl", "install", s(&file)]);
    let installed = std::time::Instant::now();
    let crl_path = std::fs::read_dir(state.join("crl"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .unwrap();
    let meta = std::fs::metadata(&crl_path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{stdout}");

    loop {
        if healthz(&runtime, &app, "ambulance").is_err() {
            break;
        }
        assert!(
            installed.elapsed() < std::time::Duration::from_secs(1),
            "the CRL did not apply within a second\n--- migd.log ---\n{}",
            app.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("CRL applied after {} ms", installed.elapsed().as_millis());

    // Everyone else is still served, and told which file is not applied.
    let health = healthz(&runtime, &app, "out-of-hours").unwrap();
    let body = String::from_utf8_lossy(&health.body);
    assert_eq!(health.status, 503, "{body}");
    assert!(body.contains("partners/RX0.toml"), "{body}");
    let output = app.migctl(&["check"]);
    let (stdout, _) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("partners/RX0.toml"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.starts_with("FAIL"), "{line}");
    println!("{line}");

    // Given to migd's user, it is read within a second and reported no more.
    std::fs::remove_file(&unreadable).unwrap();
    let fixed = std::time::Instant::now();
    while healthz(&runtime, &app, "out-of-hours").unwrap().status != 200 {
        assert!(fixed.elapsed() < std::time::Duration::from_secs(1));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn check_and_healthz_name_a_corrupt_registry_file() {
    let app = appliance(0);
    let broken = app.app.config.state_dir.join("upstream/broken.toml");
    std::fs::write(&broken, "name = \"x\"\nspki_sha256 = 7\n").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = std::time::Instant::now();
    let health = loop {
        let health = healthz(&runtime, &app, "ambulance").unwrap();
        if health.status != 200 || start.elapsed() > std::time::Duration::from_secs(2) {
            break health;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let body = String::from_utf8_lossy(&health.body);
    assert_eq!(health.status, 503, "{body}");
    assert!(body.contains("upstream/broken.toml"), "{body}");
    let status = ok(&app, &["status"]);
    assert!(status.contains("1 clinical systems"), "{status}");
    let output = app.migctl(&["check"]);
    let (stdout, _) = text(&output);
    assert!(!output.status.success());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("upstream/broken.toml")),
        "{stdout}"
    );
}
