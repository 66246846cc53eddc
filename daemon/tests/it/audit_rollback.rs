//! Rolling the trail back (SPEC §8): cutting trailing records and checkpoints, or restoring an
//! older copy, leaves the last checkpoint's counter behind the (stand-in) TPM counter, so
//! `verify` names it and the writer refuses to open the trail; a clean reopen, and a stop
//! between storing a checkpoint and incrementing the counter, still open. The same on swtpm
//! with the real migd: hardware-tests/tests/audit_rollback.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use audit_support::*;
use mig::audit::{self, AuditError, AuditOptions, Counter, CounterError, Problem, VerifyReport};
use mig::keys::{InMemorySigner, Signer};

fn every(n: u64) -> AuditOptions {
    AuditOptions {
        checkpoint_every: n,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditOptions::default()
    }
}

/// `records` records, a checkpoint every 10 and one at the end.
fn trail(records: u64) -> (tempfile::TempDir, PathBuf, Arc<InMemorySigner>) {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    append(&path, &signer, records);
    (dir, path, signer)
}

fn append(path: &Path, signer: &Arc<InMemorySigner>, records: u64) {
    let log = open(path, signer.clone(), every(10));
    for n in 0..records {
        log.append_blocking(partner_request(n)).unwrap();
    }
    log.shutdown_blocking().unwrap();
}

fn verify(path: &Path, signer: &InMemorySigner) -> VerifyReport {
    audit::AuditReader::open(path, &KEY)
        .unwrap()
        .verify_with_counter(&signer.public_key_spki_der(), counter_for(path).as_ref())
        .unwrap()
}

fn refused_at_open(path: &Path, signer: &Arc<InMemorySigner>) -> (Problem, String) {
    match try_open(path, signer.clone(), every(10)) {
        Err(AuditError::TrailRejected { problem, .. }) => {
            let line = try_open(path, signer.clone(), every(10))
                .unwrap_err()
                .to_string();
            eprintln!("open refused: {line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("new-trail"), "no recovery advice: {line}");
            (problem, line)
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a rolled-back trail was opened"),
    }
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

#[test]
fn counter_is_in_step_after_a_clean_reopen_and_the_trail_continues() {
    let (_dir, path, signer) = trail(25);
    let report = verify(&path, &signer);
    assert!(report.is_ok(), "{report:?}");
    let counter = report.counter.unwrap();
    assert_eq!(counter.checkpoint, counter.tpm);
    assert_eq!(counter.tpm, 3, "checkpoints at 10, 20 and 25");
    append(&path, &signer, 5);
    let report = verify(&path, &signer);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 30);
    assert_eq!(report.counter.unwrap().tpm, 4);
}

#[test]
fn cutting_the_last_checkpoint_and_its_records_is_named_and_refused() {
    let (_dir, path, signer) = trail(30);
    // Root with the database key drops records 21-30 and the checkpoint covering them: the
    // rest chains perfectly and its last checkpoint (20) is genuine.
    let conn = raw(&path);
    conn.execute("DELETE FROM records WHERE seq > 20", [])
        .unwrap();
    conn.execute("DELETE FROM checkpoints WHERE seq > 20", [])
        .unwrap();
    drop(conn);
    assert!(
        audit::verify(&path, &KEY, &signer.public_key_spki_der())
            .unwrap()
            .is_ok(),
        "without the TPM counter the cut is invisible"
    );
    let report = verify(&path, &signer);
    assert_eq!(
        report.problem,
        Some(Problem::RolledBack {
            seq: 20,
            checkpoint_counter: 2,
            tpm_counter: 3
        }),
        "{report:?}"
    );
    eprintln!("verify says: {}", report.problem.unwrap());
    let (problem, line) = refused_at_open(&path, &signer);
    assert!(matches!(problem, Problem::RolledBack { .. }));
    assert!(line.contains("rolled back"), "{line}");
}

#[test]
fn dropping_only_the_last_checkpoint_row_is_named_and_refused() {
    let (_dir, path, signer) = trail(30);
    raw(&path)
        .execute("DELETE FROM checkpoints WHERE seq = 30", [])
        .unwrap();
    assert!(matches!(
        verify(&path, &signer).problem,
        Some(Problem::RolledBack { .. })
    ));
    refused_at_open(&path, &signer);
}

#[test]
fn restoring_an_older_copy_is_named_and_refused() {
    let (dir, path, signer) = trail(12);
    let copy = dir.path().join("older.db");
    copy_trail(&path, &copy);
    append(&path, &signer, 3);
    copy_trail(&copy, &path);
    let report = verify(&path, &signer);
    assert!(
        matches!(report.problem, Some(Problem::RolledBack { seq: 12, .. })),
        "{report:?}"
    );
    refused_at_open(&path, &signer);
}

#[test]
fn a_rewritten_record_after_the_last_checkpoint_is_refused_at_open() {
    let (_dir, path, signer) = trail(30);
    // Records after the last checkpoint, as after a crash: 31-33 uncovered.
    let log = open(&path, signer.clone(), manual_checkpoints());
    for n in 0..3 {
        log.append_blocking(partner_request(n)).unwrap();
    }
    std::mem::forget(log); // no final checkpoint, as if killed
    raw(&path)
        .execute(
            "UPDATE records SET nhs_number = '9434765919' WHERE seq = 32",
            [],
        )
        .unwrap();
    let (problem, _) = refused_at_open(&path, &signer);
    assert_eq!(problem, Problem::Modified { seq: 32 });
}

#[test]
fn a_deleted_database_is_not_recreated_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let error = mig::audit::AuditLog::open(
        &path,
        &KEY,
        signer() as Arc<dyn Signer>,
        counter_for(&path),
        every(10),
    )
    .unwrap_err();
    assert!(matches!(error, AuditError::Missing { .. }), "{error}");
    assert!(!path.exists());
}

#[test]
fn an_emptied_database_is_refused() {
    let (_dir, path, signer) = trail(5);
    let conn = raw(&path);
    conn.execute("DELETE FROM records", []).unwrap();
    conn.execute("DELETE FROM checkpoints", []).unwrap();
    drop(conn);
    let (problem, _) = refused_at_open(&path, &signer);
    assert_eq!(problem, Problem::NoCheckpoint);
}

/// The stand-in counter, whose increments fail while `failing` (migd stopped between storing a
/// checkpoint and incrementing the counter).
#[derive(Debug)]
struct StopsBeforeIncrement {
    inner: Arc<FileCounter>,
    failing: std::sync::atomic::AtomicBool,
}

impl Counter for StopsBeforeIncrement {
    fn read(&self) -> Result<u64, CounterError> {
        self.inner.read()
    }

    fn increment(&self) -> Result<u64, CounterError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CounterError::Unavailable);
        }
        self.inner.increment()
    }
}

