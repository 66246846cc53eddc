//! The audit trail and privacy-officer alerts (SPEC §8): an append-only, hash-chained log in its
//! own SQLCipher file, written by one group-committing thread, with checkpoints signed by the
//! audit key, each carrying a TPM NV counter value, plus verification, FHIR `AuditEvent` export
//! and subject-access queries.
//!
//! What it validates: `verify` proves every record's hash, every chain link from the genesis
//! value, sequence continuity, every checkpoint's ECDSA P-256 signature and chain head, that
//! checkpoint counters rise, and that the last one is not behind the TPM's counter (a trail cut
//! back or restored from an older copy); it names the first record that fails. The writer opens
//! an existing trail only when its tail verifies the same way (`verify::check_tail`). What it
//! does not: records after the last checkpoint are protected only by the chain while migd runs
//! (`verify` reports them as not yet covered); deleting checkpoints other than the last goes
//! unnoticed (the later ones still cover everything); and whoever can use the TPM's audit key
//! and counter (root on the running box) can sign a new checkpoint over a rewritten trail.

mod alerts;
mod counter;
mod escape;
mod export;
mod record;
mod store;
mod verify;
mod writer;

use std::path::PathBuf;

pub use alerts::{Acknowledgement, Alert};
pub use counter::{Counter, CounterError, InMemoryCounter};
pub use escape::escape_text;
pub use export::{audit_event, AccessSummary};
pub use record::{
    canonical_bytes, checkpoint_message, format_time, genesis, parse_time, record_hash,
    AuditRecord, Decision, PermissionBasis, RecordKind, StoredRecord,
};
pub use verify::{CounterCheck, Problem, VerifyReport};
pub use writer::{AuditLog, AuditOptions, AuditStats};

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use time::OffsetDateTime;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The audit log cannot durably write right now (disk full, I/O error, database locked, the
    /// writer stopped). Nothing was recorded; the API answers 503 and releases nothing.
    #[error("the audit trail cannot be written: {0}")]
    Unavailable(String),
    /// The database file could not be opened.
    #[error("cannot open the audit database {path}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The key does not open the database (wrong key, or not an audit database).
    #[error("the key does not open the audit database {path} (wrong key or not a database)")]
    WrongKey {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file is not an audit database of the schema this build knows.
    #[error("{path} is not an audit database of schema version 2 (found {found:?})")]
    Schema {
        path: PathBuf,
        found: Option<String>,
    },
    /// A database statement failed.
    #[error("audit database: {operation} failed")]
    Database {
        operation: &'static str,
        source: rusqlite::Error,
    },
    /// A stored value cannot be decoded.
    #[error("audit record {seq}: {what}")]
    Corrupt { seq: u64, what: String },
    /// A time could not be formatted.
    #[error("audit time: {0}")]
    Time(String),
    /// No alert has this id.
    #[error("there is no alert {id}")]
    UnknownAlert { id: u64 },
    /// The alert was acknowledged already.
    #[error("alert {id} was already acknowledged by {operator} at {time} (audit record {seq})")]
    AlertAlreadyAcknowledged {
        id: u64,
        operator: String,
        time: String,
        seq: u64,
    },
    /// The audit public key is not a P-256 SubjectPublicKeyInfo.
    #[error("the audit public key is not a DER P-256 SubjectPublicKeyInfo")]
    BadPublicKey,
    /// Writing the export failed.
    #[error("writing the audit export failed")]
    Export(#[source] std::io::Error),
    /// The checkpoint could not be signed.
    #[error("signing the audit checkpoint failed")]
    Checkpoint(#[source] crate::keys::SignError),
    /// The TPM audit counter could not be read or incremented.
    #[error(transparent)]
    Counter(#[from] CounterError),
    /// The audit database is gone.
    #[error("the audit database {path} is missing; migd never starts a new trail by itself: restore it, or start a new trail as docs/operations.md ('Audit trail recovery') describes (migctl audit new-trail)")]
    Missing { path: PathBuf },
    /// A new trail was asked for where one exists.
    #[error("the audit database {path} already exists; refusing to replace it")]
    AlreadyExists { path: PathBuf },
    /// The trail's tail does not verify: migd will not add to it.
    #[error("the audit trail {path} does not verify: {problem}; migd will not add to it. Run `migctl audit verify`, then follow docs/operations.md ('Audit trail recovery'): restore the trail, or archive it with `migctl audit new-trail --reason TEXT`")]
    TrailRejected { path: PathBuf, problem: Problem },
}

/// How long readers wait for a lock before giving up.
const READER_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A read-only view of an audit database (migctl, or the admin service while migd runs; WAL
/// lets it read alongside the writer).
pub struct AuditReader {
    conn: Connection,
}

impl AuditReader {
    /// Opens an existing audit database.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<AuditReader, AuditError> {
        let conn = store::open(path, key, false, READER_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|source| AuditError::Database {
                operation: "set query_only",
                source,
            })?;
        Ok(AuditReader { conn })
    }

    /// Proves the chain and checkpoint signatures; see `VerifyReport`. Without a counter the
    /// checkpoints' TPM counter values are checked only for order, not against the TPM.
    pub fn verify(&self, audit_public_key_spki_der: &[u8]) -> Result<VerifyReport, AuditError> {
        verify::verify(&self.conn, audit_public_key_spki_der, None)
    }

    /// `verify`, and the last checkpoint's counter against the TPM's (`counter`).
    pub fn verify_with_counter(
        &self,
        audit_public_key_spki_der: &[u8],
        counter: &dyn Counter,
    ) -> Result<VerifyReport, AuditError> {
        verify::verify(&self.conn, audit_public_key_spki_der, Some(counter))
    }

    /// Writes FHIR R4 `AuditEvent` NDJSON for records at or after `since`; returns the count.
    pub fn export(
        &self,
        since: Option<OffsetDateTime>,
        out: &mut dyn Write,
    ) -> Result<u64, AuditError> {
        export::export(&self.conn, since, out)
    }

    /// Every partner request about this patient, oldest first (for a subject access request).
    pub fn patient_accesses(&self, nhs_number: &str) -> Result<Vec<AccessSummary>, AuditError> {
        export::patient_accesses(&self.conn, nhs_number)
    }

    /// Unacknowledged alerts, or all alerts when `all`, oldest first.
    pub fn list_alerts(&self, all: bool) -> Result<Vec<Alert>, AuditError> {
        alerts::list(&self.conn, all)
    }

    /// How many alerts are not acknowledged yet.
    pub fn alerts_waiting(&self) -> Result<u64, AuditError> {
        alerts::waiting(&self.conn)
    }

    /// The stored time of the last import the admin path committed, if any.
    pub fn last_import(&self) -> Result<Option<String>, AuditError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row(
                "SELECT time FROM records WHERE kind = ?1 AND decision = 'permit' \
                 AND action LIKE 'import %' ORDER BY seq DESC LIMIT 1",
                [RecordKind::AdminAction.name()],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map_err(|source| AuditError::Database {
                operation: "find the last import",
                source,
            })
    }

    /// Records with `seq >= from`, in order.
    pub fn records(&self, from: u64) -> Result<Vec<StoredRecord>, AuditError> {
        export::records_from(&self.conn, from)
    }
}

/// `migctl audit verify`: proves the chain and every checkpoint signature.
pub fn verify(
    path: &Path,
    key: &[u8; 32],
    audit_public_key_spki_der: &[u8],
) -> Result<VerifyReport, AuditError> {
    AuditReader::open(path, key)?.verify(audit_public_key_spki_der)
}

/// `migctl audit export`: FHIR R4 `AuditEvent` NDJSON; returns how many were written.
pub fn export(
    path: &Path,
    key: &[u8; 32],
    since: Option<OffsetDateTime>,
    mut out: impl Write,
) -> Result<u64, AuditError> {
    AuditReader::open(path, key)?.export(since, &mut out)
}

/// `migctl audit patient NHSNO`: who accessed this patient's record, when, on what basis.
pub fn patient_accesses(
    path: &Path,
    key: &[u8; 32],
    nhs_number: &str,
) -> Result<Vec<AccessSummary>, AuditError> {
    AuditReader::open(path, key)?.patient_accesses(nhs_number)
}

/// `migctl alerts list [--all]`.
pub fn list_alerts(path: &Path, key: &[u8; 32], all: bool) -> Result<Vec<Alert>, AuditError> {
    AuditReader::open(path, key)?.list_alerts(all)
}
