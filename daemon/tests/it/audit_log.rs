//! The audit log end to end on a real SQLCipher file: appends, group commit, checkpoints,
//! alerts, subject-access queries, reopening.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit_support;

use std::sync::Arc;
use std::time::Duration;

use audit_support::*;
use mig::audit::{self, AuditError, AuditOptions, AuditRecord, Decision, PermissionBasis};
use mig::keys::Signer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = Arc::new(open(&path, signer.clone(), AuditOptions::default()));
    let mut tasks = Vec::new();
    for n in 0..200u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(
            async move { log.append(partner_request(n)).await },
        ));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "distinct, gapless");
    let stats = log.stats();
    assert_eq!(stats.records, 200);
    assert!(
        stats.commits < 100,
        "group commit should share fsyncs, got {} commits for 200 records",
        stats.commits
    );
    log.shutdown().await.unwrap();
    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 200);
    assert_eq!(
        report.last_checkpoint_seq, 200,
        "shutdown checkpoints the tail"
    );
    assert_eq!(report.uncovered, None);
}

#[test]
fn wrong_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let log = open(&path, signer(), AuditOptions::default());
    log.append_blocking(partner_request(1)).unwrap();
    log.shutdown_blocking().unwrap();
    let err = audit::AuditReader::open(&path, &[8u8; 32]).err().unwrap();
    assert!(matches!(err, AuditError::WrongKey { .. }), "{err}");
}

#[test]
fn records_round_trip_with_every_field_and_reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = open(&path, signer.clone(), manual_checkpoints());
    let mut first = override_request(1);
    first.time = Some(time::macros::datetime!(2026-11-27 06:00:00.123456789 UTC));
    assert_eq!(log.append_blocking(first.clone()).unwrap(), 1);
    let admin =
        AuditRecord::admin_action("uid=1000(alice)", "partner add --ods RX9", Decision::Permit);
    assert_eq!(log.append_blocking(admin.clone()).unwrap(), 2);
    drop(log); // no explicit shutdown: dropping the handle closes the writer cleanly too

    let log = open(&path, signer.clone(), manual_checkpoints());
    assert_eq!(log.append_blocking(refused_request(3)).unwrap(), 3);
    let records = log.reader().unwrap().records(1).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].time_text, "2026-11-27T06:00:00.123456Z");
    let mut expected = first;
    expected.time = Some(time::macros::datetime!(2026-11-27 06:00:00.123456 UTC));
    assert_eq!(records[0].record, expected);
    assert_eq!(
        records[1].record.operator.as_deref(),
        Some("uid=1000(alice)")
    );
    assert_eq!(
        records[1].record.action.as_deref(),
        Some("partner add --ods RX9")
    );
    assert_eq!(records[0].prev_hash, audit::genesis());
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    log.shutdown_blocking().unwrap();
    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checkpoints_verified, 2);
}

#[test]
fn checkpoints_every_n_records_and_uncovered_tail_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let options = AuditOptions {
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditOptions::default()
    };
    let log = open(&path, signer.clone(), options);
    for n in 0..25 {
        log.append_blocking(partner_request(n)).unwrap();
    }
    let report = log
        .reader()
        .unwrap()
        .verify(&signer.public_key_spki_der())
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.last_checkpoint_seq, 20);
    assert_eq!(report.uncovered, Some((21, 25)));
    assert_eq!(log.stats().checkpoints, 2);
    log.shutdown_blocking().unwrap();
}

#[test]
fn checkpoint_after_interval_only_when_new_records_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let options = AuditOptions {
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_millis(200),
        ..AuditOptions::default()
    };
    let log = open(&path, signer.clone(), options);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(log.stats().checkpoints, 0, "nothing to cover");
    log.append_blocking(partner_request(1)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(log.stats().checkpoints, 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        log.stats().checkpoints,
        1,
        "no new records, no new checkpoint"
    );
    let report = log
        .reader()
        .unwrap()
        .verify(&signer.public_key_spki_der())
        .unwrap();
    assert_eq!(report.last_checkpoint_seq, 1);
    log.shutdown_blocking().unwrap();
}

