//! Patient order on disk. A Bulk Data export arrives one resource type per file, so an imported
//! patient's rows land in one run per type, spread over ~18 replica pages that an uncached read
//! must each decrypt and MAC-check. Once writes have settled, each patient whose rows were
//! added is rewritten contiguously (deleted and inserted again at the end of the table), so
//! their record reads from ~10 pages.
//!
//! Nothing a reader sees changes: the rows are the same, a few patients are moved per
//! transaction (a power cut loses at most the batch in progress, which `reorder_pending` still
//! names), and the generation is not raised, since no record changed. `secure_delete` still
//! overwrites what the move frees.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Transaction};

use super::{Replica, ReplicaError};

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> ReplicaError {
    move |e| ReplicaError::Sqlite(operation, e)
}

/// Patients moved per transaction: short enough that an import or upstream write waiting for
/// the writer is not held up noticeably.
const BATCH: usize = 16;

/// Records that these patients' rows were written and are to be laid out again.
pub(super) fn mark<'a>(
    tx: &Transaction<'_>,
    patients: impl IntoIterator<Item = &'a str>,
) -> Result<(), ReplicaError> {
    let mut stmt = tx
        .prepare_cached("INSERT OR IGNORE INTO reorder_pending (patient_id) VALUES (?1)")
        .map_err(sql("noting patients to lay out"))?;
    for patient in patients {
        stmt.execute([patient])
            .map_err(sql("noting patients to lay out"))?;
    }
    Ok(())
}

impl Replica {
    /// Lays out up to `max_patients` waiting patients' rows contiguously, in one transaction;
    /// returns how many were done (0: none waiting).
    pub fn reorder_some(&mut self, max_patients: usize) -> Result<usize, ReplicaError> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a layout batch"))?;
        let patients: Vec<String> = tx
            .prepare_cached("SELECT patient_id FROM reorder_pending LIMIT ?1")
            .and_then(|mut stmt| {
                stmt.query_map([max_patients as i64], |row| row.get(0))?
                    .collect()
            })
            .map_err(sql("reading patients to lay out"))?;
        for patient in &patients {
            move_to_end(&tx, patient)?;
        }
        tx.commit().map_err(sql("committing a layout batch"))?;
        Ok(patients.len())
    }
}

type Row = (String, String, Vec<u8>, String);

/// Deletes the patient's rows and inserts them again, their Patient resource first and the
/// rest in their order so far (so a record lists its items as before), so that they take
/// consecutive rowids at the end of the table.
fn move_to_end(tx: &Transaction<'_>, patient: &str) -> Result<(), ReplicaError> {
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT type, id, facts, body FROM resource WHERE patient_id = ?1
             ORDER BY type <> 'Patient', rowid",
        )
        .and_then(|mut stmt| {
            stmt.query_map([patient], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect()
        })
        .map_err(sql("reading a patient's rows to lay out"))?;
    tx.prepare_cached("DELETE FROM resource WHERE patient_id = ?1")
        .and_then(|mut stmt| stmt.execute([patient]))
        .map_err(sql("removing a patient's rows to lay out"))?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO resource (type, id, patient_id, facts, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(sql("writing a patient's rows in order"))?;
    for (resource_type, id, facts, body) in &rows {
        insert
            .execute(params![resource_type, id, patient, facts, body])
            .map_err(sql("writing a patient's rows in order"))?;
    }
    tx.prepare_cached("DELETE FROM reorder_pending WHERE patient_id = ?1")
        .and_then(|mut stmt| stmt.execute([patient]))
        .map_err(sql("noting a patient laid out"))?;
    Ok(())
}

/// Lays out waiting patients in the background, a batch at a time, once the replica has had
/// no committed write for `settle` (an import of many files writes each patient once per
/// file: moving them in between would be wasted). Never waits for the writer: a batch is
/// skipped while an import holds it. Dropping the returned guard stops the thread and waits for
/// it: a thread still inside SQLCipher while the process exits (and libcrypto's exit handlers
/// run) can crash migd on its way out.
pub fn spawn_reorderer(
    replica: Arc<Mutex<Replica>>,
    settle: Duration,
) -> std::io::Result<Reorderer> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("replica-layout".into())
        .spawn(move || {
            let mut seen: Option<(i64, Instant)> = None;
            loop {
                let pause = match reorder_step(&replica, &mut seen, settle) {
                    Ok(true) => Duration::from_millis(5),
                    Ok(false) => settle.min(Duration::from_secs(1)),
                    Err(e) => {
                        tracing::warn!("laying out the replica in patient order: {e}");
                        Duration::from_secs(60)
                    }
                };
                // The sender never sends: its drop is the stop signal.
                if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                    stopped.recv_timeout(pause)
                {
                    return;
                }
            }
        })?;
    Ok(Reorderer {
        stop: Some(stop),
        handle: Some(handle),
    })
}

/// The background layout thread; stops and is joined when dropped.
pub struct Reorderer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reorderer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// One batch if the replica has settled; true if there may be more to do at once.
fn reorder_step(
    replica: &Mutex<Replica>,
    seen: &mut Option<(i64, Instant)>,
    settle: Duration,
) -> Result<bool, ReplicaError> {
    let Ok(mut replica) = replica.try_lock() else {
        return Ok(false);
    };
    let generation: i64 = replica
        .conn
        .query_row("SELECT n FROM generation", [], |row| row.get(0))
        .map_err(sql("reading the generation"))?;
    let since = match *seen {
        Some((g, since)) if g == generation => since,
        _ => {
            *seen = Some((generation, Instant::now()));
            return Ok(false);
        }
    };
    if since.elapsed() < settle {
        return Ok(false);
    }
    Ok(replica.reorder_some(BATCH)? > 0)
}
