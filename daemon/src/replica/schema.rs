//! Schema and forward migrations, tracked in `PRAGMA user_version`.

use rusqlite::{params, Connection, Transaction};

use super::ReplicaError;
use crate::fhir::extract_facts;

/// One schema upgrade.
enum Migration {
    Sql(&'static str),
    /// Re-extracts every stored resource's facts from its stored body with today's rules (the
    /// stored form has no room for fields added since, so old facts no longer decode).
    RederiveFacts,
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
    // 3: facts gain the category and code codings that file an Observation, Flag or CarePlan
    //    in its section (issue 15).
    Migration::RederiveFacts,
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
            Migration::RederiveFacts => rederive_facts(&tx)?,
        }
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(|e| ReplicaError::Sqlite("recording the schema version", e))?;
    }
    tx.commit()
        .map_err(|e| ReplicaError::Sqlite("committing a migration", e))
}

/// Rewrites the facts of every resource from its body, a page of rows at a time (a practice's
/// replica need not fit in memory). A body today's rules refuse stops the upgrade, naming the
/// row: its old facts cannot be trusted either.
fn rederive_facts(tx: &Transaction<'_>) -> Result<(), ReplicaError> {
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
            .map_err(|e| ReplicaError::Sqlite("reading resources to re-derive facts", e))?;
        let Some(&(last, ..)) = rows.last() else {
            return Ok(());
        };
        for (rowid, resource_type, id, body) in rows {
            let corrupt = || ReplicaError::CorruptRow(format!("{resource_type}/{id}"));
            let value: serde_json::Value = serde_json::from_str(&body).map_err(|_| corrupt())?;
            let facts = extract_facts(&value)
                .and_then(|facts| facts.encode())
                .map_err(|_| corrupt())?;
            tx.prepare_cached("UPDATE resource SET facts = ?1 WHERE rowid = ?2")
                .and_then(|mut stmt| stmt.execute(params![facts, rowid]))
                .map_err(|e| ReplicaError::Sqlite("re-deriving facts", e))?;
        }
        after = last;
    }
}
