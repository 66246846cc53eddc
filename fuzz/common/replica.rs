//! A scratch replica shared by the ingest targets: one SQLCipher file per fuzzing process, plus a
//! second connection that reads what is committed, so a target can check that a rejected batch
//! left nothing behind (ingest promises each batch commits whole or not at all).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mig::replica::Replica;
use rusqlite::Connection;

pub const KEY: [u8; 32] = [1u8; 32];

/// Above this many resources the scratch replica is emptied, so runs stay fast.
const RESET_ABOVE: i64 = 5_000;

pub struct Scratch {
    pub replica: Replica,
    observer: Connection,
    // Held for its Drop; the file lives as long as the process.
    _dir: tempfile::TempDir,
}

/// What is committed, cheaply summarised: counts and total lengths, so a replaced body shows up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Digest {
    pub resources: i64,
    pub patients: i64,
    pub body_bytes: f64,
    pub facts_bytes: f64,
    pub patient_refs_bytes: f64,
    pub nhs_bytes: f64,
}

fn scratch_dir() -> tempfile::TempDir {
    // /dev/shm keeps SQLite's fsyncs cheap; fall back to the usual temporary directory.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(&shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

fn open_observer(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("observer opens the replica");
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute_batch(&format!(
        "PRAGMA cipher_log_level = NONE; PRAGMA key = \"x'{hex}'\"; \
         PRAGMA cipher_page_size = 16384; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;"
    ))
    .expect("observer sets the key");
    conn
}

pub fn scratch() -> MutexGuard<'static, Scratch> {
    static SCRATCH: OnceLock<Mutex<Scratch>> = OnceLock::new();
    let lock = SCRATCH.get_or_init(|| {
        let dir = scratch_dir();
        let path = dir.path().join("replica.db");
        let replica = Replica::create(&path, &KEY).expect("a fresh replica");
        let observer = open_observer(&path);
        Mutex::new(Scratch {
            replica,
            observer,
            _dir: dir,
        })
    });
    // A panic inside a target poisons the lock, but libFuzzer stops at the first panic anyway.
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Scratch {
    pub fn digest(&self) -> Digest {
        let (resources, body_bytes, facts_bytes, patient_refs_bytes) = self
            .observer
            .query_row(
                "SELECT count(*), total(length(body)), total(length(facts)),
                        total(length(patient_id)) FROM resource",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .expect("observer reads resources");
        let (patients, nhs_bytes) = self
            .observer
            .query_row(
                "SELECT count(*), total(length(id) + length(nhs_number)) FROM patient",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("observer reads patients");
        Digest {
            resources,
            patients,
            body_bytes,
            facts_bytes,
            patient_refs_bytes,
            nhs_bytes,
        }
    }

    /// Stored resources whose patient is not in the replica (ingest must never leave one).
    pub fn orphans(&self) -> i64 {
        self.observer
            .query_row(
                "SELECT count(*) FROM resource
                 WHERE patient_id IS NOT NULL AND patient_id NOT IN (SELECT id FROM patient)",
                [],
                |row| row.get(0),
            )
            .expect("observer reads orphans")
    }

    /// Empties the replica once it has grown large (between iterations, never during one).
    pub fn trim(&self, digest: &Digest) {
        if digest.resources > RESET_ABOVE {
            self.observer
                .execute_batch("DELETE FROM resource; DELETE FROM patient;")
                .expect("observer empties the replica");
        }
    }
}
