//! Each patient's record packed into one compressed row (`patient_record`). A patient's ~150
//! items are ~150 rows; read one by one they cost ~150 B-tree steps over ~10 replica pages of
//! 16 KiB, each decrypted and MAC-checked on a cache miss. Packed, the same facts and bodies
//! are one row of LZ4-compressed bytes a third to a quarter the size: an uncached record reads
//! a few pages in one lookup.
//!
//! The rows stay the truth; a packed record is a copy made from them in one write transaction.
//! It is never older than the rows: every write that touches a patient's rows drops their
//! packed record in the same transaction (`mark` for what an import or Bundle writes; the
//! schema's triggers for a row deleted or moved to another patient), and a reader without one
//! reads the rows. Packing does not raise the generation (no record changed), and a power cut
//! loses at most the batch in progress, which `record_pending` still names.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Transaction};

use super::{Bodies, Replica, ReplicaError};
use mig_policy::fhir::ItemFacts;

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> ReplicaError {
    move |e| ReplicaError::Sqlite(operation, e)
}

/// Patients packed per transaction: short enough that an import or upstream write waiting for
/// the writer is not held up noticeably.
const BATCH: usize = 16;

/// The largest record unpacked (a typical one is ~150 KB): a larger length is a corrupt row,
/// not an allocation to make.
const MAX_UNPACKED: usize = 64 << 20;

/// Drops these patients' packed records and names them to be packed again: their rows were
/// written in this transaction.
pub(super) fn mark<'a>(
    tx: &Transaction<'_>,
    patients: impl IntoIterator<Item = &'a str>,
) -> Result<(), ReplicaError> {
    let mut drop_packed = tx
        .prepare_cached("DELETE FROM patient_record WHERE patient_id = ?1")
        .map_err(sql("dropping packed records"))?;
    let mut name = tx
        .prepare_cached("INSERT OR IGNORE INTO record_pending (patient_id) VALUES (?1)")
        .map_err(sql("noting patients to pack"))?;
    for patient in patients {
        drop_packed
            .execute([patient])
            .map_err(sql("dropping packed records"))?;
        name.execute([patient])
            .map_err(sql("noting patients to pack"))?;
    }
    Ok(())
}

impl Replica {
    /// Packs up to `max_patients` waiting patients' records, in one transaction; returns how
    /// many were done (0: none waiting).
    pub fn pack_some(&mut self, max_patients: usize) -> Result<usize, ReplicaError> {
        let tx = self
            .conn
            .transaction()
            .map_err(sql("starting a packing batch"))?;
        let patients: Vec<String> = tx
            .prepare_cached("SELECT patient_id FROM record_pending LIMIT ?1")
            .and_then(|mut stmt| {
                stmt.query_map([max_patients as i64], |row| row.get(0))?
                    .collect()
            })
            .map_err(sql("reading patients to pack"))?;
        for patient in &patients {
            pack(&tx, patient)?;
        }
        tx.commit().map_err(sql("committing a packing batch"))?;
        Ok(patients.len())
    }
}

