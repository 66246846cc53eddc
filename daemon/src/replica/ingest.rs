//! Ingest: FHIR Bulk Data NDJSON and R4 `transaction`/`batch` Bundles. A batch (one NDJSON
//! input or one Bundle) is a single SQLite transaction: the first bad line or entry rejects
//! the whole batch, naming its number (counted from 1), and nothing of it is applied.

use std::collections::HashMap;
use std::io::BufRead;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::{Replica, ReplicaError};
use mig_policy::check_consent;
use mig_policy::fhir::{extract_facts, split_reference, ItemFacts, PatientRef};

/// The longest NDJSON line accepted (one resource).
pub const MAX_LINE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a batch was rejected. Nothing of a rejected batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An NDJSON line is malformed or unusable.
    #[error("line {line}: {reason}")]
    Line { line: u64, reason: String },
    /// A Bundle entry is malformed or unusable.
    #[error("entry {entry}: {reason}")]
    Entry { entry: usize, reason: String },
    /// The Bundle itself is malformed.
    #[error("bundle: {0}")]
    Bundle(String),
    /// The input could not be read.
    #[error("reading the input")]
    Read(#[source] std::io::Error),
    /// The replica failed; the batch was rolled back.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// What a committed batch changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    /// Resources inserted or replaced.
    pub upserted: u64,
    /// Resources deleted (other than by a patient purge).
    pub deleted: u64,
    /// Patients purged with everything of theirs.
    pub purged_patients: u64,
}

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> ReplicaError {
    move |e| ReplicaError::Sqlite(operation, e)
}

/// A rejection reason before it is tied to a line or entry number.
enum Problem {
    Invalid(String),
    Replica(ReplicaError),
}

impl From<ReplicaError> for Problem {
    fn from(e: ReplicaError) -> Problem {
        Problem::Replica(e)
    }
}

impl Replica {
    /// Imports one NDJSON batch (a Bulk Data file): one resource per line, blank lines ignored.
    pub fn import_ndjson(
        &mut self,
        input: impl BufRead + Send,
    ) -> Result<ImportSummary, IngestError> {
        let mut import = self.begin_import()?;
        import.feed(input)?;
        import.commit()
    }

    /// Starts an NDJSON batch that arrives in pieces (the admin socket sends a large file in
    /// chunks of whole lines). Dropping it without `commit` rolls everything back.
    pub fn begin_import(&mut self) -> Result<NdjsonImport<'_>, IngestError> {
        let tx = self.conn.transaction().map_err(sql("starting an import"))?;
        Ok(NdjsonImport {
            tx,
            line: 0,
            summary: ImportSummary::default(),
            patients: Default::default(),
        })
    }

    /// Applies an R4 `transaction` or `batch` Bundle atomically: `PUT Type/id` upserts,
    /// `DELETE Type/id` removes, and `DELETE Patient/id` purges the patient and all of theirs.
    pub fn apply_bundle(&mut self, bundle: &[u8]) -> Result<ImportSummary, IngestError> {
        let bundle =
            mig_policy::json::from_slice_locating_entry(bundle).map_err(|(e, entry)| {
                let reason = format!("not valid JSON: {e}");
                match entry {
                    Some(entry) => IngestError::Entry { entry, reason },
                    None => IngestError::Bundle(reason),
                }
            })?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(IngestError::Bundle("resourceType is not Bundle".into()));
        }
        match bundle.get("type").and_then(Value::as_str) {
            Some("transaction" | "batch") => {}
            other => {
                return Err(IngestError::Bundle(format!(
                    "type {other:?} is not transaction or batch"
                )))
            }
        }
        let entries = match bundle.get("entry") {
            None => &[][..],
            Some(Value::Array(entries)) => &entries[..],
            Some(_) => return Err(IngestError::Bundle("entry is not an array".into())),
        };
        let local_ids = local_identities(entries);
        let tx = self.conn.transaction().map_err(sql("starting a bundle"))?;
        let mut summary = ImportSummary::default();
        let mut patients = Touched::default();
        for (index, entry) in entries.iter().enumerate() {
            let number = index + 1;
            apply_entry(&tx, entry, &local_ids, &mut summary, &mut patients).map_err(
                |problem| match problem {
                    Problem::Invalid(reason) => IngestError::Entry {
                        entry: number,
                        reason,
                    },
                    Problem::Replica(e) => IngestError::Replica(e),
                },
            )?;
        }
        super::packed::mark(&tx, patients.iter().map(String::as_str))?;
        commit(tx).map_err(sql("committing a bundle"))?;
        Ok(summary)
    }
}

