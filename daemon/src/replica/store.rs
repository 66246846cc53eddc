//! Opening the encrypted database, and reading patients and their items.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use zeroize::Zeroizing;

use super::schema;
use mig_policy::fhir::ItemFacts;

/// Why the replica could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// `create` found a database already there.
    #[error("replica {0} already exists; refusing to overwrite it")]
    AlreadyExists(PathBuf),
    /// `open` found no database.
    #[error("replica {0} does not exist (run `migctl init` first)")]
    Missing(PathBuf),
    /// The key does not decrypt the file (or it is not a replica at all).
    #[error("replica {0} cannot be decrypted with the key the TPM released (wrong key or not a MIG replica)")]
    WrongKey(PathBuf),
    /// The file was written by a newer migd.
    #[error("replica schema version {found} is newer than this migd supports ({supported}); install the newer migd")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A stored row could not be decoded (the file was altered outside migd).
    #[error("replica row {0} is corrupt")]
    CorruptRow(String),
    /// A stored resource is refused by the ingest rules of this migd, so the schema upgrade that
    /// re-reads every resource stopped (nothing was changed).
    #[error("replica upgrade: {row} is refused by this version's ingest rules ({reason}); restore the previous migd, purge that patient and import them again")]
    Upgrade { row: String, reason: String },
    /// SQLite failed during the named operation.
    #[error("replica: {0}")]
    Sqlite(&'static str, #[source] rusqlite::Error),
}

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> ReplicaError {
    move |e| ReplicaError::Sqlite(operation, e)
}

/// Opens a connection and keys it; a wrong key is reported here, not at the first query.
fn open_keyed(path: &Path, key: &[u8; 32], flags: OpenFlags) -> Result<Connection, ReplicaError> {
    let conn = Connection::open_with_flags(path, flags).map_err(sql("opening the database"))?;
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")
        .map_err(sql("quietening SQLCipher"))?;
    let statement = Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex::encode(key)));
    conn.execute_batch(&statement)
        .map_err(sql("setting the key"))?;
    // 16 KiB pages: less per-page encryption work than the 4 KiB default and shallower trees
    // (NDJSON import ran about a third faster). HMAC-SHA256 for the page MACs: as sound as
    // SHA-512 here and about twice as fast where the CPU has SHA extensions; a page read from
    // disk is MAC-checked on every cache miss. Anyone opening the file with the sqlcipher shell
    // must set both.
    conn.execute_batch(
        "PRAGMA cipher_page_size = 16384; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
    )
    .map_err(sql("setting the page size and MAC"))?;
    // SQLCipher only checks the key when it first reads a page.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .map_err(|_| ReplicaError::WrongKey(path.to_owned()))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(sql("setting pragmas"))?;
    Ok(conn)
}

/// The replica's single writer.
pub struct Replica {
    pub(super) conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("path", &self.path).finish()
    }
}