/// Packs the patient's rows, their Patient resource first and then their items in the order
/// `ReplicaReader::patient_items` reads them. A patient with no Patient row (purged since) gets
/// no record.
fn pack(tx: &Transaction<'_>, patient: &str) -> Result<(), ReplicaError> {
    let rows: Vec<(bool, Vec<u8>, String)> = tx
        .prepare_cached(
            "SELECT type = 'Patient', facts, body FROM resource WHERE patient_id = ?1
             ORDER BY type <> 'Patient', rowid",
        )
        .and_then(|mut stmt| {
            stmt.query_map([patient], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .map_err(sql("reading a patient's rows to pack"))?;
    if rows.first().is_some_and(|(is_patient, _, _)| *is_patient) {
        let mut lengths_and_facts = Vec::new();
        let mut bodies = String::new();
        for (_, facts, body) in &rows {
            lengths_and_facts.extend_from_slice(&(facts.len() as u32).to_le_bytes());
            lengths_and_facts.extend_from_slice(&(body.len() as u32).to_le_bytes());
            lengths_and_facts.extend_from_slice(facts);
            bodies.push_str(body);
        }
        let facts_block = lz4_flex::block::compress_prepend_size(&lengths_and_facts);
        let mut packed = Vec::with_capacity(facts_block.len() + bodies.len() / 2);
        packed.extend_from_slice(&(facts_block.len() as u32).to_le_bytes());
        packed.extend_from_slice(&facts_block);
        packed.extend_from_slice(&lz4_flex::block::compress_prepend_size(bodies.as_bytes()));
        tx.prepare_cached(
            "INSERT OR REPLACE INTO patient_record (patient_id, record) VALUES (?1, ?2)",
        )
        .and_then(|mut stmt| stmt.execute(params![patient, packed]))
        .map_err(sql("writing a packed record"))?;
    }
    tx.prepare_cached("DELETE FROM record_pending WHERE patient_id = ?1")
        .and_then(|mut stmt| stmt.execute([patient]))
        .map_err(sql("noting a patient packed"))?;
    Ok(())
}

/// A packed record: `u32` length of the first block, then two LZ4 blocks (each prefixed with
/// its unpacked length). The first holds, per resource (the Patient first), the `u32` lengths
/// of its facts and body and then its facts; the second every body, one after another, so that
/// it unpacks straight into the record's `Bodies`.
pub(super) fn unpack(
    patient: &str,
    packed: &[u8],
) -> Result<(ItemFacts, Vec<ItemFacts>, Bodies), ReplicaError> {
    let corrupt = || ReplicaError::CorruptRow(format!("patient_record/{patient}"));
    let (facts_length, rest) = split_u32(packed).ok_or_else(corrupt)?;
    let facts_block = rest.get(..facts_length as usize).ok_or_else(corrupt)?;
    let bodies_block = &rest[facts_block.len()..];
    let facts = unpack_block(facts_block).ok_or_else(corrupt)?;
    let bodies = String::from_utf8(unpack_block(bodies_block).ok_or_else(corrupt)?)
        .map_err(|_| corrupt())?;
    let mut bodies = Bodies::from_text(bodies);
    let mut items = Vec::new();
    let mut rest = &facts[..];
    while !rest.is_empty() {
        let (facts_length, after) = split_u32(rest).ok_or_else(corrupt)?;
        let (body_length, after) = split_u32(after).ok_or_else(corrupt)?;
        let facts = after.get(..facts_length as usize).ok_or_else(corrupt)?;
        rest = &after[facts.len()..];
        items.push(ItemFacts::decode(facts).ok_or_else(corrupt)?);
        bodies.mark_end(body_length as usize).ok_or_else(corrupt)?;
    }
    if !bodies.is_complete() || items.is_empty() {
        return Err(corrupt());
    }
    let patient_facts = items.remove(0);
    Ok((patient_facts, items, bodies))
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (value, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*value), rest))
}

/// One LZ4 block prefixed with its unpacked length, unpacked; `None` if it is not one.
fn unpack_block(block: &[u8]) -> Option<Vec<u8>> {
    let (length, compressed) = split_u32(block)?;
    let length = length as usize;
    if length > MAX_UNPACKED {
        return None;
    }
    let unpacked = lz4_flex::block::decompress(compressed, length).ok()?;
    (unpacked.len() == length).then_some(unpacked)
}

/// Packs waiting patients' records in the background, a batch at a time, once the replica has
/// had no committed write for `settle` (an import of many files writes each patient once per
/// file: packing them in between would be wasted). Never waits for the writer: a batch is
/// skipped while an import holds it. Dropping the returned guard stops the thread and waits for
/// it: a thread still inside SQLCipher while the process exits (and libcrypto's exit handlers
/// run) can crash migd on its way out.
pub fn spawn_packer(replica: Arc<Mutex<Replica>>, settle: Duration) -> std::io::Result<Packer> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("replica-packer".into())
        .spawn(move || {
            let mut seen: Option<(i64, Instant)> = None;
            loop {
                let pause = match pack_step(&replica, &mut seen, settle) {
                    Ok(true) => Duration::from_millis(5),
                    Ok(false) => settle.min(Duration::from_secs(1)),
                    Err(e) => {
                        tracing::warn!("packing patient records: {e}");
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
    Ok(Packer {
        stop: Some(stop),
        handle: Some(handle),
    })
}

/// The background packing thread; stops and is joined when dropped.
pub struct Packer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Packer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// One batch if the replica has settled; true if there may be more to do at once.
fn pack_step(
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
    Ok(replica.pack_some(BATCH)? > 0)
}