/// An NDJSON batch in progress: one transaction, line numbers counted across every piece.
pub struct NdjsonImport<'r> {
    tx: Transaction<'r>,
    line: u64,
    summary: ImportSummary,
    /// Patients whose rows this batch wrote, to be packed again afterwards.
    patients: Touched,
}

/// Ids of the patients a batch wrote rows for (our own stored ids: a fast hash).
type Touched = rustc_hash::FxHashSet<String>;

fn touch(patients: &mut Touched, patient: Option<String>) {
    patients.extend(patient);
}

impl std::fmt::Debug for NdjsonImport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NdjsonImport")
            .field("line", &self.line)
            .finish()
    }
}

impl NdjsonImport<'_> {
    /// Adds whole lines to the batch. After an error the batch must be dropped.
    ///
    /// A second thread reads, parses and checks lines while this one writes them, in order,
    /// so the first bad line is still the one reported.
    pub fn feed(&mut self, input: impl BufRead + Send) -> Result<(), IngestError> {
        let first_line = self.line;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Parsed>(PIPELINE_DEPTH);
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || read_lines(input, first_line, sender));
            for parsed in receiver {
                match parsed {
                    Parsed::Ready(line, prepared) => {
                        self.line = line;
                        let patient =
                            store(&self.tx, &prepared).map_err(|problem| match problem {
                                Problem::Invalid(reason) => IngestError::Line { line, reason },
                                Problem::Replica(e) => IngestError::Replica(e),
                            })?;
                        touch(&mut self.patients, patient);
                        self.summary.upserted += 1;
                    }
                    Parsed::Bad(line, reason) => return Err(IngestError::Line { line, reason }),
                    Parsed::Failed(e) => return Err(IngestError::Read(e)),
                }
            }
            // The reader has finished (its sender is gone); take its line count.
            if let Ok(lines) = reader.join() {
                self.line = lines;
            }
            Ok(())
        })
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Makes the whole batch durable.
    pub fn commit(self) -> Result<ImportSummary, IngestError> {
        super::packed::mark(&self.tx, self.patients.iter().map(String::as_str))?;
        commit(self.tx).map_err(sql("committing an import"))?;
        Ok(self.summary)
    }
}

/// Commits a write, raising the generation so readers drop what they decoded before it.
fn commit(tx: Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute("UPDATE generation SET n = n + 1", [])?;
    tx.commit()
}

/// Lines in flight between the reading and the writing thread.
const PIPELINE_DEPTH: usize = 512;

/// One NDJSON line, read and checked.
enum Parsed {
    Ready(u64, Box<Prepared>),
    Bad(u64, String),
    Failed(std::io::Error),
}

/// Reads, parses and prepares lines after `line`, sending each in order; returns the last line
/// number read. Stops at the first bad line, or when the writer stops listening.
fn read_lines(
    mut input: impl BufRead,
    mut line: u64,
    out: std::sync::mpsc::SyncSender<Parsed>,
) -> u64 {
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = match std::io::Read::take(&mut input, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buffer)
        {
            Ok(read) => read,
            Err(e) => {
                let _ = out.send(Parsed::Failed(e));
                return line;
            }
        };
        if read == 0 {
            return line;
        }
        line += 1;
        let parsed = if buffer.len() as u64 > MAX_LINE_BYTES {
            Parsed::Bad(line, format!("longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&buffer).map(str::trim) {
                Err(_) => Parsed::Bad(line, "not valid UTF-8".into()),
                Ok("") => continue,
                Ok(text) => match mig_policy::json::from_str(text) {
                    Err(e) => Parsed::Bad(line, format!("not valid JSON: {e}")),
                    Ok(value) => match prepare(&value, text.to_owned()) {
                        Ok(prepared) => Parsed::Ready(line, Box::new(prepared)),
                        Err(reason) => Parsed::Bad(line, reason),
                    },
                },
            }
        };
        let stop = matches!(parsed, Parsed::Bad(..));
        if out.send(parsed).is_err() || stop {
            return line;
        }
    }
}

