//! `migctl audit verify`: walks the chain from the genesis value, checking each record's hash,
//! link and sequence number, and each checkpoint's signature, head and TPM counter value, then
//! compares the last checkpoint's counter with the TPM's; names the first fault. Also the quick
//! check migd makes at start (`check_tail`): the last checkpoint and the records after it.

use std::collections::HashMap;
use std::fmt;

use rusqlite::Connection;
use serde::Serialize;

use super::counter::Counter;
use super::record::{checkpoint_message, genesis};
use super::store::{record_from_row, RECORD_COLUMNS};
use super::AuditError;

/// The first thing wrong with the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum Problem {
    /// Record `seq`'s contents do not match the hash it was written with (or the next record's
    /// link to it): it was changed after it was written.
    Modified { seq: u64 },
    /// Records `seq` up to `until` (inclusive) are missing: the next present record is `until + 1`.
    Deleted { seq: u64, until: u64 },
    /// Record `seq` is out of place: it links to a record that now comes after it.
    Reordered { seq: u64 },
    /// Record `seq` does not link to record `seq - 1`, and neither looks changed on its own
    /// (a record was replaced by a consistent forgery).
    BrokenLink { seq: u64 },
    /// A checkpoint covers records up to `checkpoint_seq` but the log ends at `last_present`:
    /// the tail from `last_present + 1` was removed.
    Truncated {
        last_present: u64,
        checkpoint_seq: u64,
    },
    /// Checkpoint `checkpoint_id` (covering up to record `seq`) is not signed by the audit key.
    BadCheckpointSignature { checkpoint_id: u64, seq: u64 },
    /// Checkpoint `checkpoint_id` is validly signed but the chain now has a different head at
    /// record `seq`: some record in `from..=seq` was rewritten together with all its successors.
    CheckpointMismatch {
        checkpoint_id: u64,
        from: u64,
        seq: u64,
    },
    /// Checkpoint `checkpoint_id` carries a TPM counter value no greater than an earlier one's:
    /// checkpoints were replayed or reordered.
    CounterNotIncreasing { checkpoint_id: u64, seq: u64 },
    /// The last checkpoint (record `seq`) carries TPM counter `checkpoint_counter`, but the TPM's
    /// counter is already at `tpm_counter`: later checkpoints were removed (the trail was cut
    /// back or an older copy restored).
    RolledBack {
        seq: u64,
        checkpoint_counter: u64,
        tpm_counter: u64,
    },
    /// The last checkpoint carries a counter value more than one ahead of the TPM's: it was not
    /// made with this TPM.
    CounterAhead {
        seq: u64,
        checkpoint_counter: u64,
        tpm_counter: u64,
    },
    /// The trail has no signed checkpoint at all (every trail gets one when it is created).
    NoCheckpoint,
}

