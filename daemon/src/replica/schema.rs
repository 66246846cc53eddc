//! Schema and forward migrations, tracked in `PRAGMA user_version`.

use rusqlite::{params, Connection, Transaction};
use serde_json::Value;

use super::ReplicaError;
use mig_policy::fhir::{extract_facts, serving_body};

/// One schema upgrade.
enum Migration {
    Sql(&'static str),
    /// Re-reads every stored resource with today's ingest rules: its facts over everything in
    /// it (contained resources, every coding, other patients' references, a Patient's deceased
    /// and active flags) and the body stored to be served (no narrative; a Patient's
    /// demographics projection). Only correct on bodies stored as received (before version 3):
    /// a stored projection has lost the `active` and `meta.security` a Patient's facts need.
    RederiveFromReceived,
}

/// Each entry upgrades the schema by one version; never edit a released entry, append.
const MIGRATIONS: &[Migration] = &[
    // 1: resources by type and id with their extracted facts (binary, `ItemFacts::encode`);
    // patients by NHS number.
    Migration::Sql(
        "CREATE TABLE resource (
        type TEXT NOT NULL,
        id TEXT NOT NULL,
        patient_id TEXT,
        facts BLOB NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (type, id)
    );
    CREATE INDEX resource_by_patient ON resource (patient_id);
    CREATE TABLE patient (
        id TEXT PRIMARY KEY,
        nhs_number TEXT NOT NULL UNIQUE
    );",
    ),
    // 2: a counter every committed write raises, so readers can tell a decoded record they
    //    hold is still current.
    Migration::Sql(
        "CREATE TABLE generation (n INTEGER NOT NULL);
    INSERT INTO generation (n) VALUES (0);",
    ),
    // 3: facts over the whole item and bodies as served (issue 13); facts of version 2 do not
    //    decode any more, so every row is rewritten.
    Migration::RederiveFromReceived,
    // 4: the few resources a statistical extract needs (SPEC §12: fit notes and Type 1
    //    opt-outs), found without reading the whole replica. SQLite keeps a partial index up
    //    to date on every write; its condition must stay identical to the extract's query
    //    (`store::STATISTICS_CANDIDATE`). The match is on the codes' digits anywhere in the body,
    //    a superset the extract narrows down with each resource's facts.
    Migration::Sql(
        "CREATE INDEX resource_statistics ON resource (patient_id)
        WHERE instr(body, '1331000000103') > 0 OR instr(body, '827241000000103') > 0;",
    ),
    // 5: patients whose rows are to be laid out contiguously (`layout`): every write names its
    //    patients here, and every patient of an existing replica starts out named.
    Migration::Sql(
        "CREATE TABLE reorder_pending (patient_id TEXT PRIMARY KEY) WITHOUT ROWID;
        INSERT INTO reorder_pending (patient_id) SELECT id FROM patient;",
    ),
    // 6: each patient's record packed into one row (`packed`), instead of their rows moved
    //    together. A deleted row, or one moved to another patient, drops the packed record it
    //    was in and names that patient for packing (the triggers; what an import writes is
    //    dropped and named by `packed::mark`). Every patient starts out named. (Not `INSERT OR
    //    IGNORE` in a trigger: the statement that fires it imposes its own conflict policy.)
    Migration::Sql(
        "ALTER TABLE reorder_pending RENAME TO record_pending;
        CREATE TABLE patient_record (patient_id TEXT PRIMARY KEY, record BLOB NOT NULL);
        CREATE TRIGGER resource_deleted_unpacks AFTER DELETE ON resource
        WHEN old.patient_id IS NOT NULL BEGIN
            DELETE FROM patient_record WHERE patient_id = old.patient_id;
            INSERT INTO record_pending (patient_id) SELECT old.patient_id
            WHERE NOT EXISTS (SELECT 1 FROM record_pending WHERE patient_id = old.patient_id);
        END;
        CREATE TRIGGER resource_moved_unpacks AFTER UPDATE OF patient_id ON resource
        WHEN old.patient_id IS NOT NULL AND old.patient_id IS NOT new.patient_id BEGIN
            DELETE FROM patient_record WHERE patient_id = old.patient_id;
            INSERT INTO record_pending (patient_id) SELECT old.patient_id
            WHERE NOT EXISTS (SELECT 1 FROM record_pending WHERE patient_id = old.patient_id);
        END;
        INSERT OR IGNORE INTO record_pending (patient_id) SELECT id FROM patient;",
    ),
];

pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to date inside one transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), ReplicaError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| ReplicaError::Sqlite("reading the schema version", e))?;
    if version > CURRENT_VERSION {
        return Err(ReplicaError::SchemaTooNew {
            found: version,
            supported: CURRENT_VERSION,
        });
    }
    if version == CURRENT_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction()
        .map_err(|e| ReplicaError::Sqlite("starting a migration", e))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        match migration {
            Migration::Sql(sql) => tx
                .execute_batch(sql)
                .map_err(|e| ReplicaError::Sqlite("applying a schema migration", e))?,
            Migration::RederiveFromReceived => rederive(&tx)?,
        }
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(|e| ReplicaError::Sqlite("recording the schema version", e))?;
    }
    tx.commit()
        .map_err(|e| ReplicaError::Sqlite("committing a migration", e))
}

/// Rewrites the facts and body of every resource, a page of rows at a time (a practice's
/// replica does not fit in memory at once). A row that today's rules refuse stops the upgrade,
/// naming it: it would be refused at ingest, and its old facts cannot be trusted.
fn rederive(tx: &Transaction<'_>) -> Result<(), ReplicaError> {
    const PAGE: i64 = 1_000;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String, String, String)> = tx
            .prepare_cached(
                "SELECT rowid, type, id, body FROM resource WHERE rowid > ?1
                 ORDER BY rowid LIMIT ?2",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![after, PAGE], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect()
            })
            .map_err(|e| ReplicaError::Sqlite("reading resources to upgrade", e))?;
        let Some(last) = rows.last().map(|row| row.0) else {
            return Ok(());
        };
        for (rowid, resource_type, id, body) in rows {
            let refused = |reason: String| ReplicaError::Upgrade {
                row: format!("{resource_type}/{id}"),
                reason,
            };
            let value: Value = serde_json::from_str(&body)
                .map_err(|e| refused(format!("stored body is not JSON: {e}")))?;
            let facts = extract_facts(&value).map_err(|e| refused(e.0))?;
            let stored_facts = facts.encode().map_err(|e| refused(e.0))?;
            let body = serving_body(&value, body);
            tx.prepare_cached("UPDATE resource SET facts = ?1, body = ?2 WHERE rowid = ?3")
                .and_then(|mut stmt| stmt.execute(params![stored_facts, body, rowid]))
                .map_err(|e| ReplicaError::Sqlite("rewriting a resource to upgrade", e))?;
        }
        after = last;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mig_policy::fhir::ItemFacts;

    /// A replica of version 2 (facts in the old layout, bodies as received) upgrades to facts
    /// over the whole item and bodies as served.
    #[test]
    fn version_2_rows_are_rederived() {
        let mut conn = Connection::open_in_memory().unwrap();
        for migration in &MIGRATIONS[..2] {
            if let Migration::Sql(sql) = migration {
                conn.execute_batch(sql).unwrap();
            }
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        let patient = r#"{"resourceType":"Patient","id":"p","active":false,"text":{"div":"x"},
            "identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}]}"#;
        let item = r#"{"resourceType":"Condition","id":"c","subject":{"reference":"Patient/p"},
            "text":{"div":"narrative"},"contained":[{"resourceType":"Observation","id":"o",
            "meta":{"security":[{"system":"http://hl7.org/fhir/v3/Confidentiality","code":"R"}]}}]}"#;
        for (kind, id, body) in [("Patient", "p", patient), ("Condition", "c", item)] {
            conn.execute(
                "INSERT INTO resource (type, id, patient_id, facts, body) VALUES (?1, ?2, 'p', x'00', ?3)",
                params![kind, id, body],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let read = |kind: &str| -> (ItemFacts, String) {
            conn.query_row(
                "SELECT facts, body FROM resource WHERE type = ?1",
                [kind],
                |row| {
                    Ok((
                        ItemFacts::decode(&row.get::<_, Vec<u8>>(0)?).unwrap(),
                        row.get(1)?,
                    ))
                },
            )
            .unwrap()
        };
        let (facts, body) = read("Patient");
        assert!(facts.ended);
        assert!(!body.contains("active") && !body.contains("text"), "{body}");
        let (facts, body) = read("Condition");
        assert_eq!(facts.security[0].code, "R", "contained label read");
        assert!(!body.contains("narrative"), "{body}");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, CURRENT_VERSION);
    }
}
