//! A full audit disk: appends fail with `Unavailable` (the API's 503), the writer keeps running,
//! and once space returns appends succeed again on an unbroken chain. Needs root to mount a
//! 2 MiB tmpfs; skips loudly when that is not permitted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::audit_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use audit_support::*;
use mig::audit::{self, AuditError, AuditOptions};
use mig::keys::Signer;

/// A mounted tmpfs, unmounted on drop (even when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!(
                    "\n!!! SKIPPING the audit disk-full test: cannot mount a tmpfs ({other:?}); \
                     run as root to exercise it !!!\n"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system until it refuses another byte.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    for chunk in [65536usize, 4096, 512, 1] {
        let buf = vec![0x5a; chunk];
        while file.write_all(&buf).and_then(|_| file.sync_all()).is_ok() {}
    }
    filler
}

fn big_record(n: u64) -> audit::AuditRecord {
    let mut r = override_request(n);
    r.override_justification = Some("x".repeat(500));
    r.requesting_device = Some(format!("{{\"note\":\"{}\"}}", "d".repeat(3000)));
    r
}

#[tokio::test]
async fn full_disk_refuses_appends_then_recovers_with_an_unbroken_chain() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let path = db_path(fs.path());
    let signer = signer();
    let log = open(&path, signer.clone(), AuditOptions::default());
    let mut written = 0u64;
    for n in 0..5 {
        log.append(big_record(n)).await.unwrap();
        written += 1;
    }

    let filler = fill(fs.path());
    let mut refused = 0;
    for n in 0..300 {
        match log.append(big_record(100 + n)).await {
            Ok(seq) => {
                written += 1;
                assert_eq!(seq, written, "sequence numbers stay gapless");
            }
            Err(AuditError::Unavailable(why)) => {
                refused += 1;
                eprintln!("append refused while full: {why}");
                if refused >= 3 {
                    break;
                }
            }
            Err(other) => panic!("expected Unavailable, got {other}"),
        }
    }
    assert!(refused >= 3, "the disk never filled up");
    assert!(log.stats().failed_commits >= 3);

    std::fs::remove_file(&filler).unwrap();
    let seq = log.append(big_record(999)).await.unwrap();
    written += 1;
    assert_eq!(
        seq, written,
        "the chain head stayed at the last committed record"
    );
    let seq = log.append(partner_request(1000)).await.unwrap();
    written += 1;
    assert_eq!(seq, written);
    log.shutdown().await.unwrap();

    let report = audit::verify(&path, &KEY, &signer.public_key_spki_der()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, written);
    assert_eq!(report.uncovered, None);
    // Every permitted override that was committed has its alert, and no refused one does.
    let alerts = audit::list_alerts(&path, &KEY, true).unwrap();
    assert_eq!(alerts.len() as u64, written - 1);
}