impl Problem {
    /// The first record the problem concerns.
    pub fn first_bad_record(&self) -> u64 {
        match *self {
            Problem::Modified { seq }
            | Problem::Deleted { seq, .. }
            | Problem::Reordered { seq }
            | Problem::BrokenLink { seq }
            | Problem::BadCheckpointSignature { seq, .. } => seq,
            Problem::Truncated { last_present, .. } => last_present + 1,
            Problem::CheckpointMismatch { from, .. } => from,
            Problem::CounterNotIncreasing { seq, .. } => seq,
            Problem::RolledBack { seq, .. } | Problem::CounterAhead { seq, .. } => seq + 1,
            Problem::NoCheckpoint => 1,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Modified { seq } => write!(f, "record {seq} was modified"),
            Problem::Deleted { seq, until } if seq == until => {
                write!(f, "record {seq} was deleted")
            }
            Problem::Deleted { seq, until } => write!(f, "records {seq} to {until} were deleted"),
            Problem::Reordered { seq } => write!(f, "record {seq} is out of order"),
            Problem::BrokenLink { seq } => write!(
                f,
                "record {seq} does not follow record {}: one of them was replaced",
                seq.saturating_sub(1)
            ),
            Problem::Truncated {
                last_present,
                checkpoint_seq,
            } => write!(
                f,
                "the log was truncated: records {} to {checkpoint_seq} (covered by a signed \
                 checkpoint) are gone",
                last_present + 1
            ),
            Problem::BadCheckpointSignature { checkpoint_id, seq } => write!(
                f,
                "checkpoint {checkpoint_id} (record {seq}) is not signed by the audit key"
            ),
            Problem::CheckpointMismatch {
                checkpoint_id,
                from,
                seq,
            } => write!(
                f,
                "checkpoint {checkpoint_id} does not match the chain at record {seq}: records \
                 {from} to {seq} were rewritten"
            ),
            Problem::CounterNotIncreasing { checkpoint_id, seq } => write!(
                f,
                "checkpoint {checkpoint_id} (record {seq}) does not carry a higher TPM counter \
                 value than the checkpoint before it: checkpoints were replayed"
            ),
            Problem::RolledBack {
                seq,
                checkpoint_counter,
                tpm_counter,
            } => write!(
                f,
                "the audit trail was rolled back: its last checkpoint (record {seq}) carries TPM \
                 counter {checkpoint_counter} but the TPM's audit counter is at {tpm_counter}, so \
                 later checkpoints and the records they covered were removed or an older copy \
                 was restored"
            ),
            Problem::CounterAhead {
                seq,
                checkpoint_counter,
                tpm_counter,
            } => write!(
                f,
                "the last checkpoint (record {seq}) carries TPM counter {checkpoint_counter}, \
                 ahead of this TPM's audit counter {tpm_counter}: it was not made on this \
                 appliance's TPM"
            ),
            Problem::NoCheckpoint => write!(
                f,
                "the audit trail has no signed checkpoint (it was emptied or replaced)"
            ),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Checkpoints whose signature and head were proven.
    pub checkpoints_verified: u64,
    /// The highest record a valid checkpoint covers (0 if none).
    pub last_checkpoint_seq: u64,
    /// Hex SHA-256 of the last record (the chain head), if any record exists.
    pub chain_head: Option<String>,
    /// A warning, not a failure: records after the last valid checkpoint (first, last). They
    /// chain correctly but no signature covers them yet (normal after a crash, or within 60 s
    /// of the last checkpoint), so a rewrite or removal of this tail could not be detected.
    pub uncovered: Option<(u64, u64)>,
    /// The last checkpoint's counter and the TPM's, when the TPM was asked.
    pub counter: Option<CounterCheck>,
    /// The first fault; `None` means the trail verifies.
    pub problem: Option<Problem>,
}

/// The last checkpoint's TPM counter value against the TPM's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CounterCheck {
    /// The value the last valid checkpoint carries.
    pub checkpoint: u64,
    /// The TPM's counter (read after the trail was read).
    pub tpm: u64,
}

/// The rule for the last checkpoint's counter `d` against the TPM: a checkpoint is stored
/// durably before the TPM counter is incremented to its value, so the TPM is at `d` or, when
/// migd stopped between the two, `d - 1`. `tpm_before` was read before the trail and
/// `tpm_after` after it (equal when nothing writes meanwhile): a checkpoint written in between
/// has moved both. Behind means rolled back; more than one ahead means another TPM's.
pub(crate) fn counter_problem(
    seq: u64,
    d: u64,
    tpm_before: u64,
    tpm_after: u64,
) -> Option<Problem> {
    if d < tpm_before {
        Some(Problem::RolledBack {
            seq,
            checkpoint_counter: d,
            tpm_counter: tpm_before,
        })
    } else if d > tpm_after.saturating_add(1) {
        Some(Problem::CounterAhead {
            seq,
            checkpoint_counter: d,
            tpm_counter: tpm_after,
        })
    } else {
        None
    }
}

impl VerifyReport {
    /// The trail verifies (uncovered records are only a warning).
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

pub(crate) struct Checkpoint {
    pub id: u64,
    pub seq: u64,
    pub head: Vec<u8>,
    pub time: String,
    pub counter: u64,
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// True when the signature is the audit key's over this checkpoint's fields.
    fn genuine(&self, key: &ring::signature::UnparsedPublicKey<&[u8]>) -> bool {
        <[u8; 32]>::try_from(self.head.as_slice())
            .map(|head| checkpoint_message(self.seq, &head, self.counter, &self.time))
            .is_ok_and(|message| key.verify(&message, &self.signature).is_ok())
    }
}

const CHECKPOINT_COLUMNS: &str = "id, seq, head, time, counter, signature";

fn checkpoint_from_row(row: &rusqlite::Row<'_>) -> Result<Checkpoint, AuditError> {
    let get = db("read checkpoints");
    Ok(Checkpoint {
        id: to_u64(row.get(0).map_err(&get)?),
        seq: to_u64(row.get(1).map_err(&get)?),
        head: row.get(2).map_err(&get)?,
        time: row.get(3).map_err(&get)?,
        counter: to_u64(row.get(4).map_err(&get)?),
        signature: row.get(5).map_err(&get)?,
    })
}

/// The uncompressed P-256 point of a DER SubjectPublicKeyInfo.
fn p256_point(spki: &[u8]) -> Result<&[u8], AuditError> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) point }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    match spki.strip_prefix(&PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point),
        _ => Err(AuditError::BadPublicKey),
    }
}

fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> AuditError {
    move |source| AuditError::Database { operation, source }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn verify(
    conn: &Connection,
    spki: &[u8],
    counter: Option<&dyn Counter>,
) -> Result<VerifyReport, AuditError> {
    let point = p256_point(spki)?;
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point);
    let tpm_before = counter.map(|c| c.read()).transpose()?;

    // A read transaction gives one consistent snapshot while the writer goes on.
    conn.execute_batch("BEGIN")
        .map_err(db("begin read snapshot"))?;
    let result = walk(conn, &key);
    let _ = conn.execute_batch("COMMIT");
    let (mut report, last_counter) = result?;
    let (Some(counter), Some(tpm_before)) = (counter, tpm_before) else {
        return Ok(report);
    };
    let tpm_after = counter.read()?;
    if report.problem.is_some() {
        return Ok(report);
    }
    match last_counter {
        None if report.records > 0 => report.problem = Some(Problem::NoCheckpoint),
        None => {}
        Some(d) => {
            report.counter = Some(CounterCheck {
                checkpoint: d,
                tpm: tpm_after,
            });
            report.problem = counter_problem(report.last_checkpoint_seq, d, tpm_before, tpm_after);
        }
    }
    Ok(report)
}

/// The report and the last valid checkpoint's counter value.
fn walk(
    conn: &Connection,
    key: &ring::signature::UnparsedPublicKey<&[u8]>,
) -> Result<(VerifyReport, Option<u64>), AuditError> {
    // Every stored hash and where it sits, to recognise a link to a later record (reordering).
    let mut position: HashMap<Vec<u8>, u64> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT seq, hash FROM records")
            .map_err(db("read record hashes"))?;
        let mut rows = stmt.query([]).map_err(db("read record hashes"))?;
        while let Some(row) = rows.next().map_err(db("read record hashes"))? {
            let seq: i64 = row.get(0).map_err(db("read record hashes"))?;
            let hash: Vec<u8> = row.get(1).map_err(db("read record hashes"))?;
            position.insert(hash, to_u64(seq));
        }
    }
    let mut checkpoints = Vec::new();
    {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq, id"
            ))
            .map_err(db("read checkpoints"))?;
        let mut rows = stmt.query([]).map_err(db("read checkpoints"))?;
        while let Some(row) = rows.next().map_err(db("read checkpoints"))? {
            checkpoints.push(checkpoint_from_row(row)?);
        }
    }

    let mut report = VerifyReport {
        records: 0,
        checkpoints_verified: 0,
        last_checkpoint_seq: 0,
        chain_head: None,
        uncovered: None,
        counter: None,
        problem: None,
    };
    let mut last_counter: Option<u64> = None;
    let mut next_checkpoint = 0usize;
    let mut expected_seq = 1u64;
    let mut prev_hash = genesis();

    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records ORDER BY seq"
        ))
        .map_err(db("read records"))?;
    let mut rows = stmt.query([]).map_err(db("read records"))?;
    while let Some(row) = rows.next().map_err(db("read records"))? {
        let stored = record_from_row(row)?;
        report.records += 1;
        let seq = stored.seq;
        if seq != expected_seq {
            // Checkpoints inside the gap are not reported separately: the gap comes first.
            report.problem = Some(Problem::Deleted {
                seq: expected_seq,
                until: seq - 1,
            });
            return Ok((report, last_counter));
        }
        let computed = stored.computed_hash();
        if stored.prev_hash != prev_hash {
            let links_forward = position
                .get(&stored.prev_hash[..])
                .is_some_and(|&at| at > seq);
            report.problem = Some(if links_forward {
                Problem::Reordered { seq }
            } else if computed != stored.hash {
                // Its own link field was edited.
                Problem::Modified { seq }
            } else if seq > 1 {
                // Both look whole on their own: look one ahead to tell which was rewritten. If
                // the next record still links here, the previous record was replaced.
                let next = match rows.next().map_err(db("read records"))? {
                    Some(row) => Some(record_from_row(row)?),
                    None => None,
                };
                match next {
                    Some(next) if next.prev_hash == computed => Problem::Modified { seq: seq - 1 },
                    _ => Problem::BrokenLink { seq },
                }
            } else {
                Problem::BrokenLink { seq }
            });
            return Ok((report, last_counter));
        }
        if computed != stored.hash {
            report.problem = Some(Problem::Modified { seq });
            return Ok((report, last_counter));
        }
        while let Some(cp) = checkpoints.get(next_checkpoint) {
            if cp.seq > seq {
                break;
            }
            // cp.seq < seq only for a checkpoint at seq 0, which nothing writes.
            if !cp.genuine(key) {
                report.problem = Some(Problem::BadCheckpointSignature {
                    checkpoint_id: cp.id,
                    seq: cp.seq,
                });
                return Ok((report, last_counter));
            }
            if cp.head != computed || cp.seq != seq {
                report.problem = Some(Problem::CheckpointMismatch {
                    checkpoint_id: cp.id,
                    from: report.last_checkpoint_seq + 1,
                    seq: cp.seq,
                });
                return Ok((report, last_counter));
            }
            if last_counter.is_some_and(|last| cp.counter <= last) {
                report.problem = Some(Problem::CounterNotIncreasing {
                    checkpoint_id: cp.id,
                    seq: cp.seq,
                });
                return Ok((report, last_counter));
            }
            last_counter = Some(cp.counter);
            report.checkpoints_verified += 1;
            report.last_checkpoint_seq = cp.seq;
            next_checkpoint += 1;
        }
        prev_hash = computed;
        expected_seq = seq + 1;
    }
    let last_present = expected_seq - 1;
    if last_present > 0 {
        report.chain_head = Some(hex::encode(prev_hash));
    }
    if let Some(cp) = checkpoints.get(next_checkpoint) {
        // A checkpoint beyond the last record: check it is genuine before blaming truncation.
        report.problem = Some(if cp.genuine(key) {
            Problem::Truncated {
                last_present,
                checkpoint_seq: cp.seq,
            }
        } else {
            Problem::BadCheckpointSignature {
                checkpoint_id: cp.id,
                seq: cp.seq,
            }
        });
        return Ok((report, last_counter));
    }
    if last_present > report.last_checkpoint_seq {
        report.uncovered = Some((report.last_checkpoint_seq + 1, last_present));
    }
    Ok((report, last_counter))
}

