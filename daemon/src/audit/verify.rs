//! `migctl audit verify`: walks the chain from the genesis value, checking each record's hash,
//! link and sequence number, and each checkpoint's signature and head; names the first fault.

use std::collections::HashMap;
use std::fmt;

use rusqlite::Connection;
use serde::Serialize;

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
    /// The first fault; `None` means the trail verifies.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// The trail verifies (uncovered records are only a warning).
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

struct Checkpoint {
    id: u64,
    seq: u64,
    head: Vec<u8>,
    time: String,
    signature: Vec<u8>,
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

pub(crate) fn verify(conn: &Connection, spki: &[u8]) -> Result<VerifyReport, AuditError> {
    let point = p256_point(spki)?;
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point);

    // A read transaction gives one consistent snapshot while the writer goes on.
    conn.execute_batch("BEGIN")
        .map_err(db("begin read snapshot"))?;
    let result = walk(conn, &key);
    let _ = conn.execute_batch("COMMIT");
    result
}

fn walk(
    conn: &Connection,
    key: &ring::signature::UnparsedPublicKey<&[u8]>,
) -> Result<VerifyReport, AuditError> {
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
            .prepare("SELECT id, seq, head, time, signature FROM checkpoints ORDER BY seq, id")
            .map_err(db("read checkpoints"))?;
        let mut rows = stmt.query([]).map_err(db("read checkpoints"))?;
        while let Some(row) = rows.next().map_err(db("read checkpoints"))? {
            let get = db("read checkpoints");
            checkpoints.push(Checkpoint {
                id: to_u64(row.get(0).map_err(&get)?),
                seq: to_u64(row.get(1).map_err(&get)?),
                head: row.get(2).map_err(&get)?,
                time: row.get(3).map_err(&get)?,
                signature: row.get(4).map_err(&get)?,
            });
        }
    }

    let mut report = VerifyReport {
        records: 0,
        checkpoints_verified: 0,
        last_checkpoint_seq: 0,
        chain_head: None,
        uncovered: None,
        problem: None,
    };
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
            return Ok(report);
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
            return Ok(report);
        }
        if computed != stored.hash {
            report.problem = Some(Problem::Modified { seq });
            return Ok(report);
        }
        while let Some(cp) = checkpoints.get(next_checkpoint) {
            if cp.seq > seq {
                break;
            }
            // cp.seq < seq only for a checkpoint at seq 0, which nothing writes.
            let message = match <[u8; 32]>::try_from(cp.head.as_slice()) {
                Ok(head) => checkpoint_message(cp.seq, &head, &cp.time),
                Err(_) => Vec::new(),
            };
            if message.is_empty() || key.verify(&message, &cp.signature).is_err() {
                report.problem = Some(Problem::BadCheckpointSignature {
                    checkpoint_id: cp.id,
                    seq: cp.seq,
                });
                return Ok(report);
            }
            if cp.head != computed || cp.seq != seq {
                report.problem = Some(Problem::CheckpointMismatch {
                    checkpoint_id: cp.id,
                    from: report.last_checkpoint_seq + 1,
                    seq: cp.seq,
                });
                return Ok(report);
            }
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
        let genuine = <[u8; 32]>::try_from(cp.head.as_slice())
            .map(|head| checkpoint_message(cp.seq, &head, &cp.time))
            .is_ok_and(|message| key.verify(&message, &cp.signature).is_ok());
        report.problem = Some(if genuine {
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
        return Ok(report);
    }
    if last_present > report.last_checkpoint_seq {
        report.uncovered = Some((report.last_checkpoint_seq + 1, last_present));
    }
    Ok(report)
}
