//! Tampering with a real audit database file: each kind of change makes `verify` fail and name
//! the first bad record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use audit_support::*;
use mig::audit::{self, AuditOptions, Problem, VerifyReport};
use mig::keys::{InMemorySigner, Signer};
use rusqlite::params;

/// 30 records with checkpoints at 10, 20 and 30.
fn trail() -> (tempfile::TempDir, PathBuf, Arc<InMemorySigner>) {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let options = AuditOptions {
        checkpoint_every: 10,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditOptions::default()
    };
    let log = open(&path, signer.clone(), options);
    for n in 1..=30 {
        let record = if n % 7 == 0 {
            override_request(n)
        } else {
            partner_request(n)
        };
        assert_eq!(log.append_blocking(record).unwrap(), n);
    }
    log.shutdown_blocking().unwrap();
    let report = verify(&path, &signer);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checkpoints_verified, 3);
    assert_eq!(report.uncovered, None);
    (dir, path, signer)
}

fn verify(path: &Path, signer: &InMemorySigner) -> VerifyReport {
    audit::verify(path, &KEY, &signer.public_key_spki_der()).unwrap()
}

fn problem(path: &Path, signer: &InMemorySigner) -> Problem {
    let report = verify(path, signer);
    let problem = report
        .problem
        .clone()
        .unwrap_or_else(|| panic!("verify passed: {report:?}"));
    eprintln!("verify says: {problem}");
    problem
}

/// Recomputes and stores record `seq`'s hash, as a careful forger would.
fn rehash(path: &Path, seq: u64) {
    let stored = audit::AuditReader::open(path, &KEY)
        .unwrap()
        .records(seq)
        .unwrap()[0]
        .clone();
    let hash = audit::record_hash(seq, &stored.time_text, &stored.record, &stored.prev_hash);
    raw(path)
        .execute(
            "UPDATE records SET hash = ?1 WHERE seq = ?2",
            params![&hash[..], seq as i64],
        )
        .unwrap();
}

#[test]
fn changed_field_is_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute(
            "UPDATE records SET nhs_number = '9434765919' WHERE seq = 12",
            [],
        )
        .unwrap();
    assert_eq!(problem(&path, &signer), Problem::Modified { seq: 12 });
}

#[test]
fn changed_sections_list_is_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute(
            r#"UPDATE records SET sections = '["allergies"]' WHERE seq = 3"#,
            [],
        )
        .unwrap();
    assert_eq!(problem(&path, &signer), Problem::Modified { seq: 3 });
}

#[test]
fn changed_field_with_recomputed_hash_is_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute("UPDATE records SET decision = 'refuse' WHERE seq = 14", [])
        .unwrap();
    rehash(&path, 14);
    assert_eq!(problem(&path, &signer), Problem::Modified { seq: 14 });
}

#[test]
fn changed_last_record_after_the_last_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    let signer = signer();
    let log = open(&path, signer.clone(), manual_checkpoints());
    for n in 1..=5 {
        log.append_blocking(partner_request(n)).unwrap();
    }
    drop(log); // checkpoints 5
    let log = open(&path, signer.clone(), manual_checkpoints());
    for n in 6..=8 {
        log.append_blocking(partner_request(n)).unwrap();
    }
    // Simulate a crash: take the writer's file as it is, before any checkpoint covers 6..8.
    let copy = dir.path().join("copy.db");
    let conn = raw(&path);
    // The copy is a new database: it takes SQLCipher's defaults, so make those the log's.
    conn.execute_batch("PRAGMA cipher_default_hmac_algorithm = HMAC_SHA256;")
        .unwrap();
    conn.execute("VACUUM INTO ?1", params![copy.to_str().unwrap()])
        .unwrap();
    drop(conn);
    log.shutdown_blocking().unwrap();
    let report = verify(&copy, &signer);
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        report.uncovered,
        Some((6, 8)),
        "the tail is a warning, not a failure"
    );
    raw(&copy)
        .execute("UPDATE records SET job_role = 'R0001' WHERE seq = 8", [])
        .unwrap();
    assert_eq!(problem(&copy, &signer), Problem::Modified { seq: 8 });
}

#[test]
fn deleted_record_is_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute("DELETE FROM records WHERE seq = 17", [])
        .unwrap();
    assert_eq!(
        problem(&path, &signer),
        Problem::Deleted { seq: 17, until: 17 }
    );
}

#[test]
fn deleted_first_records_are_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute("DELETE FROM records WHERE seq <= 2", [])
        .unwrap();
    assert_eq!(
        problem(&path, &signer),
        Problem::Deleted { seq: 1, until: 2 }
    );
}