impl Replica {
    /// Creates a new, empty replica; refuses to touch an existing file.
    pub fn create(path: &Path, key: &[u8; 32]) -> Result<Replica, ReplicaError> {
        if path.exists() {
            return Err(ReplicaError::AlreadyExists(path.to_owned()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = open_keyed(path, key, flags)?;
        schema::migrate(&mut conn)?;
        Ok(Replica {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens an existing replica and applies any pending migrations.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Replica, ReplicaError> {
        if !path.exists() {
            return Err(ReplicaError::Missing(path.to_owned()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = open_keyed(path, key, flags)?;
        schema::migrate(&mut conn)?;
        Ok(Replica {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read connection over the same file (WAL lets it read while the writer writes).
    pub fn reader(&self, key: &[u8; 32]) -> Result<ReplicaReader, ReplicaError> {
        ReplicaReader::open(&self.path, key)
    }

    /// Counts what is stored.
    pub fn stats(&self) -> Result<ReplicaStats, ReplicaError> {
        stats(&self.conn)
    }
}

/// How much the replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStats {
    pub patients: u64,
    pub resources: u64,
    /// Patients whose record is still to be packed (`packed`).
    pub records_pending: u64,
}

fn stats(conn: &Connection) -> Result<ReplicaStats, ReplicaError> {
    let count = |sql_text: &str| -> Result<u64, ReplicaError> {
        conn.query_row(sql_text, [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql("counting"))
    };
    Ok(ReplicaStats {
        patients: count("SELECT count(*) FROM patient")?,
        resources: count("SELECT count(*) FROM resource")?,
        records_pending: count("SELECT count(*) FROM record_pending")?,
    })
}

/// A patient as stored.
#[derive(Debug, Clone)]
pub struct PatientRow {
    pub id: String,
    pub nhs_number: String,
    /// The Patient's demographics projection, as stored to be served (JSON).
    pub body: String,
    /// The facts of the Patient resource as received (deceased, ended, labels).
    pub facts: ItemFacts,
}

/// One stored resource with its facts.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub facts: ItemFacts,
    /// The resource as stored to be served (JSON; see `fhir::serving_body`).
    pub body: String,
}

/// A patient with their items' facts and bodies (in the same order), as the API reads them.
#[derive(Debug)]
pub struct PatientAndItems {
    pub patient: PatientRow,
    pub items: Vec<ItemFacts>,
    pub bodies: Bodies,
}

/// JSON bodies in one buffer (a packed record unpacks its bodies straight into it), each found
/// by its index: one allocation per record rather than one per item.
#[derive(Debug, Default)]
pub struct Bodies {
    text: String,
    ranges: Vec<(usize, usize)>,
    /// How much of `text` the ranges cover so far.
    covered: usize,
}

impl Bodies {
    /// Bodies laid end to end in `text`, to be delimited by `mark_end`.
    pub(super) fn from_text(text: String) -> Bodies {
        Bodies {
            text,
            ..Bodies::default()
        }
    }

    /// The next body is the next `length` bytes of the text; `None` if those are not there or
    /// do not end on a character boundary.
    pub(super) fn mark_end(&mut self, length: usize) -> Option<()> {
        let end = self.covered.checked_add(length)?;
        if end > self.text.len() || !self.text.is_char_boundary(end) {
            return None;
        }
        self.ranges.push((self.covered, end));
        self.covered = end;
        Some(())
    }

    /// Every byte of the text belongs to a body.
    pub(super) fn is_complete(&self) -> bool {
        self.covered == self.text.len()
    }

    pub fn push(&mut self, body: &str) {
        self.text.push_str(body);
        let end = self.text.len();
        self.ranges.push((self.covered, end));
        self.covered = end;
    }

    /// Takes the first body out, as its own string.
    pub(super) fn take_first(&mut self) -> Option<String> {
        let body = self.get(0)?.to_owned();
        self.ranges.remove(0);
        Some(body)
    }

    pub fn get(&self, index: usize) -> Option<&str> {
        let &(start, end) = self.ranges.get(index)?;
        self.text.get(start..end)
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Bytes held, for the record cache's budget.
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ranges.capacity() * std::mem::size_of::<(usize, usize)>()
    }
}

/// A read-only connection.
pub struct ReplicaReader {
    conn: Connection,
}

impl std::fmt::Debug for ReplicaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaReader")
    }
}

impl ReplicaReader {
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<ReplicaReader, ReplicaError> {
        if !path.exists() {
            return Err(ReplicaError::Missing(path.to_owned()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = open_keyed(path, key, flags)?;
        Ok(ReplicaReader { conn })
    }

    /// Runs `read` inside one read transaction: every query sees the same snapshot, and the
    /// WAL locks are taken once rather than per statement.
    pub fn snapshot<T>(
        &self,
        read: impl FnOnce(&ReplicaReader) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        self.conn
            .execute_batch("BEGIN")
            .map_err(sql("starting a read"))?;
        let result = read(self);
        let end = self
            .conn
            .execute_batch("COMMIT")
            .map_err(sql("ending a read"));
        let value = result?;
        end.map(|()| value)
    }

    /// No transaction is left open (a failed `snapshot` may leave one): safe to reuse.
    pub fn is_idle(&self) -> bool {
        self.conn.is_autocommit()
    }

    /// The replica's generation: it rises with every committed write.
    pub fn generation(&self) -> Result<i64, ReplicaError> {
        self.conn
            .prepare_cached("SELECT n FROM generation")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .map_err(sql("reading the generation"))
    }

    pub fn patient_by_nhs_number(
        &self,
        nhs_number: &str,
    ) -> Result<Option<PatientRow>, ReplicaError> {
        match self.patient_id(nhs_number)? {
            Some(id) => self.patient_row(id, nhs_number),
            None => Ok(None),
        }
    }

    /// The patient and their items (as `patient_items` lists them): from their packed record
    /// when there is one, else from the rows.
    pub fn patient_record(
        &self,
        nhs_number: &str,
    ) -> Result<Option<PatientAndItems>, ReplicaError> {
        let Some(id) = self.patient_id(nhs_number)? else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT record FROM patient_record WHERE patient_id = ?1")
            .map_err(sql("reading a packed record"))?;
        let mut rows = stmt.query([&id]).map_err(sql("reading a packed record"))?;
        if let Some(row) = rows.next().map_err(sql("reading a packed record"))? {
            let packed = row
                .get_ref(0)
                .ok()
                .and_then(|value| value.as_blob().ok())
                .ok_or_else(|| ReplicaError::CorruptRow(format!("patient_record/{id}")))?;
            let (facts, items, mut bodies) = super::packed::unpack(&id, packed)?;
            let corrupt = || ReplicaError::CorruptRow(format!("patient_record/{id}"));
            let body = bodies.take_first().ok_or_else(corrupt)?;
            return Ok(Some(PatientAndItems {
                patient: PatientRow {
                    id,
                    nhs_number: nhs_number.to_owned(),
                    body,
                    facts,
                },
                items,
                bodies,
            }));
        }
        drop(rows);
        let Some(patient) = self.patient_row(id, nhs_number)? else {
            return Ok(None);
        };
        let mut bodies = Bodies::default();
        let items = self
            .patient_items(&patient.id)?
            .into_iter()
            .map(|item| {
                bodies.push(&item.body);
                item.facts
            })
            .collect();
        Ok(Some(PatientAndItems {
            patient,
            items,
            bodies,
        }))
    }

    fn patient_id(&self, nhs_number: &str) -> Result<Option<String>, ReplicaError> {
        // Two single-table lookups: SQLite re-plans a join on this key at every run.
        self.conn
            .prepare_cached("SELECT id FROM patient WHERE nhs_number = ?1")
            .and_then(|mut stmt| stmt.query_row([nhs_number], |row| row.get(0)).optional())
            .map_err(sql("finding a patient"))
    }

    fn patient_row(
        &self,
        id: String,
        nhs_number: &str,
    ) -> Result<Option<PatientRow>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT facts, body, type, id FROM resource WHERE type = 'Patient' AND id = ?1",
            )
            .map_err(sql("reading a patient"))?;
        let mut rows = stmt.query([&id]).map_err(sql("reading a patient"))?;
        let Some(row) = rows.next().map_err(sql("reading a patient"))? else {
            return Ok(None);
        };
        let StoredItem { facts, body } = stored_item(row)?;
        Ok(Some(PatientRow {
            id,
            nhs_number: nhs_number.to_owned(),
            body,
            facts,
        }))
    }

    /// Every resource that belongs to the patient (their Patient resource excluded).
    pub fn patient_items(&self, patient_id: &str) -> Result<Vec<StoredItem>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT facts, body, type, id FROM resource
                 WHERE patient_id = ?1 AND type <> 'Patient' ORDER BY rowid",
            )
            .map_err(sql("reading a patient's items"))?;
        let mut rows = stmt
            .query([patient_id])
            .map_err(sql("reading a patient's items"))?;
        let mut items = Vec::new();
        while let Some(row) = rows.next().map_err(sql("reading a patient's items"))? {
            items.push(stored_item(row)?);
        }
        Ok(items)
    }

    /// Resources by `Type/id`, for shared resources (Medication, Practitioner, …) that released
    /// items reference. Unknown references are skipped.
    pub fn resources(
        &self,
        references: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Vec<StoredItem>, ReplicaError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT facts, body, type, id FROM resource WHERE type = ?1 AND id = ?2",
            )
            .map_err(sql("reading referenced resources"))?;
        let mut found = Vec::new();
        for reference in references {
            let Some((resource_type, id)) = reference.as_ref().split_once('/') else {
                continue;
            };
            let mut rows = stmt
                .query([resource_type, id])
                .map_err(sql("reading referenced resources"))?;
            if let Some(row) = rows.next().map_err(sql("reading referenced resources"))? {
                found.push(stored_item(row)?);
            }
        }
        Ok(found)
    }

    pub fn stats(&self) -> Result<ReplicaStats, ReplicaError> {
        stats(&self.conn)
    }

    /// Every resource that may be a fit note or a Type 1 opt-out (SPEC §12), with its patient
    /// id, through the `resource_statistics` partial index (a few thousand rows, not the whole
    /// replica). A superset: the caller checks each one's facts.
    pub fn statistics_candidates(&self) -> Result<Vec<(Option<String>, StoredItem)>, ReplicaError> {
        let operation = "reading the statistics candidates";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT facts, body, type, id, patient_id FROM resource
                 INDEXED BY resource_statistics WHERE {STATISTICS_CANDIDATE}"
            ))
            .map_err(sql(operation))?;
        let mut rows = stmt.query([]).map_err(sql(operation))?;
        let mut found = Vec::new();
        while let Some(row) = rows.next().map_err(sql(operation))? {
            let patient: Option<String> = row.get(4).map_err(sql(operation))?;
            found.push((patient, stored_item(row)?));
        }
        Ok(found)
    }

    /// A Patient resource's JSON by its id.
    pub fn patient_body(&self, id: &str) -> Result<Option<String>, ReplicaError> {
        self.conn
            .prepare_cached("SELECT body FROM resource WHERE type = 'Patient' AND id = ?1")
            .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
            .map_err(sql("reading a patient"))
    }
}

/// The condition of the `resource_statistics` partial index (schema migration 3), word for
/// word: SQLite uses the index only for a query that repeats it.
const STATISTICS_CANDIDATE: &str =
    "instr(body, '1331000000103') > 0 OR instr(body, '827241000000103') > 0";

/// A row of `SELECT facts, body, type, id`.
fn stored_item(row: &rusqlite::Row<'_>) -> Result<StoredItem, ReplicaError> {
    let corrupt = || {
        let name = |i| row.get::<_, String>(i).unwrap_or_default();
        ReplicaError::CorruptRow(format!("{}/{}", name(2), name(3)))
    };
    let facts = row
        .get_ref(0)
        .ok()
        .and_then(|value| value.as_blob().ok())
        .and_then(ItemFacts::decode)
        .ok_or_else(corrupt)?;
    let body = row.get(1).map_err(|_| corrupt())?;
    Ok(StoredItem { facts, body })
}

#[cfg(test)]
mod tests {
    use super::Bodies;

    /// A packed record's body lengths come from its bytes: a length that ends inside a
    /// character or past the text delimits nothing.
    #[test]
    fn bodies_are_delimited_only_on_character_boundaries() {
        let mut bodies = Bodies::from_text("aé{}".to_owned());
        assert!(bodies.mark_end(2).is_none(), "inside é");
        assert!(bodies.mark_end(3).is_some());
        assert!(!bodies.is_complete());
        assert!(bodies.mark_end(3).is_none(), "past the end");
        assert!(bodies.mark_end(2).is_some());
        assert!(bodies.is_complete());
        assert_eq!(bodies.iter().collect::<Vec<_>>(), ["aé", "{}"]);
        assert_eq!(bodies.take_first().as_deref(), Some("aé"));
        assert_eq!(bodies.get(0), Some("{}"));
    }
}
