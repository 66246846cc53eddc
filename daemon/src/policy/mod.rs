//! The access decision (SPEC §5) and item filtering. Pure: no I/O, no clock, no async; the
//! current time is an argument, so every rule can be tested exhaustively.

mod agreement;

pub use agreement::{Agreement, PartnerType, RoleSet};

/// The refusal codes of SPEC §5, as GP Connect names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AccessDenied,
    BadRequest,
    InvalidIdentifierSystem,
    InvalidNhsNumber,
    InvalidParameter,
    PatientNotFound,
    NoPatientConsent,
}

impl ErrorCode {
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::AccessDenied => "ACCESS_DENIED",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::InvalidIdentifierSystem => "INVALID_IDENTIFIER_SYSTEM",
            ErrorCode::InvalidNhsNumber => "INVALID_NHS_NUMBER",
            ErrorCode::InvalidParameter => "INVALID_PARAMETER",
            ErrorCode::PatientNotFound => "PATIENT_NOT_FOUND",
            ErrorCode::NoPatientConsent => "NO_PATIENT_CONSENT",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AccessDenied | ErrorCode::NoPatientConsent => 403,
            ErrorCode::BadRequest
            | ErrorCode::InvalidIdentifierSystem
            | ErrorCode::InvalidNhsNumber => 400,
            ErrorCode::InvalidParameter => 422,
            ErrorCode::PatientNotFound => 404,
        }
    }
}
