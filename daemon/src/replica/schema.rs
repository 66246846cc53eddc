//! Schema and forward migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use super::ReplicaError;

/// Each entry upgrades the schema by one version; never edit a released entry, append.
const MIGRATIONS: &[&str] = &[
    // 1: resources by type and id with their extracted facts (binary, `ItemFacts::encode`);
    // patients by NHS number.
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
    // 2: a counter every committed write raises, so readers can tell a decoded record they
    //    hold is still current.
    "CREATE TABLE generation (n INTEGER NOT NULL);
    INSERT INTO generation (n) VALUES (0);",
    // 3: the few resources a statistical extract needs (SPEC §12: fit notes and Type 1
    //    opt-outs), found without reading the whole replica. SQLite keeps a partial index up
    //    to date on every write; its condition must stay identical to the extract's query
    //    (`store::STATISTICS_CANDIDATE`). The match is on the codes' digits anywhere in the body,
    //    a superset the extract narrows down with each resource's facts.
    "CREATE INDEX resource_statistics ON resource (patient_id)
        WHERE instr(body, '1331000000103') > 0 OR instr(body, '827241000000103') > 0;",
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
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| ReplicaError::Sqlite("applying a schema migration", e))?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(|e| ReplicaError::Sqlite("recording the schema version", e))?;
    }
    tx.commit()
        .map_err(|e| ReplicaError::Sqlite("committing a migration", e))
}
