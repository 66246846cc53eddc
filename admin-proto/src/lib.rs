//! The admin socket's protocol between migd and migctl (SPEC §9): typed requests and answers,
//! one JSON object per `\n`-terminated line each way. Both ends use these types, so a field
//! renamed on one side is a compile error on the other, not a `null` printed by the other.
//!
//! Requests carry their name in `command` (`{"command":"audit-patient","nhs_number":"…"}`);
//! answers are `{"ok":true, …fields of the command's answer}` or
//! `{"ok":false,"error":{"code":CODE,"message":TEXT}}`. Each request type names its answer type
//! ([`Command::Answer`]), so the client decodes exactly what migd encoded for it.

#![forbid(unsafe_code)]

mod answer;
pub mod codec;
mod request;

pub use answer::*;
pub use codec::{ClientCodec, FrameError, ServerCodec, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
pub use request::*;

use serde::{Deserialize, Serialize};

/// Why migd did not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The caller's uid may not use the socket (peer credential check).
    #[serde(rename = "forbidden")]
    Forbidden,
    /// The line is not UTF-8 JSON, or not an object with a string `command`.
    #[serde(rename = "malformed_request")]
    MalformedRequest,
    /// The line is longer than [`MAX_REQUEST_BYTES`]; migd closes the connection.
    #[serde(rename = "request_too_large")]
    RequestTooLarge,
    /// `command` names no command.
    #[serde(rename = "unknown-command")]
    UnknownCommand,
    /// A known command with missing, mistyped or invalid fields.
    #[serde(rename = "bad-request")]
    BadRequest,
    #[serde(rename = "internal")]
    Internal,
    /// The audit trail cannot be written; the command was not carried out.
    #[serde(rename = "audit-unavailable")]
    AuditUnavailable,
    /// The audit trail could not be read.
    #[serde(rename = "audit-error")]
    AuditError,
    #[serde(rename = "reload-rejected")]
    ReloadRejected,
    #[serde(rename = "import-rejected")]
    ImportRejected,
    #[serde(rename = "alert-ack-refused")]
    AlertAckRefused,
    /// migd runs without statistical extracts.
    #[serde(rename = "extract-unavailable")]
    ExtractUnavailable,
    /// Bad period, no sub-ICB code, or nothing to publish.
    #[serde(rename = "extract-refused")]
    ExtractRefused,
    #[serde(rename = "extract-failed")]
    ExtractFailed,
}

/// An error answer's `error` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: ErrorCode,
    /// For the operator; names what was wrong.
    pub message: String,
}

impl AdminError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AdminError {
        AdminError {
            code,
            message: message.into(),
        }
    }
}

/// One answer line as migd sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Ok(Answer),
    Error(AdminError),
}

impl<A: Into<Answer>> From<Result<A, AdminError>> for Response {
    fn from(result: Result<A, AdminError>) -> Response {
        match result {
            Ok(answer) => Response::Ok(answer.into()),
            Err(error) => Response::Error(error),
        }
    }
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Success<'a> {
            ok: bool,
            #[serde(flatten)]
            answer: &'a Answer,
        }
        #[derive(Serialize)]
        struct Failure<'a> {
            ok: bool,
            error: &'a AdminError,
        }
        match self {
            Response::Ok(answer) => Success { ok: true, answer }.serialize(serializer),
            Response::Error(error) => Failure { ok: false, error }.serialize(serializer),
        }
    }
}

/// Decodes an answer line as the answer `A` to the request it replies to: `Ok(Err(_))` is
/// migd's error answer, `Err(_)` a line that is neither (wrong type, missing field, not JSON).
pub fn decode_reply<A: serde::de::DeserializeOwned>(
    line: &str,
) -> Result<Result<A, AdminError>, serde_json::Error> {
    // `ok` first: an error answer has none of the answer's fields.
    #[derive(Deserialize)]
    struct Head {
        ok: bool,
        #[serde(default)]
        error: Option<AdminError>,
    }
    let head: Head = serde_json::from_str(line)?;
    match (head.ok, head.error) {
        (true, _) => serde_json::from_str(line).map(Ok),
        (false, Some(error)) => Ok(Err(error)),
        (false, None) => Err(serde::de::Error::custom(
            "an answer with \"ok\":false has no \"error\"",
        )),
    }
}

/// Decodes one request line; the error is the answer to send back.
pub fn decode_request(line: &str) -> Result<Request, AdminError> {
    let error = match serde_json::from_str::<Request>(line) {
        Ok(request) => return Ok(request),
        Err(error) => error,
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(line) {
        return Err(AdminError::new(
            ErrorCode::MalformedRequest,
            format!("not JSON: {e}"),
        ));
    }
    #[derive(Deserialize)]
    struct Head {
        command: String,
    }
    match serde_json::from_str::<Head>(line) {
        Err(_) => Err(AdminError::new(
            ErrorCode::MalformedRequest,
            "a request is a JSON object with a string \"command\"",
        )),
        Ok(Head { command }) if !Request::COMMANDS.contains(&command.as_str()) => {
            Err(AdminError::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {command:?}"),
            ))
        }
        Ok(Head { command }) => Err(AdminError::new(
            ErrorCode::BadRequest,
            format!("{command}: {error}"),
        )),
    }
}
