//! The answers migd sends, one type per command (see [`crate::Command`]). On the wire each is
//! an object with `"ok":true` added.

use serde::{Deserialize, Serialize};

/// Any successful answer, for the server side (the client decodes the command's own type).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Empty(Empty),
    Status(StatusAnswer),
    Reload(ReloadAnswer),
    ImportChunk(ImportChunkAnswer),
    ImportCommit(ImportCommitAnswer),
    AuditVerify(AuditVerifyAnswer),
    AuditExport(AuditExportAnswer),
    AuditPatient(AuditPatientAnswer),
    AlertsList(AlertsListAnswer),
    AlertsAck(AlertsAckAnswer),
    FitNotes(FitNotesAnswer),
    Csr(CsrAnswer),
}

macro_rules! answers {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for Answer {
            fn from(answer: $ty) -> Answer {
                Answer::$variant(answer)
            }
        }
    )*};
}

answers! {
    Empty(Empty),
    Status(StatusAnswer),
    Reload(ReloadAnswer),
    ImportChunk(ImportChunkAnswer),
    ImportCommit(ImportCommitAnswer),
    AuditVerify(AuditVerifyAnswer),
    AuditExport(AuditExportAnswer),
    AuditPatient(AuditPatientAnswer),
    AlertsList(AlertsListAnswer),
    AlertsAck(AlertsAckAnswer),
    FitNotes(FitNotesAnswer),
    Csr(CsrAnswer),
}

/// Done, nothing to report (`import-begin`, `update-step`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// migd's version.
    pub version: String,
    pub ready: bool,
    pub healthy: bool,
    pub uptime_seconds: u64,
    /// `None` if the replica could not be read.
    pub replica: Option<ReplicaStats>,
    pub audit: AuditStats,
    pub partners: Vec<PartnerSummary>,
    /// Registered clinical systems.
    pub upstreams: u64,
    /// Partner CRLs applied.
    pub crls: u64,
    pub snapshot_generation: u64,
    /// Registry files not applied.
    pub registry_problems: Vec<RegistryProblem>,
    /// Unacknowledged alerts; `None` if the audit trail could not be read.
    pub alerts_waiting: Option<u64>,
    /// When the last import was committed, if any.
    pub last_import: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStats {
    pub patients: u64,
    pub resources: u64,
    /// Patients whose record migd has still to pack for fast reading after an import.
    #[serde(default)]
    pub records_pending: u64,
}

/// The audit writer's counters since migd started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStats {
    pub records: u64,
    pub commits: u64,
    pub checkpoints: u64,
    pub failed_commits: u64,
    pub failed_checkpoints: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerSummary {
    pub ods: String,
    pub name: String,
    /// The partner type's name (`community-health`, …).
    #[serde(rename = "type")]
    pub partner_type: String,
    /// The agreement's last day, `YYYY-MM-DD`.
    pub expires: Option<String>,
}

/// A registry file that is not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryProblem {
    pub file: String,
    pub error: String,
    /// What is done instead.
    pub consequence: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    /// The registry snapshot now serving.
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportChunkAnswer {
    /// Lines received so far in this import.
    pub lines: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCommitAnswer {
    pub summary: ImportSummary,
}

/// What a committed import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Resources inserted or replaced.
    pub upserted: u64,
    /// Resources deleted (other than by a patient purge).
    pub deleted: u64,
    /// Patients purged with everything of theirs.
    pub purged_patients: u64,
}

/// `audit-verify`; migctl builds the same answer when it verifies with migd stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerifyAnswer {
    pub verified: bool,
    /// The first fault in words; `None`: the trail verifies.
    pub problem: Option<String>,
    pub first_bad_record: Option<u64>,
    pub report: VerifyReport,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Checkpoints whose signature and head were proven.
    pub checkpoints_verified: u64,
    /// The highest record a valid checkpoint covers (0 if none).
    pub last_checkpoint_seq: u64,
    /// Hex SHA-256 of the last record, if any.
    pub chain_head: Option<String>,
    /// Records after the last valid checkpoint (first, last): a warning, not a failure.
    pub uncovered: Option<(u64, u64)>,
    pub counter: Option<CounterCheck>,
    pub problem: Option<VerifyProblem>,
}

/// The last checkpoint's TPM counter value against the TPM's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterCheck {
    pub checkpoint: u64,
    pub tpm: u64,
}

/// The first thing wrong with the trail (the daemon's `audit::verify::Problem`, as data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "kebab-case")]
pub enum VerifyProblem {
    Modified {
        seq: u64,
    },
    Deleted {
        seq: u64,
        until: u64,
    },
    Reordered {
        seq: u64,
    },
    BrokenLink {
        seq: u64,
    },
    Truncated {
        last_present: u64,
        checkpoint_seq: u64,
    },
    BadCheckpointSignature {
        checkpoint_id: u64,
        seq: u64,
    },
    CheckpointMismatch {
        checkpoint_id: u64,
        from: u64,
        seq: u64,
    },
    CounterNotIncreasing {
        checkpoint_id: u64,
        seq: u64,
    },
    RolledBack {
        seq: u64,
        checkpoint_counter: u64,
        tpm_counter: u64,
    },
    CounterAhead {
        seq: u64,
        checkpoint_counter: u64,
        tpm_counter: u64,
    },
    NoCheckpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExportAnswer {
    /// AuditEvents in `ndjson`.
    pub count: u64,
    pub ndjson: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPatientAnswer {
    pub accesses: Vec<AccessSummary>,
}

/// One access to a patient's record. Text fields come from partners: escape before showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PermissionBasis {
    Granted,
    StandingConsent,
    Override,
    Attested,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Permit,
    Refuse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsListAnswer {
    pub alerts: Vec<Alert>,
}

/// A permitted override, for the privacy officer. Text fields come from partners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// The audit record of the acknowledgement.
    pub seq: u64,
    pub time: String,
    pub operator: String,
    pub note: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsAckAnswer {
    /// The audit record of the acknowledgement.
    pub audit_seq: u64,
}

/// A successful fit-notes extract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FitNotesAnswer {
    /// The CSV to write.
    pub csv: String,
    /// Its detached signature (`FILE.csv.sig`).
    pub sig: String,
    /// Data rows.
    pub rows: u64,
    /// SHA-256 of the CSV, hex.
    pub sha256: String,
    /// Fit notes counted, before disclosure control (for the operator, never published).
    pub notes: u64,
    /// Notes in the period of patients with a Type 1 opt-out, left out.
    pub notes_left_out: u64,
    /// Fit notes that could not be read (`Observation/id: why`), not counted.
    pub unreadable: Vec<String>,
    /// The audit record of the run.
    pub audit_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsrAnswer {
    /// PKCS#10, PEM.
    pub pem: String,
}
