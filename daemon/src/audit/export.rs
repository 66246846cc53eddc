//! Reading the trail back out: FHIR R4 `AuditEvent` NDJSON for export, and the per-patient
//! access list a subject access request needs.

use std::io::Write;

use base64::Engine;
use rusqlite::{params, Connection};
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::record::{format_time, StoredRecord};
use super::store::{record_from_row, to_i64, RECORD_COLUMNS};
use super::{AuditError, Decision, PermissionBasis, RecordKind};

const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// The NHS identifier system for a calling system's ASID (`Ssp-From`).
const ASID_SYSTEM: &str = "https://fhir.nhs.uk/Id/accredited-system";
const SDS_USER_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
const SDS_ROLE_PROFILE_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
const SDS_JOB_ROLE_SYSTEM: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName";
const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const SECURITY_ROLE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
/// The Patient search interaction (SPEC §3); anything else from a partner is a read.
const PATIENT_SEARCH: &str = "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";
/// Error codes that mean the appliance failed, not the caller (outcome 8).
const SERVER_FAULTS: &[&str] = &["INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"];

/// One access to a patient's record, for a subject access request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessSummary {
    pub seq: u64,
    pub time: String,
    pub partner_ods: Option<String>,
    pub requesting_org_ods: Option<String>,
    pub sds_user_id: Option<String>,
    pub sds_role_profile_id: Option<String>,
    pub job_role: Option<String>,
    pub interaction_id: Option<String>,
    /// `Ssp-From`: the calling system's ASID.
    pub from_asid: Option<String>,
    pub basis: PermissionBasis,
    pub override_reason: Option<String>,
    pub decision: Decision,
    pub error_code: Option<String>,
    pub sections: Vec<String>,
}

fn coding(system: &str, code: &str, display: Option<&str>) -> Value {
    match display {
        Some(display) => json!({"system": system, "code": code, "display": display}),
        None => json!({"system": system, "code": code}),
    }
}

/// The FHIR R4 `AuditEvent` for one stored record.
pub fn audit_event(stored: &StoredRecord) -> Value {
    let r = &stored.record;
    let partner = r.kind == RecordKind::PartnerRequest;
    let (event_type, subtype, action) = match r.kind {
        RecordKind::PartnerRequest => {
            let search = r.interaction_id.as_deref() == Some(PATIENT_SEARCH);
            let (code, display) = if search {
                ("search-type", "search type")
            } else {
                ("read", "read")
            };
            (
                coding(AUDIT_EVENT_TYPE, "rest", Some("RESTful Operation")),
                Some(coding(RESTFUL_INTERACTION, code, Some(display))),
                "R",
            )
        }
        RecordKind::AdminAction | RecordKind::AlertAck => (
            coding(DCM, "110100", Some("Application Activity")),
            None,
            "E",
        ),
        RecordKind::Extract => (coding(DCM, "110106", Some("Export")), None, "E"),
    };
    let outcome = match (r.decision, r.error_code.as_deref()) {
        (Decision::Permit, _) => "0",
        (Decision::Refuse, Some(code)) if SERVER_FAULTS.contains(&code) => "8",
        (Decision::Refuse, _) => "4",
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("mig-audit-{}", stored.seq),
        "type": event_type,
        "action": action,
        "recorded": stored.time_text,
        "outcome": outcome,
        "source": {
            "observer": {"display": "MIG appliance (migd)"},
            "type": [coding(SOURCE_TYPE, "4", Some("Application Server"))],
        },
    });
    if let Some(subtype) = subtype {
        event["subtype"] = json!([subtype]);
    }
    if let Some(code) = &r.error_code {
        event["outcomeDesc"] = json!(code);
    }
    if partner {
        let reason = if r.basis == PermissionBasis::Override {
            coding(ACT_REASON, "ETREAT", Some("Emergency Treatment"))
        } else {
            coding(ACT_REASON, "TREAT", Some("treatment"))
        };
        event["purposeOfEvent"] = json!([{ "coding": [reason] }]);
    }

    let mut agents = Vec::new();
    if partner {
        let mut user = json!({
            "type": {"coding": [coding(SECURITY_ROLE_TYPE, "humanuser", Some("human user"))]},
            "requestor": true,
        });
        if let Some(user_id) = &r.sds_user_id {
            user["who"] = json!({"identifier": {"system": SDS_USER_SYSTEM, "value": user_id}});
        }
        let mut roles = Vec::new();
        if let Some(profile) = &r.sds_role_profile_id {
            roles.push(json!({"coding": [coding(SDS_ROLE_PROFILE_SYSTEM, profile, None)]}));
        }
        if let Some(job_role) = &r.job_role {
            roles.push(json!({"coding": [coding(SDS_JOB_ROLE_SYSTEM, job_role, None)]}));
        }
        if !roles.is_empty() {
            user["role"] = json!(roles);
        }
        if let Some(device) = &r.requesting_device {
            user["altId"] = json!(format!("device: {device}"));
        }
        agents.push(user);
        if let Some(org) = r.requesting_org_ods.as_ref().or(r.partner_ods.as_ref()) {
            let mut organisation = json!({
                "type": {"coding": [coding(ROLE_CLASS, "PROV", Some("healthcare provider"))]},
                "who": {"identifier": {"system": ODS_SYSTEM, "value": org}},
                "requestor": false,
            });
            if let (Some(partner_ods), Some(cert)) = (&r.partner_ods, &r.partner_cert_sha256) {
                organisation["altId"] =
                    json!(format!("partner {partner_ods}, certificate sha256 {cert}"));
            }
            agents.push(organisation);
        }
        if let Some(asid) = &r.from_asid {
            agents.push(json!({
                "type": {"coding": [coding(DCM, "110150", Some("Application"))]},
                "who": {"identifier": {"system": ASID_SYSTEM, "value": asid}},
                "requestor": false,
            }));
        }
    } else if let Some(operator) = &r.operator {
        agents.push(json!({
            "type": {"coding": [coding(SECURITY_ROLE_TYPE, "humanuser", Some("human user"))]},
            "who": {"display": operator},
            "requestor": true,
        }));
    }
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110153", Some("Source Role ID"))]},
        "who": {"display": "MIG appliance (migd)"},
        "requestor": false,
    }));
    event["agent"] = json!(agents);

    let mut entities = Vec::new();
    if let Some(nhs) = &r.nhs_number {
        entities.push(json!({
            "what": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs}},
            "type": coding(ENTITY_TYPE, "1", Some("Person")),
            "role": coding(OBJECT_ROLE, "1", Some("Patient")),
        }));
    }
    let mut details = Vec::new();
    let mut detail = |name: &str, value: &str| {
        details.push(json!({"type": name, "valueString": value}));
    };
    if let Some(trace) = &r.trace_id {
        detail("Ssp-TraceID", trace);
    }
    if let Some(interaction) = &r.interaction_id {
        detail("Ssp-InteractionID", interaction);
    }
    if let Some(asid) = &r.from_asid {
        detail("Ssp-From", asid);
    }
    detail("permission-basis", r.basis.name());
    if let Some(reason) = &r.override_reason {
        detail("override-reason", reason);
    }
    if let Some(justification) = &r.override_justification {
        detail("override-justification", justification);
    }
    if !r.sections.is_empty() {
        detail("sections-released", &r.sections.join(","));
    }
    if let Some(action) = &r.action {
        detail("action", action);
    }
    if let Some(alert) = r.alert_id {
        detail("alert-id", &alert.to_string());
    }
    let mut query = json!({
        "type": coding(ENTITY_TYPE, "2", Some("System Object")),
        "role": coding(OBJECT_ROLE, "24", Some("Query")),
        "detail": details,
    });
    if let Some(interaction) = &r.interaction_id {
        query["query"] =
            json!(base64::engine::general_purpose::STANDARD.encode(interaction.as_bytes()));
    } else {
        query["name"] = json!(r.kind.name());
    }
    entities.push(query);
    event["entity"] = json!(entities);
    event
}