#[test]
fn swapped_records_are_named() {
    let (_dir, path, signer) = trail();
    let conn = raw(&path);
    conn.execute_batch(
        "UPDATE records SET seq = -1 WHERE seq = 5;
         UPDATE records SET seq = 5 WHERE seq = 6;
         UPDATE records SET seq = 6 WHERE seq = -1;",
    )
    .unwrap();
    assert_eq!(problem(&path, &signer), Problem::Reordered { seq: 5 });
}

#[test]
fn truncated_tail_is_named() {
    let (_dir, path, signer) = trail();
    raw(&path)
        .execute("DELETE FROM records WHERE seq > 26", [])
        .unwrap();
    let p = problem(&path, &signer);
    assert_eq!(
        p,
        Problem::Truncated {
            last_present: 26,
            checkpoint_seq: 30
        }
    );
    assert_eq!(p.first_bad_record(), 27);
}

#[test]
fn forged_checkpoint_signature_is_named() {
    let (_dir, path, signer) = trail();
    let conn = raw(&path);
    let (id, mut signature): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT id, signature FROM checkpoints WHERE seq = 20",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let last = signature.len() - 1;
    signature[last] ^= 0x01;
    conn.execute(
        "UPDATE checkpoints SET signature = ?1 WHERE id = ?2",
        params![signature, id],
    )
    .unwrap();
    assert_eq!(
        problem(&path, &signer),
        Problem::BadCheckpointSignature {
            checkpoint_id: id as u64,
            seq: 20
        }
    );
}

#[test]
fn checkpoint_signed_by_another_key_is_refused() {
    let (_dir, path, signer) = trail();
    let conn = raw(&path);
    let (head, time, counter): (Vec<u8>, String, i64) = conn
        .query_row(
            "SELECT head, time, counter FROM checkpoints WHERE seq = 30",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let other = InMemorySigner::generate().unwrap();
    let head: [u8; 32] = head.try_into().unwrap();
    let forged = other
        .sign(&audit::checkpoint_message(30, &head, counter as u64, &time))
        .unwrap();
    conn.execute(
        "UPDATE checkpoints SET signature = ?1 WHERE seq = 30",
        params![forged],
    )
    .unwrap();
    assert!(matches!(
        problem(&path, &signer),
        Problem::BadCheckpointSignature { seq: 30, .. }
    ));
}

#[test]
fn rewritten_consistent_tail_is_caught_by_the_checkpoint() {
    let (_dir, path, signer) = trail();
    // A forger with the database key rewrites record 13 and re-links every record after it.
    raw(&path)
        .execute(
            "UPDATE records SET sds_user_id = '999999999999' WHERE seq = 13",
            [],
        )
        .unwrap();
    for seq in 13..=30u64 {
        rehash(&path, seq);
        if seq < 30 {
            let hash: Vec<u8> = raw(&path)
                .query_row(
                    "SELECT hash FROM records WHERE seq = ?1",
                    [seq as i64],
                    |r| r.get(0),
                )
                .unwrap();
            raw(&path)
                .execute(
                    "UPDATE records SET prev_hash = ?1 WHERE seq = ?2",
                    params![hash, (seq + 1) as i64],
                )
                .unwrap();
        }
    }
    let p = problem(&path, &signer);
    assert!(
        matches!(
            p,
            Problem::CheckpointMismatch {
                from: 11,
                seq: 20,
                ..
            }
        ),
        "{p:?}"
    );
    assert_eq!(p.first_bad_record(), 11);
}

#[test]
fn a_flipped_byte_in_the_encrypted_file_fails_verification() {
    let (_dir, path, signer) = trail();
    // Fold the WAL into the main file so the flip hits record pages.
    raw(&path)
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192);
    // Page 2 onwards hold tables; flip a byte in the middle of the second page.
    bytes[4096 + 2048] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match audit::verify(&path, &KEY, &signer.public_key_spki_der()) {
        Err(e) => eprintln!("verify refused: {e}"),
        Ok(report) => assert!(!report.is_ok(), "a corrupted file verified: {report:?}"),
    }
}

#[test]
fn wrong_public_key_fails_every_checkpoint() {
    let (_dir, path, _signer) = trail();
    let other = InMemorySigner::generate().unwrap();
    let report = audit::verify(&path, &KEY, &other.public_key_spki_der()).unwrap();
    assert!(matches!(
        report.problem,
        Some(Problem::BadCheckpointSignature { seq: 10, .. })
    ));
    assert!(audit::verify(&path, &KEY, b"not a key").is_err());
}