/// `fullUrl` (`urn:uuid:…`) → `Type/id`, so references between new entries resolve.
fn local_identities(entries: &[Value]) -> HashMap<String, String> {
    entries
        .iter()
        .filter_map(|entry| {
            let full_url = entry.get("fullUrl")?.as_str()?;
            let resource = entry.get("resource")?;
            let resource_type = resource.get("resourceType")?.as_str()?;
            let id = resource.get("id")?.as_str()?;
            full_url
                .starts_with("urn:")
                .then(|| (full_url.to_owned(), format!("{resource_type}/{id}")))
        })
        .collect()
}

fn rewrite_local_references(value: &mut Value, local_ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("reference") {
                if let Some(resolved) = local_ids.get(reference.as_str()) {
                    *reference = resolved.clone();
                }
            }
            map.values_mut()
                .for_each(|v| rewrite_local_references(v, local_ids));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_local_references(v, local_ids)),
        _ => {}
    }
}

fn apply_entry(
    tx: &Transaction<'_>,
    entry: &Value,
    local_ids: &HashMap<String, String>,
    summary: &mut ImportSummary,
    patients: &mut Touched,
) -> Result<(), Problem> {
    let invalid = |reason: &str| Problem::Invalid(reason.to_owned());
    let request = entry
        .get("request")
        .ok_or_else(|| invalid("has no request"))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("request has no method"))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("request has no url"))?;
    let (url_type, url_id) = split_reference(url)
        .filter(|_| !url.contains("://") && !url.contains('?'))
        .ok_or_else(|| Problem::Invalid(format!("request url {url:?} is not Type/id")))?;
    match method {
        "PUT" => {
            let mut resource = entry
                .get("resource")
                .cloned()
                .ok_or_else(|| invalid("PUT without a resource"))?;
            let resource_type = resource.get("resourceType").and_then(Value::as_str);
            let id = resource.get("id").and_then(Value::as_str);
            if resource_type != Some(url_type) || id != Some(url_id) {
                return Err(Problem::Invalid(format!(
                    "request url {url:?} does not match the resource's type and id"
                )));
            }
            if !local_ids.is_empty() {
                rewrite_local_references(&mut resource, local_ids);
            }
            let body = resource.to_string();
            touch(patients, upsert(tx, &resource, &body)?);
            summary.upserted += 1;
        }
        "DELETE" if url_type == "Patient" => {
            purge_patient(tx, url_id)?;
            summary.purged_patients += 1;
        }
        "DELETE" => {
            tx.prepare_cached("DELETE FROM resource WHERE type = ?1 AND id = ?2")
                .and_then(|mut stmt| stmt.execute([url_type, url_id]))
                .map_err(sql("deleting a resource"))?;
            summary.deleted += 1;
        }
        other => {
            return Err(Problem::Invalid(format!(
                "method {other} is not supported (use PUT or DELETE)"
            )))
        }
    }
    Ok(())
}

/// Removes a patient and everything of theirs; `secure_delete` overwrites the freed pages.
fn purge_patient(tx: &Transaction<'_>, patient_id: &str) -> Result<(), Problem> {
    tx.execute("DELETE FROM resource WHERE patient_id = ?1", [patient_id])
        .and_then(|_| {
            tx.execute(
                "DELETE FROM resource WHERE type = 'Patient' AND id = ?1",
                [patient_id],
            )
        })
        .and_then(|_| tx.execute("DELETE FROM patient WHERE id = ?1", [patient_id]))
        .and_then(|_| {
            tx.execute(
                "DELETE FROM patient_record WHERE patient_id = ?1",
                [patient_id],
            )
        })
        .and_then(|_| {
            tx.execute(
                "DELETE FROM record_pending WHERE patient_id = ?1",
                [patient_id],
            )
        })
        .map_err(sql("purging a patient"))?;
    Ok(())
}

/// A resource checked and ready to store: everything that needs no database.
struct Prepared {
    facts: ItemFacts,
    stored_facts: Vec<u8>,
    body: String,
}

fn prepare(resource: &Value, body: String) -> Result<Prepared, String> {
    let facts = extract_facts(resource).map_err(|e| e.0)?;
    if let Some(consent) = &facts.consent {
        let provision_type = resource.pointer("/provision/type").and_then(Value::as_str);
        check_consent_text(resource)
            .and_then(|()| check_consent(consent, provision_type))
            .map_err(|reason| format!("{}: {reason}", facts.reference()))?;
    }
    let stored_facts = facts.encode().map_err(|e| e.0)?;
    Ok(Prepared {
        facts,
        stored_facts,
        body: mig_policy::fhir::serving_body(resource, body),
    })
}