#[test]
fn a_permitted_override_raises_an_alert_that_can_be_acked_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = open(&path, signer.clone(), AuditOptions::default());
    log.append_blocking(partner_request(1)).unwrap();
    let override_seq = log.append_blocking(override_request(2)).unwrap();
    // A refused override raises nothing.
    let mut refused = override_request(3);
    refused.decision = Decision::Refuse;
    refused.error_code = Some("ACCESS_DENIED".into());
    log.append_blocking(refused).unwrap();

    let reader = log.reader().unwrap();
    let alerts = reader.list_alerts(false).unwrap();
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.seq, override_seq);
    assert_eq!(alert.partner_ods.as_deref(), Some("RX9"));
    assert_eq!(alert.nhs_number.as_deref(), Some("9000000009"));
    assert_eq!(alert.reason.as_deref(), Some("emergency"));
    assert!(alert
        .justification
        .as_deref()
        .unwrap()
        .contains("Unconscious"));
    assert!(alert.acknowledged.is_none());

    let ack_seq = log
        .ack_alert_blocking(
            alert.id,
            "Called the crew, genuine emergency",
            "uid=1001(po)",
        )
        .unwrap();
    assert_eq!(ack_seq, 4);
    assert!(reader.list_alerts(false).unwrap().is_empty());
    let all = reader.list_alerts(true).unwrap();
    let ack = all[0].acknowledged.as_ref().unwrap();
    assert_eq!(ack.seq, ack_seq);
    assert_eq!(ack.operator, "uid=1001(po)");
    assert_eq!(ack.note, "Called the crew, genuine emergency");
    let ack_record = &reader.records(ack_seq).unwrap()[0].record;
    assert_eq!(ack_record.kind, audit::RecordKind::AlertAck);
    assert_eq!(ack_record.alert_id, Some(alert.id));

    match log.ack_alert_blocking(alert.id, "again", "uid=1001(po)") {
        Err(AuditError::AlertAlreadyAcknowledged { id, seq, .. }) => {
            assert_eq!((id, seq), (alert.id, ack_seq))
        }
        other => panic!("expected already acknowledged, got {other:?}"),
    }
    match log.ack_alert_blocking(999, "nope", "uid=1001(po)") {
        Err(AuditError::UnknownAlert { id: 999 }) => {}
        other => panic!("expected unknown alert, got {other:?}"),
    }
    assert_eq!(log.stats().records, 4, "refused acks write nothing");
    log.shutdown_blocking().unwrap();
    assert!(audit::verify(&path, &KEY, &signer.public_key_spki_der())
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn async_ack_and_acks_in_one_batch_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let log = Arc::new(open(&path, signer(), AuditOptions::default()));
    log.append(override_request(1)).await.unwrap();
    let id = log.reader().unwrap().list_alerts(false).unwrap()[0].id;
    let (a, b) = tokio::join!(
        log.ack_alert(id, "first", "po"),
        log.ack_alert(id, "second", "po")
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one ack wins: {a:?} {b:?}");
    log.shutdown().await.unwrap();
}

#[test]
fn patient_accesses_lists_who_viewed_on_what_basis() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let log = open(&path, signer(), AuditOptions::default());
    log.append_blocking(partner_request(1)).unwrap();
    log.append_blocking(override_request(2)).unwrap();
    log.append_blocking(refused_request(3)).unwrap();
    let mut other = partner_request(4);
    other.nhs_number = Some("9000000017".into());
    log.append_blocking(other).unwrap();
    let mut admin = AuditRecord::admin_action("root", "purge patient", Decision::Permit);
    admin.nhs_number = Some("9000000009".into());
    log.append_blocking(admin).unwrap();
    log.shutdown_blocking().unwrap();

    let accesses = audit::patient_accesses(&path, &KEY, "9000000009").unwrap();
    assert_eq!(
        accesses.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(accesses[0].basis, PermissionBasis::Granted);
    assert_eq!(accesses[0].sections, vec!["allergies", "medications"]);
    assert_eq!(accesses[1].basis, PermissionBasis::Override);
    assert_eq!(accesses[1].override_reason.as_deref(), Some("emergency"));
    assert_eq!(accesses[2].decision, Decision::Refuse);
    assert_eq!(
        accesses[2].error_code.as_deref(),
        Some("NO_PATIENT_CONSENT")
    );
    assert_eq!(accesses[0].sds_user_id.as_deref(), Some("100000000001"));
    assert!(audit::patient_accesses(&path, &KEY, "9434765919")
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn appends_after_shutdown_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let log = open(&path, signer(), AuditOptions::default());
    log.append(partner_request(1)).await.unwrap();
    log.shutdown().await.unwrap();
    let err = log.append(partner_request(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
}

#[test]
fn one_commit_per_record_mode_commits_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = Arc::new(open(
        &path,
        signer.clone(),
        AuditOptions {
            group_commit: false,
            ..AuditOptions::default()
        },
    ));
    let handles: Vec<_> = (0..20)
        .map(|n| {
            let log = log.clone();
            std::thread::spawn(move || log.append_blocking(partner_request(n)).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(log.stats().commits, 20);
    log.shutdown_blocking().unwrap();
    assert!(audit::verify(&path, &KEY, &signer.public_key_spki_der())
        .unwrap()
        .is_ok());
}

#[tokio::test]
async fn a_database_locked_by_another_process_makes_appends_unavailable_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = open(
        &path,
        signer.clone(),
        AuditOptions {
            busy_timeout: Duration::from_millis(200),
            ..AuditOptions::default()
        },
    );
    assert_eq!(log.append(partner_request(1)).await.unwrap(), 1);
    let intruder = raw(&path);
    intruder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = log.append(partner_request(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
    intruder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        log.append(partner_request(3)).await.unwrap(),
        2,
        "no gap, no half-written chain"
    );
    log.shutdown().await.unwrap();
    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 2);
}

/// A signer that fails while `failing` is set (a TPM that stopped answering).
#[derive(Debug)]
struct FlakySigner {
    inner: Arc<mig::keys::InMemorySigner>,
    failing: std::sync::atomic::AtomicBool,
}

impl Signer for FlakySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, mig::keys::SignError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(mig::keys::SignError::Unavailable);
        }
        self.inner.sign(message)
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        self.inner.public_key_spki_der()
    }
}

#[test]
fn a_failing_signer_delays_checkpoints_but_not_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let inner = signer();
    let flaky = Arc::new(FlakySigner {
        inner: inner.clone(),
        failing: true.into(),
    });
    let options = AuditOptions {
        checkpoint_every: 5,
        checkpoint_interval: Duration::from_millis(100),
        ..AuditOptions::default()
    };
    let log =
        audit::AuditLog::create(&path, &KEY, flaky.clone(), counter_for(&path), options).unwrap();
    for n in 0..12 {
        log.append_blocking(partner_request(n)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = log.stats();
    assert_eq!(stats.checkpoints, 0);
    assert!(stats.failed_checkpoints >= 1);
    flaky
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1800));
    assert!(log.stats().checkpoints >= 1, "{:?}", log.stats());
    let report = log
        .reader()
        .unwrap()
        .verify(&inner.public_key_spki_der())
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.last_checkpoint_seq, 12);
    log.shutdown_blocking().unwrap();
}

#[test]
fn readers_do_not_create_a_missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let err = audit::AuditReader::open(&path, &KEY).err().unwrap();
    assert!(matches!(err, AuditError::Open { .. }), "{err}");
    assert!(!path.exists());
}
