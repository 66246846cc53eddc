//! Refusals as R4 `OperationOutcome`s carrying the GP Connect error code, whose `diagnostics`
//! name the header, claim or parameter at fault (or the rule that refused); never record data
//! or internal error text.

use serde_json::{json, Value};

use mig_policy::ErrorCode;

/// The GP Connect error code system.
pub const ERROR_CODE_SYSTEM: &str =
    "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1";

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

/// A refusal at the HTTP layer, before or instead of the access decision: unknown route or
/// method, a listener limit, or a client certificate withdrawn while its connection was open.
/// Each is audited like any other request and answered with a Spine code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRefusal {
    UnknownRoute,
    MethodNotAllowed,
    Timeout,
    BodyTooLarge,
    HeadersTooLarge,
    TooManyRequests,
    MalformedBody,
    CertificateWithdrawn,
}

impl HttpRefusal {
    pub fn status(self) -> u16 {
        match self {
            HttpRefusal::UnknownRoute => 404,
            HttpRefusal::MethodNotAllowed => 405,
            HttpRefusal::Timeout => 408,
            HttpRefusal::BodyTooLarge => 413,
            HttpRefusal::HeadersTooLarge => 431,
            HttpRefusal::TooManyRequests => 429,
            HttpRefusal::MalformedBody => 400,
            HttpRefusal::CertificateWithdrawn => 403,
        }
    }

    /// The Spine code (outcome and audit), and the FHIR issue type.
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            HttpRefusal::UnknownRoute | HttpRefusal::MethodNotAllowed => {
                ("NOT_IMPLEMENTED", "not-supported")
            }
            HttpRefusal::Timeout => ("BAD_REQUEST", "timeout"),
            HttpRefusal::BodyTooLarge | HttpRefusal::HeadersTooLarge => {
                ("BAD_REQUEST", "too-costly")
            }
            HttpRefusal::TooManyRequests => ("BAD_REQUEST", "throttled"),
            HttpRefusal::MalformedBody => ("BAD_REQUEST", "invalid"),
            HttpRefusal::CertificateWithdrawn => (
                ErrorCode::AccessDenied.code(),
                ErrorCode::AccessDenied.issue_type(),
            ),
        }
    }

    fn display(self) -> &'static str {
        match self.code().0 {
            "NOT_IMPLEMENTED" => "Not implemented",
            "ACCESS_DENIED" => ErrorCode::AccessDenied.display(),
            _ => ErrorCode::BadRequest.display(),
        }
    }

    fn diagnostics(self) -> &'static str {
        match self {
            HttpRefusal::UnknownRoute => "No such endpoint.",
            HttpRefusal::MethodNotAllowed => "This endpoint does not accept that method.",
            HttpRefusal::Timeout => "The request was not received in time.",
            HttpRefusal::BodyTooLarge => "The request body is too large.",
            HttpRefusal::HeadersTooLarge => "The request headers are too large.",
            HttpRefusal::TooManyRequests => {
                "Too many requests in progress from this partner; retry when one completes."
            }
            HttpRefusal::MalformedBody => "The request body is malformed.",
            HttpRefusal::CertificateWithdrawn => {
                "The client certificate is no longer accepted; reconnect with a valid one."
            }
        }
    }

    /// The OperationOutcome body.
    pub fn outcome(self) -> Value {
        let (code, issue) = self.code();
        json!({
            "resourceType": "OperationOutcome",
            "meta": {"profile": ["https://fhir.nhs.uk/STU3/StructureDefinition/GPConnect-OperationOutcome-1"]},
            "issue": [{
                "severity": "error",
                "code": issue,
                "details": {"coding": [{
                    "system": ERROR_CODE_SYSTEM,
                    "code": code,
                    "display": self.display()
                }]},
                "diagnostics": self.diagnostics()
            }]
        })
    }
}
