//! SIGKILL during appends: every sequence number the child was told is durable survives, and the
//! chain verifies (the tail after the last checkpoint is uncovered but must chain).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_support::*;
use mig::audit::{self, AuditOptions};
use mig::keys::{InMemorySigner, Signer};

const DIR_VAR: &str = "MIG_AUDIT_CRASH_DIR";
const KEY_VAR: &str = "MIG_AUDIT_CRASH_SIGNER";

/// The child half: only does anything when re-executed by `sigkill_loses_no_acknowledged_record`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let pkcs8 = hex::decode(std::env::var(KEY_VAR).unwrap()).unwrap();
    let signer: Arc<dyn Signer> = InMemorySigner::from_pkcs8(&pkcs8).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let options = AuditOptions {
            checkpoint_every: 50,
            ..AuditOptions::default()
        };
        let path = db_path(std::path::Path::new(&dir));
        let log = Arc::new(
            mig::audit::AuditLog::create(&path, &KEY, signer, counter_for(&path), options).unwrap(),
        );
        let stop = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for worker in 0..8u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = worker * 1_000_000;
                while Instant::now() < stop {
                    n += 1;
                    let record = if n % 13 == 0 {
                        override_request(n)
                    } else {
                        partner_request(n)
                    };
                    let seq = log.append(record).await.unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "SEQ {seq}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn sigkill_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .unwrap();
    let signer = InMemorySigner::from_pkcs8(pkcs8.as_ref()).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "audit_crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir.path())
        .env(KEY_VAR, hex::encode(pkcs8.as_ref()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Kill it mid-stream, well past a few checkpoints.
    while acknowledged.len() < 700 {
        assert!(Instant::now() < deadline, "child too slow");
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(seq) = line.strip_prefix("SEQ ") {
            acknowledged.push(seq.parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL
                           // Whatever it printed before dying is still in the pipe.
    for line in lines {
        if let Some(seq) = line.unwrap().strip_prefix("SEQ ") {
            acknowledged.push(seq.parse::<u64>().unwrap());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child should have been killed");

    let path = db_path(dir.path());
    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    eprintln!(
        "after SIGKILL: {} records, {} acknowledged, last checkpoint {}, uncovered {:?}",
        report.records,
        acknowledged.len(),
        report.last_checkpoint_seq,
        report.uncovered
    );
    assert!(report.is_ok(), "{report:?}");
    assert!(report.checkpoints_verified >= 5, "{report:?}");
    let max = *acknowledged.iter().max().unwrap();
    assert!(
        report.records >= max,
        "record {max} was acknowledged but the log holds {}",
        report.records
    );
    let present: std::collections::HashSet<u64> = audit::AuditReader::open(&path, &KEY)
        .unwrap()
        .records(1)
        .unwrap()
        .into_iter()
        .map(|r| r.seq)
        .collect();
    for seq in &acknowledged {
        assert!(
            present.contains(seq),
            "acknowledged record {seq} is missing"
        );
    }

    // The log reopens, at once signs a checkpoint over what the crash left uncovered, and
    // continues the chain from there.
    let log = open(&path, signer.clone(), AuditOptions::default());
    let reopened = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(reopened.is_ok(), "{reopened:?}");
    assert_eq!(reopened.uncovered, None, "{reopened:?}");
    assert_eq!(reopened.last_checkpoint_seq, report.records);
    let next = log.append_blocking(partner_request(1)).unwrap();
    assert_eq!(next, report.records + 1);
    log.shutdown_blocking().unwrap();
    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.uncovered, None);
}
