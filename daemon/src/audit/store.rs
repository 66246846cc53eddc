//! The audit database file: SQLCipher with a raw 32-byte key, WAL, `synchronous=FULL` (every
//! commit is fsync'd), its schema, and mapping rows to records.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use zeroize::Zeroizing;

use super::record::{Decision, PermissionBasis, RecordKind, StoredRecord};
use super::{AuditError, AuditRecord};

/// Bumped when the schema changes; stored in `meta`.
/// Version 2 added the TPM counter to checkpoints and `Ssp-From` to records; nothing with
/// version 1 was released, so there is no migration.
pub(crate) const SCHEMA_VERSION: &str = "2";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    partner_ods TEXT,
    partner_cert_sha256 TEXT,
    sds_user_id TEXT,
    sds_role_profile_id TEXT,
    job_role TEXT,
    requesting_org_ods TEXT,
    requesting_device TEXT,
    nhs_number TEXT,
    interaction_id TEXT,
    trace_id TEXT,
    basis TEXT NOT NULL,
    override_reason TEXT,
    override_justification TEXT,
    decision TEXT NOT NULL,
    error_code TEXT,
    sections TEXT NOT NULL,
    operator TEXT,
    action TEXT,
    alert_id INTEGER,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    from_asid TEXT
);
CREATE INDEX IF NOT EXISTS records_nhs_number ON records(nhs_number);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    head BLOB NOT NULL,
    time TEXT NOT NULL,
    counter INTEGER NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    time TEXT NOT NULL,
    partner_ods TEXT,
    sds_user_id TEXT,
    sds_role_profile_id TEXT,
    job_role TEXT,
    requesting_org_ods TEXT,
    nhs_number TEXT,
    reason TEXT,
    justification TEXT,
    ack_seq INTEGER,
    ack_time TEXT,
    ack_operator TEXT,
    ack_note TEXT
);
";

/// The columns of `records`, in the order `record_from_row` reads them.
pub(crate) const RECORD_COLUMNS: &str = "seq, time, kind, partner_ods, partner_cert_sha256, \
    sds_user_id, sds_role_profile_id, job_role, requesting_org_ods, requesting_device, \
    nhs_number, interaction_id, trace_id, basis, override_reason, override_justification, \
    decision, error_code, sections, operator, action, alert_id, prev_hash, hash, from_asid";

fn db_error(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> AuditError {
    move |source| AuditError::Database { operation, source }
}

/// Runs a pragma (or any statement) and discards whatever rows it returns.
fn run(conn: &Connection, sql: &str, operation: &'static str) -> Result<(), AuditError> {
    let mut stmt = conn.prepare(sql).map_err(db_error(operation))?;
    let mut rows = stmt.query([]).map_err(db_error(operation))?;
    while rows.next().map_err(db_error(operation))?.is_some() {}
    Ok(())
}

/// Opens the audit database with `key`. `create` makes the file and schema if missing (the
/// writer); readers open an existing file only.
pub(crate) fn open(
    path: &Path,
    key: &[u8; 32],
    create: bool,
    busy_timeout: Duration,
) -> Result<Connection, AuditError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    run(
        &conn,
        "PRAGMA cipher_log_level = NONE",
        "set cipher log level",
    )?;
    {
        // The hex key and the statement holding it are wiped when dropped.
        let hex_key = Zeroizing::new(hex::encode(key));
        let statement = Zeroizing::new(format!("PRAGMA key = \"x'{}'\"", hex_key.as_str()));
        run(&conn, &statement, "set key")?;
    }
    // HMAC-SHA256 page MACs rather than SQLCipher's SHA-512 default: as sound here, and about
    // twice as fast on CPUs with SHA extensions; every group commit MACs the pages it writes.
    // Anyone opening the file with the sqlcipher shell must set it too.
    run(
        &conn,
        "PRAGMA cipher_hmac_algorithm = HMAC_SHA256",
        "set the page MAC",
    )?;
    // A wrong key shows only at the first read.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(|source| AuditError::WrongKey {
            path: path.to_path_buf(),
            source,
        })?;
    conn.busy_timeout(busy_timeout)
        .map_err(db_error("set busy timeout"))?;
    run(&conn, "PRAGMA journal_mode = WAL", "set WAL mode")?;
    run(&conn, "PRAGMA synchronous = FULL", "set synchronous")?;
    if create {
        conn.execute_batch(SCHEMA)
            .map_err(db_error("create schema"))?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION],
        )
        .map_err(db_error("record schema version"))?;
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(db_error("read schema version"))?;
    if version.as_deref() != Some(SCHEMA_VERSION) {
        return Err(AuditError::Schema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(conn)
}

fn bad(seq: u64, what: &str) -> AuditError {
    AuditError::Corrupt {
        seq,
        what: what.to_owned(),
    }
}

fn hash32(seq: u64, bytes: Vec<u8>, what: &str) -> Result<[u8; 32], AuditError> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad(seq, what))
}

