//! Privacy-officer alerts: one per permitted override, written in the same transaction as its
//! audit record; acknowledged through `AuditLog::ack_alert` (itself audited).

use rusqlite::{params, Connection, Row};
use serde::Serialize;

use super::AuditError;

/// How an alert was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acknowledgement {
    /// The audit record of the acknowledgement.
    pub seq: u64,
    pub time: String,
    pub operator: String,
    pub note: String,
}

/// A permitted override, for the privacy officer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub id: u64,
    /// The audit record of the override.
    pub seq: u64,
    pub time: String,
    pub partner_ods: Option<String>,
    pub sds_user_id: Option<String>,
    pub sds_role_profile_id: Option<String>,
    pub job_role: Option<String>,
    pub requesting_org_ods: Option<String>,
    pub nhs_number: Option<String>,
    pub reason: Option<String>,
    pub justification: Option<String>,
    pub acknowledged: Option<Acknowledgement>,
}

fn alert_from_row(row: &Row<'_>) -> rusqlite::Result<Alert> {
    let id: i64 = row.get(0)?;
    let seq: i64 = row.get(1)?;
    let ack_seq: Option<i64> = row.get(11)?;
    let acknowledged = match ack_seq {
        Some(ack_seq) => Some(Acknowledgement {
            seq: u64::try_from(ack_seq).unwrap_or(0),
            time: row.get::<_, Option<String>>(12)?.unwrap_or_default(),
            operator: row.get::<_, Option<String>>(13)?.unwrap_or_default(),
            note: row.get::<_, Option<String>>(14)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Alert {
        id: u64::try_from(id).unwrap_or(0),
        seq: u64::try_from(seq).unwrap_or(0),
        time: row.get(2)?,
        partner_ods: row.get(3)?,
        sds_user_id: row.get(4)?,
        sds_role_profile_id: row.get(5)?,
        job_role: row.get(6)?,
        requesting_org_ods: row.get(7)?,
        nhs_number: row.get(8)?,
        reason: row.get(9)?,
        justification: row.get(10)?,
        acknowledged,
    })
}

pub(crate) fn list(conn: &Connection, all: bool) -> Result<Vec<Alert>, AuditError> {
    let read = |source| AuditError::Database {
        operation: "list alerts",
        source,
    };
    let mut stmt = conn
        .prepare(
            "SELECT id, seq, time, partner_ods, sds_user_id, sds_role_profile_id, job_role, \
             requesting_org_ods, nhs_number, reason, justification, ack_seq, ack_time, \
             ack_operator, ack_note FROM alerts WHERE ?1 OR ack_seq IS NULL ORDER BY id",
        )
        .map_err(read)?;
    let rows = stmt.query_map(params![all], alert_from_row).map_err(read)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(read)
}

/// How many alerts wait for the privacy officer (not yet acknowledged).
pub(crate) fn waiting(conn: &Connection) -> Result<u64, AuditError> {
    conn.query_row(
        "SELECT count(*) FROM alerts WHERE ack_seq IS NULL",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .map_err(|source| AuditError::Database {
        operation: "count waiting alerts",
        source,
    })
}
