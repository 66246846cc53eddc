//! Audit rollback on a whole appliance over swtpm (SPEC §8, issue 13): the TPM's NV counter
//! that every checkpoint carries makes a trail that was cut back, or an older copy restored,
//! fail `migctl audit verify` and stop migd from starting, with one line saying how to
//! recover; `migctl audit new-trail` is that recovery. A clean restart, and a stop between a
//! checkpoint being stored and the counter being incremented, still start. Also: values that
//! came from partners print escaped in `audit patient` and `alerts list`.
//!
//! Run: `cargo build --bins && cargo test -p hardware-tests --test audit_rollback`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hardware_tests::appliance::{binary, TestAppliance};
use mig::audit::{
    AuditLog, AuditOptions, AuditRecord, Counter, CounterError, Decision, PermissionBasis,
    RecordKind,
};
use mig::service::{DatabaseKey, AUDIT_FILE};
use mig::tpm::{KeyRole, Tpm};

fn audit_path(app: &TestAppliance) -> PathBuf {
    app.app.config.state_dir.join(AUDIT_FILE)
}

/// Each `audit verify` through migd is itself an audited admin action: one record each.
fn add_records(app: &TestAppliance, n: usize) {
    for _ in 0..n {
        let out = app.migctl(&["audit", "verify"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stop(app: &mut TestAppliance) {
    assert!(app.stop().unwrap().success(), "{}", app.log());
}

/// With migd stopped: the TPM (swtpm takes one client at a time) and the audit key.
fn with_tpm<T>(app: &TestAppliance, f: impl FnOnce(&Tpm, &DatabaseKey) -> T) -> T {
    let tpm = Tpm::connect(&mig::service::tpm_settings(&app.app.config).unwrap()).unwrap();
    tpm.load(&app.app.config.state_dir).unwrap();
    let (_, key) = mig::service::unseal_keys(&tpm).unwrap();
    f(&tpm, &key)
}

fn raw(path: &Path, key: &DatabaseKey) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
        hex::encode(key.as_slice())
    ))
    .unwrap();
    conn
}

fn copy_trail(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        let target = PathBuf::from(format!("{}{suffix}", to.display()));
        let _ = std::fs::remove_file(&target);
        if source.exists() {
            std::fs::copy(&source, &target).unwrap();
        }
    }
}

/// Starts migd expecting it to refuse: its exit status and its `migd: …` line.
fn start_expecting_failure(app: &TestAppliance) -> (ExitStatus, String, String) {
    let mut child = Command::new(binary("migd"))
        .arg("--config")
        .arg(app.config_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("migd did not exit on a rolled-back audit trail");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("migd: ")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    println!("fail-closed start: {status}: {}", lines[0]);
    (status, lines[0].to_owned(), stderr)
}

fn assert_refused_as_rolled_back(app: &TestAppliance) {
    let (status, line, stderr) = start_expecting_failure(app);
    assert!(!status.success(), "{stderr}");
    assert!(line.contains("rolled back"), "{line}");
    assert!(line.contains("migctl audit new-trail"), "{line}");
    // `audit verify` works without migd and says the same.
    let out = app.migctl(&["audit", "verify"]);
    let said = text(&out);
    println!("audit verify: {said}");
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("AUDIT TRAIL FAILED VERIFICATION"), "{said}");
    assert!(said.contains("rolled back"), "{said}");
}

