//! The requests migctl sends, one type per command. Unknown fields are ignored; fields with a
//! default may be left out.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::answer::*;

/// A request type and the answer type migd sends for it.
pub trait Command: Into<Request> {
    type Answer: Serialize + DeserializeOwned + Into<Answer>;
}

/// Every request, tagged by `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status(Status),
    Reload(Reload),
    ImportBegin(ImportBegin),
    ImportChunk(ImportChunk),
    ImportCommit(ImportCommit),
    AuditVerify(AuditVerify),
    AuditExport(AuditExport),
    AuditPatient(AuditPatient),
    AlertsList(AlertsList),
    AlertsAck(AlertsAck),
    ExtractFitNotes(ExtractFitNotes),
    UpdateStep(UpdateStep),
    Csr(Csr),
}

impl Request {
    /// Every `command` value (tells an unknown command from a known one with bad fields).
    pub const COMMANDS: [&'static str; 13] = [
        "status",
        "reload",
        "import-begin",
        "import-chunk",
        "import-commit",
        "audit-verify",
        "audit-export",
        "audit-patient",
        "alerts-list",
        "alerts-ack",
        "extract-fit-notes",
        "update-step",
        "csr",
    ];
}

macro_rules! commands {
    ($($variant:ident => $answer:ty),* $(,)?) => {$(
        impl From<$variant> for Request {
            fn from(request: $variant) -> Request {
                Request::$variant(request)
            }
        }
        impl Command for $variant {
            type Answer = $answer;
        }
    )*};
}

commands! {
    Status => StatusAnswer,
    Reload => ReloadAnswer,
    ImportBegin => Empty,
    ImportChunk => ImportChunkAnswer,
    ImportCommit => ImportCommitAnswer,
    AuditVerify => AuditVerifyAnswer,
    AuditExport => AuditExportAnswer,
    AuditPatient => AuditPatientAnswer,
    AlertsList => AlertsListAnswer,
    AlertsAck => AlertsAckAnswer,
    ExtractFitNotes => FitNotesAnswer,
    UpdateStep => Empty,
    Csr => CsrAnswer,
}

/// What the appliance is doing (`migctl status`, the console, `migctl check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {}

/// Re-read the registry now instead of within the second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {}

/// Starts an import on this connection: one transaction, rolled back if the connection goes
/// away before `import-commit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportBegin {
    /// The file's name, for the audit trail.
    #[serde(default)]
    pub name: String,
}

/// NDJSON for the import in progress: whole lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportChunk {
    pub ndjson: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCommit {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {}

/// The audit trail as FHIR AuditEvent NDJSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    /// RFC 3339 or `YYYY-MM-DD`; none: the whole trail.
    #[serde(default)]
    pub since: Option<String>,
}

/// Every recorded access to one patient's record (subject access request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPatient {
    pub nhs_number: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsList {
    /// Acknowledged alerts too.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsAck {
    pub id: u64,
    /// Must not be blank.
    pub note: String,
}

/// A fit-notes extract (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractFitNotes {
    /// First day, `YYYY-MM-DD`.
    pub from: String,
    /// Last day, `YYYY-MM-DD`.
    pub to: String,
    /// The CSV's file name (no directory), named in the signature.
    pub file: String,
}

/// One step of `migctl update install`, for the audit trail (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStep {
    /// 1 to 1024 characters.
    pub step: String,
    /// Whether the step succeeded.
    #[serde(default = "yes")]
    pub ok: bool,
}

fn yes() -> bool {
    true
}

/// A PKCS#10 request signed by the appliance's TPM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Csr {
    pub subject: String,
}