#[test]
fn a_stop_between_storing_a_checkpoint_and_incrementing_still_opens() {
    let (_dir, path, signer) = trail(10);
    let counter = Arc::new(StopsBeforeIncrement {
        inner: counter_for(&path),
        failing: true.into(),
    });
    let log = mig::audit::AuditLog::open(
        &path,
        &KEY,
        signer.clone() as Arc<dyn Signer>,
        counter.clone(),
        manual_checkpoints(),
    )
    .unwrap();
    log.append_blocking(partner_request(1)).unwrap();
    // The final checkpoint is stored; its increment fails.
    assert!(log.shutdown_blocking().is_err());
    drop(log);
    let report = verify(&path, &signer);
    assert!(report.is_ok(), "{report:?}");
    let check = report.counter.unwrap();
    assert_eq!(check.checkpoint, check.tpm + 1, "{check:?}");

    // The next open completes the increment.
    let log = open(&path, signer.clone(), every(10));
    let report = verify(&path, &signer);
    let check = report.counter.unwrap();
    assert_eq!(check.checkpoint, check.tpm, "{check:?}");
    log.append_blocking(partner_request(2)).unwrap();
    log.shutdown_blocking().unwrap();
    assert!(verify(&path, &signer).is_ok());
}

#[test]
fn a_trail_one_checkpoint_behind_the_counter_is_a_rollback() {
    let (_dir, path, signer) = trail(10);
    let counter = counter_for(&path);
    counter.set(counter.read().unwrap() + 1);
    // One ahead of the trail: exactly what a lost checkpoint looks like.
    assert!(matches!(
        verify(&path, &signer).problem,
        Some(Problem::RolledBack { .. })
    ));
    refused_at_open(&path, &signer);
}