/// FHIR R4 `Consent.status` codes.
const CONSENT_STATUSES: &[&str] = &[
    "draft",
    "proposed",
    "active",
    "rejected",
    "inactive",
    "entered-in-error",
];

/// Refuses what the facts would read as absent: a status that is not a FHIR code (`"Active"`
/// would make a dissent or a withdrawal silently inactive) and a category coding without a
/// string system and code (a dissent or Type 1 opt-out coded as a number would be unseen).
fn check_consent_text(resource: &Value) -> Result<(), String> {
    match resource.get("status").and_then(Value::as_str) {
        Some(status) if CONSENT_STATUSES.contains(&status) => {}
        Some(status) => return Err(format!("status {status:?} is not a FHIR Consent status")),
        None => return Err("status is missing or not a string".into()),
    }
    let codings = resource
        .get("category")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|concept| concept.get("coding")?.as_array())
        .flatten();
    for coding in codings {
        if !(coding.get("system").is_some_and(Value::is_string)
            && coding.get("code").is_some_and(Value::is_string))
        {
            return Err("a category coding has no string system and code".into());
        }
    }
    Ok(())
}

/// Stores a resource; returns the id of the patient it belongs to, if any.
fn upsert(tx: &Transaction<'_>, resource: &Value, body: &str) -> Result<Option<String>, Problem> {
    let prepared = prepare(resource, body.to_owned()).map_err(Problem::Invalid)?;
    store(tx, &prepared)
}

/// Stores a resource; returns the id of the patient it belongs to, if any.
fn store(tx: &Transaction<'_>, prepared: &Prepared) -> Result<Option<String>, Problem> {
    let Prepared {
        facts,
        stored_facts,
        body,
    } = prepared;
    let patient_id = match (&facts.nhs_number, &facts.patient) {
        (Some(nhs_number), _) => {
            let owner: Option<String> = tx
                .prepare_cached("SELECT id FROM patient WHERE nhs_number = ?1")
                .and_then(|mut stmt| stmt.query_row([nhs_number], |row| row.get(0)).optional())
                .map_err(sql("checking an NHS number"))?;
            if let Some(owner) = owner.filter(|owner| *owner != facts.id) {
                return Err(Problem::Invalid(format!(
                    "NHS number {nhs_number} already belongs to Patient/{owner}"
                )));
            }
            tx.prepare_cached(
                "INSERT INTO patient (id, nhs_number) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET nhs_number = excluded.nhs_number",
            )
            .and_then(|mut stmt| stmt.execute([&facts.id, nhs_number]))
            .map_err(sql("storing a patient"))?;
            Some(facts.id.clone())
        }
        (None, Some(PatientRef::Id(id))) => {
            // An item stored under an unknown patient is never read: a dissent Consent for a
            // patient who arrives later would be lost and the patient served as `core`.
            let known = tx
                .prepare_cached("SELECT 1 FROM patient WHERE id = ?1")
                .and_then(|mut stmt| stmt.exists([id]))
                .map_err(sql("resolving a patient"))?;
            if !known {
                return Err(Problem::Invalid(format!(
                    "{}/{} names Patient/{id}, which is neither in the replica nor earlier in this batch",
                    facts.resource_type, facts.id
                )));
            }
            Some(id.clone())
        }
        (None, Some(PatientRef::NhsNumber(nhs_number))) => {
            let id: Option<String> = tx
                .prepare_cached("SELECT id FROM patient WHERE nhs_number = ?1")
                .and_then(|mut stmt| stmt.query_row([nhs_number], |row| row.get(0)).optional())
                .map_err(sql("resolving an NHS number"))?;
            Some(id.ok_or_else(|| {
                Problem::Invalid(format!(
                    "no patient with NHS number {nhs_number} in the replica or earlier in this batch"
                ))
            })?)
        }
        (None, None) => None,
    };
    tx.prepare_cached(
        "INSERT INTO resource (type, id, patient_id, facts, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (type, id) DO UPDATE SET
            patient_id = excluded.patient_id, facts = excluded.facts, body = excluded.body",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            facts.resource_type,
            facts.id,
            patient_id,
            stored_facts,
            body
        ])
    })
    .map_err(sql("storing a resource"))?;
    Ok(patient_id)
}