#[test]
fn restoring_an_older_trail_is_refused_until_an_audited_new_trail() {
    let mut app = TestAppliance::start(0).unwrap();
    add_records(&app, 2);
    stop(&mut app);
    let older = app.app.dir.join("audit-older.db");
    copy_trail(&audit_path(&app), &older);

    app.start_migd(&[]).unwrap();
    add_records(&app, 2);
    stop(&mut app);
    // A clean restart continues, with the counter in step.
    app.start_migd(&[]).unwrap();
    let out = app.migctl(&["audit", "verify"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("audit trail verified"), "{said}");
    assert!(said.contains("(in step)"), "{said}");
    stop(&mut app);

    copy_trail(&older, &audit_path(&app));
    assert_refused_as_rolled_back(&app);

    // The recovery: refused while the trail is good or migd runs, else archives and restarts.
    let out = app.migctl(&["audit", "new-trail", "--reason", "restored from backup"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("archived as"), "{said}");
    let archived = std::fs::read_dir(app.app.config.state_dir.join("audit-archive"))
        .unwrap()
        .count();
    assert!(archived >= 1);
    app.start_migd(&[]).unwrap();
    let out = app.migctl(&["audit", "new-trail", "--reason", "again"]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = app.migctl(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let export = String::from_utf8_lossy(&app.migctl(&["audit", "export"]).stdout).into_owned();
    assert!(export.contains("audit new-trail"), "{export}");
    assert!(export.contains("restored from backup"), "{export}");
    stop(&mut app);
    let out = app.migctl(&["audit", "new-trail", "--reason", "a good trail"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("verifies"), "{said}");
}

#[test]
fn cutting_trailing_records_and_checkpoints_is_refused() {
    let mut app = TestAppliance::start(0).unwrap();
    add_records(&app, 3);
    stop(&mut app);
    app.start_migd(&[]).unwrap();
    add_records(&app, 3);
    stop(&mut app);
    // Root with the database key drops the last checkpoint and every record after the one
    // before it: what is left chains and is signed.
    let path = audit_path(&app);
    let cut = with_tpm(&app, |_, key| {
        let conn = raw(&path, key);
        let seqs: Vec<i64> = conn
            .prepare("SELECT seq FROM checkpoints ORDER BY seq DESC LIMIT 2")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs.len(), 2, "{seqs:?}");
        conn.execute("DELETE FROM records WHERE seq > ?1", [seqs[1]])
            .unwrap();
        conn.execute("DELETE FROM checkpoints WHERE seq > ?1", [seqs[1]])
            .unwrap();
        seqs
    });
    println!("cut the trail back from record {} to {}", cut[0], cut[1]);
    assert_refused_as_rolled_back(&app);
}

/// The TPM counter, with increments failing: migd stopped after storing a checkpoint and
/// before incrementing the counter to its value.
#[derive(Debug)]
struct StopsBeforeIncrement(Arc<dyn Counter>);

impl Counter for StopsBeforeIncrement {
    fn read(&self) -> Result<u64, CounterError> {
        self.0.read()
    }

    fn increment(&self) -> Result<u64, CounterError> {
        Err(CounterError::Unavailable)
    }
}

#[test]
fn a_stop_between_checkpoint_and_increment_still_starts() {
    let mut app = TestAppliance::start(0).unwrap();
    stop(&mut app);
    let path = audit_path(&app);
    let (before, after) = with_tpm(&app, |tpm, key| {
        let counter = tpm.audit_counter();
        let before = counter.read().unwrap();
        let log = AuditLog::open(
            &path,
            key,
            tpm.signer(KeyRole::Audit).unwrap(),
            Arc::new(StopsBeforeIncrement(counter.clone())),
            AuditOptions::default(),
        )
        .unwrap();
        log.append_blocking(AuditRecord::admin_action(
            "test",
            "a record whose checkpoint's increment is lost",
            Decision::Permit,
        ))
        .unwrap();
        assert!(log.shutdown_blocking().is_err());
        drop(log);
        (before, counter.read().unwrap())
    });
    assert_eq!(before, after, "the increment must not have happened");
    app.start_migd(&[]).unwrap();
    let out = app.migctl(&["audit", "verify"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("(in step)"),
        "migd did not complete the increment: {said}"
    );
    stop(&mut app);
    let now = with_tpm(&app, |tpm, _| tpm.counter_read().unwrap());
    assert!(now > before + 1, "{before} -> {now}");
}

#[test]
fn partner_values_print_escaped_in_audit_patient_and_alerts_list() {
    let mut app = TestAppliance::start(0).unwrap();
    stop(&mut app);
    let path = audit_path(&app);
    let nasty = "u1\nFORGED 2026-01-01\tpermit\r\x1b[2J\x1b]0;owned\x07\u{9b}1m\u{202e}";
    with_tpm(&app, |tpm, key| {
        let log = AuditLog::open(
            &path,
            key,
            tpm.signer(KeyRole::Audit).unwrap(),
            tpm.audit_counter(),
            AuditOptions::default(),
        )
        .unwrap();
        let mut record = AuditRecord::new(RecordKind::PartnerRequest, Decision::Permit);
        record.partner_ods = Some("DEMAMB".into());
        record.sds_user_id = Some(nasty.into());
        record.sds_role_profile_id = Some(nasty.into());
        record.job_role = Some(nasty.into());
        record.requesting_org_ods = Some(nasty.into());
        record.requesting_device = Some(nasty.into());
        record.nhs_number = Some("9000000009".into());
        record.from_asid = Some("200000000999".into());
        record.basis = PermissionBasis::Override;
        record.override_reason = Some(nasty.into());
        record.override_justification = Some(nasty.into());
        log.append_blocking(record).unwrap();
        log.shutdown_blocking().unwrap();
    });
    app.start_migd(&[]).unwrap();
    for args in [
        &["audit", "patient", "9000000009"][..],
        &["alerts", "list"][..],
    ] {
        let out = app.migctl(args);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{args:?}: {stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
        assert!(
            !stdout.contains('\x1b') && !stdout.contains('\r'),
            "{stdout:?}"
        );
        assert!(
            !stdout.contains('\u{9b}') && !stdout.contains('\u{202e}'),
            "{stdout:?}"
        );
        assert!(stdout.contains("u1\\nFORGED"), "{stdout:?}");
    }
    let patient = String::from_utf8_lossy(&app.migctl(&["audit", "patient", "9000000009"]).stdout)
        .into_owned();
    assert!(patient.contains("asid 200000000999"), "{patient}");
    stop(&mut app);
}

/// Someone removed the counter's NV index (it needs only the owner password, empty by
/// default): migd refuses to start rather than sign checkpoints nobody can check.
#[test]
fn a_removed_counter_stops_migd() {
    use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, TpmHandle};
    use tss_esapi::interface_types::resource_handles::Provision;
    use tss_esapi::interface_types::session_handles::AuthSession;
    let mut app = TestAppliance::start(0).unwrap();
    stop(&mut app);
    {
        let tcti = format!("swtpm:host=127.0.0.1,port={}", app.app.tpm_port);
        let conf =
            <tss_esapi::tcti_ldr::TctiNameConf as std::str::FromStr>::from_str(&tcti).unwrap();
        let mut context = tss_esapi::Context::new(conf).unwrap();
        let index = NvIndexTpmHandle::new(mig::tpm::AUDIT_COUNTER_INDEX).unwrap();
        let handle = context
            .tr_from_tpm_public(TpmHandle::NvIndex(index))
            .unwrap();
        context
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.nv_undefine_space(Provision::Owner, NvIndexHandle::from(handle))
            })
            .unwrap();
    }
    let (status, line, stderr) = start_expecting_failure(&app);
    assert!(!status.success(), "{stderr}");
    assert!(line.contains("audit counter"), "{line}");
}