/// Where a trail ends, once `check_tail` has proven it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    /// The last record's sequence number.
    pub last_seq: u64,
    /// The last record's hash.
    pub head: [u8; 32],
    /// The record the last checkpoint covers.
    pub checkpoint_seq: u64,
    /// The TPM counter value the last checkpoint carries.
    pub checkpoint_counter: u64,
}

/// migd's check at start: the last checkpoint is the audit key's and matches its record, the
/// records after it are contiguous and chain from it, and its counter is consistent with the
/// TPM's (`tpm`). Earlier records are `audit verify`'s job (a full walk of a large trail would
/// delay every start); a rewrite there still shows against their own checkpoints.
pub(crate) fn check_tail(
    conn: &Connection,
    spki: &[u8],
    tpm: u64,
) -> Result<Result<Tail, Problem>, AuditError> {
    let point = p256_point(spki)?;
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point);
    let checkpoint = {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY seq DESC, id DESC LIMIT 1"
            ))
            .map_err(db("read the last checkpoint"))?;
        let mut rows = stmt.query([]).map_err(db("read the last checkpoint"))?;
        match rows.next().map_err(db("read the last checkpoint"))? {
            Some(row) => checkpoint_from_row(row)?,
            None => return Ok(Err(Problem::NoCheckpoint)),
        }
    };
    if !checkpoint.genuine(&key) {
        return Ok(Err(Problem::BadCheckpointSignature {
            checkpoint_id: checkpoint.id,
            seq: checkpoint.seq,
        }));
    }
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE seq >= ?1 ORDER BY seq"
        ))
        .map_err(db("read the tail"))?;
    let from = i64::try_from(checkpoint.seq).unwrap_or(i64::MAX);
    let mut rows = stmt.query([from]).map_err(db("read the tail"))?;
    let first = match rows.next().map_err(db("read the tail"))? {
        Some(row) => record_from_row(row)?,
        None => {
            let last: Option<i64> = conn
                .query_row("SELECT max(seq) FROM records", [], |row| row.get(0))
                .map_err(db("read the tail"))?;
            return Ok(Err(Problem::Truncated {
                last_present: last.map(to_u64).unwrap_or(0),
                checkpoint_seq: checkpoint.seq,
            }));
        }
    };
    if first.seq != checkpoint.seq {
        return Ok(Err(Problem::Deleted {
            seq: checkpoint.seq,
            until: first.seq - 1,
        }));
    }
    let mut head = first.computed_hash();
    if head != first.hash {
        return Ok(Err(Problem::Modified { seq: first.seq }));
    }
    if checkpoint.head != head {
        return Ok(Err(Problem::CheckpointMismatch {
            checkpoint_id: checkpoint.id,
            from: checkpoint.seq,
            seq: checkpoint.seq,
        }));
    }
    let mut last_seq = first.seq;
    while let Some(row) = rows.next().map_err(db("read the tail"))? {
        let stored = record_from_row(row)?;
        if stored.seq != last_seq + 1 {
            return Ok(Err(Problem::Deleted {
                seq: last_seq + 1,
                until: stored.seq - 1,
            }));
        }
        let computed = stored.computed_hash();
        if computed != stored.hash {
            return Ok(Err(Problem::Modified { seq: stored.seq }));
        }
        if stored.prev_hash != head {
            return Ok(Err(Problem::BrokenLink { seq: stored.seq }));
        }
        head = computed;
        last_seq = stored.seq;
    }
    if let Some(problem) = counter_problem(checkpoint.seq, checkpoint.counter, tpm, tpm) {
        return Ok(Err(problem));
    }
    Ok(Ok(Tail {
        last_seq,
        head,
        checkpoint_seq: checkpoint.seq,
        checkpoint_counter: checkpoint.counter,
    }))
}