/// Reads a `records` row selected with `RECORD_COLUMNS`.
pub(crate) fn record_from_row(row: &Row<'_>) -> Result<StoredRecord, AuditError> {
    let get_err = db_error("read audit record");
    let seq: i64 = row.get(0).map_err(get_err)?;
    let seq = u64::try_from(seq).map_err(|_| bad(0, "negative sequence number"))?;
    let text = |i: usize| -> Result<Option<String>, AuditError> {
        row.get::<_, Option<String>>(i)
            .map_err(db_error("read audit record"))
    };
    let required = |i: usize, what: &str| -> Result<String, AuditError> {
        text(i)?.ok_or_else(|| bad(seq, what))
    };
    let time_text = required(1, "missing time")?;
    let time = super::record::parse_time(&time_text).ok_or_else(|| bad(seq, "bad time"))?;
    let kind =
        RecordKind::from_name(&required(2, "missing kind")?).ok_or_else(|| bad(seq, "bad kind"))?;
    let basis = PermissionBasis::from_name(&required(13, "missing basis")?)
        .ok_or_else(|| bad(seq, "bad permission basis"))?;
    let decision = Decision::from_name(&required(16, "missing decision")?)
        .ok_or_else(|| bad(seq, "bad decision"))?;
    let sections: Vec<String> = serde_json::from_str(&required(18, "missing sections")?)
        .map_err(|_| bad(seq, "bad sections list"))?;
    let alert_id: Option<i64> = row.get(21).map_err(db_error("read audit record"))?;
    let alert_id = alert_id
        .map(u64::try_from)
        .transpose()
        .map_err(|_| bad(seq, "bad alert id"))?;
    let prev_hash: Vec<u8> = row.get(22).map_err(db_error("read audit record"))?;
    let hash: Vec<u8> = row.get(23).map_err(db_error("read audit record"))?;
    let record = AuditRecord {
        time: Some(time),
        kind,
        partner_ods: text(3)?,
        partner_cert_sha256: text(4)?,
        sds_user_id: text(5)?,
        sds_role_profile_id: text(6)?,
        job_role: text(7)?,
        requesting_org_ods: text(8)?,
        requesting_device: text(9)?,
        nhs_number: text(10)?,
        interaction_id: text(11)?,
        trace_id: text(12)?,
        from_asid: text(24)?,
        basis,
        override_reason: text(14)?,
        override_justification: text(15)?,
        decision,
        error_code: text(17)?,
        sections,
        operator: text(19)?,
        action: text(20)?,
        alert_id,
    };
    Ok(StoredRecord {
        seq,
        time_text,
        record,
        prev_hash: hash32(seq, prev_hash, "previous hash is not 32 bytes")?,
        hash: hash32(seq, hash, "hash is not 32 bytes")?,
    })
}

/// Inserts a stored record (inside the caller's transaction).
pub(crate) fn insert_record(conn: &Connection, stored: &StoredRecord) -> Result<(), AuditError> {
    let r = &stored.record;
    let sections = serde_json::to_string(&r.sections).map_err(|e| AuditError::Corrupt {
        seq: stored.seq,
        what: format!("sections cannot be encoded: {e}"),
    })?;
    let mut stmt = conn
        .prepare_cached(&format!(
            "INSERT INTO records ({RECORD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
        ))
        .map_err(db_error("prepare record insert"))?;
    stmt.execute(params![
        to_i64(stored.seq)?,
        stored.time_text,
        r.kind.name(),
        r.partner_ods,
        r.partner_cert_sha256,
        r.sds_user_id,
        r.sds_role_profile_id,
        r.job_role,
        r.requesting_org_ods,
        r.requesting_device,
        r.nhs_number,
        r.interaction_id,
        r.trace_id,
        r.basis.name(),
        r.override_reason,
        r.override_justification,
        r.decision.name(),
        r.error_code,
        sections,
        r.operator,
        r.action,
        r.alert_id.map(to_i64).transpose()?,
        &stored.prev_hash[..],
        &stored.hash[..],
        r.from_asid,
    ])
    .map_err(db_error("insert audit record"))?;
    Ok(())
}

/// SQLite integers are signed; sequence numbers and ids never get near 2^63.
pub(crate) fn to_i64(value: u64) -> Result<i64, AuditError> {
    i64::try_from(value).map_err(|_| AuditError::Corrupt {
        seq: value,
        what: "number too large for the database".into(),
    })
}
