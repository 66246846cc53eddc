//! Refusals as R4 `OperationOutcome`s carrying the GP Connect error code. The partner sees the
//! code and a fixed sentence for it, or for a malformed token what in it is wrong; never
//! internal error text.

use serde_json::{json, Value};

use crate::policy::ErrorCode;

/// The GP Connect error code system.
pub const ERROR_CODE_SYSTEM: &str =
    "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1";

/// The one sentence a partner is told for each code.
fn diagnostics(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::AccessDenied => "Access to this record is not permitted for this request.",
        ErrorCode::BadRequest => {
            "The request is malformed: check the headers and the access token."
        }
        ErrorCode::InvalidIdentifierSystem => "The patient identifier is not an NHS number.",
        ErrorCode::InvalidNhsNumber => "The NHS number is not valid.",
        ErrorCode::InvalidParameter => "A request parameter is unknown or malformed.",
        ErrorCode::PatientNotFound => "No patient with that NHS number is registered here.",
        ErrorCode::NoPatientConsent => "The patient has not consented to this record being shared.",
    }
}

/// The OperationOutcome body for a refusal.
pub fn operation_outcome(code: ErrorCode) -> Value {
    operation_outcome_saying(code, diagnostics(code))
}

/// A refusal whose diagnostics say what was wrong (a claim or header by name; never record data).
pub fn operation_outcome_saying(code: ErrorCode, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/GPConnect-OperationOutcome-1"]},
        "issue": [{
            "severity": "error",
            "code": code.issue_type(),
            "details": {"coding": [{
                "system": ERROR_CODE_SYSTEM,
                "code": code.code(),
                "display": code.display()
            }]},
            "diagnostics": diagnostics
        }]
    })
}

/// For 5xx and limit responses: a generic outcome with no GP Connect code.
pub fn unavailable_outcome(issue: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue, "diagnostics": diagnostics}]
    })
}