pub(crate) fn export(
    conn: &Connection,
    since: Option<OffsetDateTime>,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let read = |source| AuditError::Database {
        operation: "read records for export",
        source,
    };
    // Stored times are fixed-width UTC text, so text order is time order.
    let since = match since {
        Some(t) => format_time(t)?,
        None => String::new(),
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE time >= ?1 ORDER BY seq"
        ))
        .map_err(read)?;
    let mut rows = stmt.query(params![since]).map_err(read)?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(read)? {
        let stored = record_from_row(row)?;
        let line = serde_json::to_string(&audit_event(&stored))
            .map_err(|e| AuditError::Export(std::io::Error::other(e)))?;
        out.write_all(line.as_bytes()).map_err(AuditError::Export)?;
        out.write_all(b"\n").map_err(AuditError::Export)?;
        count += 1;
    }
    out.flush().map_err(AuditError::Export)?;
    Ok(count)
}

pub(crate) fn patient_accesses(
    conn: &Connection,
    nhs_number: &str,
) -> Result<Vec<AccessSummary>, AuditError> {
    let read = |source| AuditError::Database {
        operation: "read patient accesses",
        source,
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE nhs_number = ?1 AND kind = ?2 \
             ORDER BY seq"
        ))
        .map_err(read)?;
    let mut rows = stmt
        .query(params![nhs_number, RecordKind::PartnerRequest.name()])
        .map_err(read)?;
    let mut accesses = Vec::new();
    while let Some(row) = rows.next().map_err(read)? {
        let stored = record_from_row(row)?;
        let r = stored.record;
        accesses.push(AccessSummary {
            seq: stored.seq,
            time: stored.time_text,
            partner_ods: r.partner_ods,
            requesting_org_ods: r.requesting_org_ods,
            sds_user_id: r.sds_user_id,
            sds_role_profile_id: r.sds_role_profile_id,
            job_role: r.job_role,
            interaction_id: r.interaction_id,
            from_asid: r.from_asid,
            basis: r.basis,
            override_reason: r.override_reason,
            decision: r.decision,
            error_code: r.error_code,
            sections: r.sections,
        });
    }
    Ok(accesses)
}

pub(crate) fn records_from(conn: &Connection, from: u64) -> Result<Vec<StoredRecord>, AuditError> {
    let read = |source| AuditError::Database {
        operation: "read records",
        source,
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE seq >= ?1 ORDER BY seq"
        ))
        .map_err(read)?;
    let mut rows = stmt.query(params![to_i64(from)?]).map_err(read)?;
    let mut records = Vec::new();
    while let Some(row) = rows.next().map_err(read)? {
        records.push(record_from_row(row)?);
    }
    Ok(records)
}
