//! One audit record (SPEC §8) and its canonical bytes, which the hash chain is built from.
//! Canonical bytes are a fixed-order, length-prefixed serialization (see `canonical_bytes`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::AuditError;

/// What kind of event a record is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum RecordKind {
    /// A partner's FHIR request, permitted or refused.
    PartnerRequest,
    /// An administrative action through migctl.
    AdminAction,
    /// The privacy officer acknowledged an override alert.
    AlertAck,
    /// A statistical extract run (SPEC §12).
    Extract,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<RecordKind> {
        name.parse().ok()
    }
}

/// On what basis the caller claimed permission to view (SPEC §5 step 6).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum PermissionBasis {
    /// `permission_to_view: granted`.
    Granted,
    /// A standing consent for the caller's organisation.
    StandingConsent,
    /// `permission_to_view: override`.
    Override,
    /// The partner's agreement obliges it to ask the patient at the point of care.
    Attested,
    /// No basis (refused before it mattered, or not a partner request).
    #[default]
    None,
}

impl PermissionBasis {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<PermissionBasis> {
        name.parse().ok()
    }
}

impl From<&mig_policy::Basis> for PermissionBasis {
    fn from(basis: &mig_policy::Basis) -> PermissionBasis {
        use mig_policy::Basis;
        match basis {
            Basis::Granted => PermissionBasis::Granted,
            Basis::StandingConsent { .. } => PermissionBasis::StandingConsent,
            Basis::Attested => PermissionBasis::Attested,
            Basis::Override { .. } => PermissionBasis::Override,
        }
    }
}

/// The access decision.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Decision {
    Permit,
    Refuse,
}

impl Decision {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<Decision> {
        name.parse().ok()
    }
}

/// An audit record as the caller hands it to `AuditLog::append`. The log assigns the sequence
/// number and the chain hashes; `time` is taken at append when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the event happened (stored as UTC, microsecond precision).
    #[serde(with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    pub kind: RecordKind,
    /// The partner's ODS code (from its registered DSA).
    pub partner_ods: Option<String>,
    /// SHA-256 (lower-case hex) of the partner's client certificate (DER).
    pub partner_cert_sha256: Option<String>,
    pub sds_user_id: Option<String>,
    pub sds_role_profile_id: Option<String>,
    /// SDS job role code, e.g. `R8000`.
    pub job_role: Option<String>,
    /// `requesting_organization` ODS code from the JWT.
    pub requesting_org_ods: Option<String>,
    /// `requesting_device` from the JWT, as JSON or free text.
    pub requesting_device: Option<String>,
    pub nhs_number: Option<String>,
    /// `Ssp-InteractionID`.
    pub interaction_id: Option<String>,
    /// `Ssp-TraceID`.
    pub trace_id: Option<String>,
    /// `Ssp-From`: the caller's ASID (12 digits), when the request carried a well-formed one.
    pub from_asid: Option<String>,
    pub basis: PermissionBasis,
    /// `emergency`, `safeguarding` or `unable-to-consent`.
    pub override_reason: Option<String>,
    pub override_justification: Option<String>,
    pub decision: Decision,
    /// The SPEC §5 error code of a refusal (e.g. `NO_PATIENT_CONSENT`).
    pub error_code: Option<String>,
    /// Names of the sections released (`Section::name`), in release order.
    pub sections: Vec<String>,
    /// For admin actions and acks: who (e.g. `uid=1000(alice)`).
    pub operator: Option<String>,
    /// For admin actions and acks: what was done, in words.
    pub action: Option<String>,
    /// For an alert acknowledgement: the alert's id.
    pub alert_id: Option<u64>,
}

impl AuditRecord {
    /// An empty record of `kind` with `decision`; fill in the fields that apply.
    pub fn new(kind: RecordKind, decision: Decision) -> AuditRecord {
        AuditRecord {
            time: None,
            kind,
            partner_ods: None,
            partner_cert_sha256: None,
            sds_user_id: None,
            sds_role_profile_id: None,
            job_role: None,
            requesting_org_ods: None,
            requesting_device: None,
            nhs_number: None,
            interaction_id: None,
            trace_id: None,
            from_asid: None,
            basis: PermissionBasis::None,
            override_reason: None,
            override_justification: None,
            decision,
            error_code: None,
            sections: Vec::new(),
            operator: None,
            action: None,
            alert_id: None,
        }
    }

    /// An admin action by `operator`.
    pub fn admin_action(operator: &str, action: &str, decision: Decision) -> AuditRecord {
        let mut record = AuditRecord::new(RecordKind::AdminAction, decision);
        record.operator = Some(operator.to_owned());
        record.action = Some(action.to_owned());
        record
    }

    /// Whether appending this record raises a privacy-officer alert.
    pub fn raises_alert(&self) -> bool {
        self.kind == RecordKind::PartnerRequest
            && self.basis == PermissionBasis::Override
            && self.decision == Decision::Permit
    }
}

/// A record as stored: the caller's record plus what the log added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    /// The stored time text (`format_time`), which is what the chain covers.
    pub time_text: String,
    /// The record, with `time` set.
    pub record: AuditRecord,
    /// SHA-256 of the previous record's canonical bytes (`GENESIS` for record 1).
    pub prev_hash: [u8; 32],
    /// SHA-256 of this record's canonical bytes, as written by the log. `verify` recomputes it.
    pub hash: [u8; 32],
}

/// Domain separation for record bytes; bump the version if the layout ever changes.
const RECORD_MAGIC: &[u8] = b"MIG-AUDIT-RECORD-V2";
/// Domain separation for checkpoint messages.
const CHECKPOINT_MAGIC: &[u8] = b"MIG-AUDIT-CHECKPOINT-V2";

/// The value record 1 chains from: SHA-256 of the ASCII bytes `MIG-AUDIT-GENESIS-V1`.
pub fn genesis() -> [u8; 32] {
    Sha256::digest(b"MIG-AUDIT-GENESIS-V1").into()
}

/// Formats a time the way the log stores it: UTC, microseconds, `Z`
/// (`2026-11-27T06:52:08.123456Z`). Fixed width, so text order is time order.
pub fn format_time(time: OffsetDateTime) -> Result<String, AuditError> {
    let utc = time.to_offset(time::UtcOffset::UTC);
    // Truncate to microseconds: the stored text must round-trip exactly.
    let micros = utc.microsecond();
    let utc = utc
        .replace_microsecond(micros)
        .map_err(|e| AuditError::Time(e.to_string()))?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    utc.format(&format)
        .map_err(|e| AuditError::Time(e.to_string()))
}

/// Parses a stored time (RFC 3339).
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

fn put_field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_bytes(out, text.as_bytes());
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths beyond u32 cannot reach here: the API limits request sizes far below 4 GiB, and
    // saturating keeps the encoding total rather than panicking.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical bytes of a record: what its hash, and so the next record's `prev_hash`, cover.
///
/// Layout (version 2), all integers big-endian:
/// `"MIG-AUDIT-RECORD-V2"` ‖ seq (u64) ‖ prev_hash (32 bytes) ‖ then each field in this order:
/// time, kind, partner_ods, partner_cert_sha256, sds_user_id, sds_role_profile_id, job_role,
/// requesting_org_ods, requesting_device, nhs_number, interaction_id, trace_id, from_asid, basis,
/// override_reason, override_justification, decision, error_code, sections, operator, action,
/// alert_id. A text field is `0x00` when absent, else `0x01` ‖ length (u32) ‖ UTF-8 bytes;
/// time is the stored text, kind/basis/decision their kebab-case names (always present),
/// alert_id its decimal digits, and sections is count (u32) ‖ each name as length (u32) ‖ bytes.
pub fn canonical_bytes(
    seq: u64,
    time_text: &str,
    record: &AuditRecord,
    prev_hash: &[u8; 32],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(prev_hash);
    put_field(&mut out, Some(time_text));
    put_field(&mut out, Some(record.kind.name()));
    put_field(&mut out, record.partner_ods.as_deref());
    put_field(&mut out, record.partner_cert_sha256.as_deref());
    put_field(&mut out, record.sds_user_id.as_deref());
    put_field(&mut out, record.sds_role_profile_id.as_deref());
    put_field(&mut out, record.job_role.as_deref());
    put_field(&mut out, record.requesting_org_ods.as_deref());
    put_field(&mut out, record.requesting_device.as_deref());
    put_field(&mut out, record.nhs_number.as_deref());
    put_field(&mut out, record.interaction_id.as_deref());
    put_field(&mut out, record.trace_id.as_deref());
    put_field(&mut out, record.from_asid.as_deref());
    put_field(&mut out, Some(record.basis.name()));
    put_field(&mut out, record.override_reason.as_deref());
    put_field(&mut out, record.override_justification.as_deref());
    put_field(&mut out, Some(record.decision.name()));
    put_field(&mut out, record.error_code.as_deref());
    let count = u32::try_from(record.sections.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for section in &record.sections {
        put_bytes(&mut out, section.as_bytes());
    }
    put_field(&mut out, record.operator.as_deref());
    put_field(&mut out, record.action.as_deref());
    let alert_id = record.alert_id.map(|id| id.to_string());
    put_field(&mut out, alert_id.as_deref());
    out
}

/// SHA-256 of `canonical_bytes`.
pub fn record_hash(
    seq: u64,
    time_text: &str,
    record: &AuditRecord,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    Sha256::digest(canonical_bytes(seq, time_text, record, prev_hash)).into()
}

impl StoredRecord {
    /// Recomputes this record's hash from its fields (not the stored `hash`).
    pub fn computed_hash(&self) -> [u8; 32] {
        record_hash(self.seq, &self.time_text, &self.record, &self.prev_hash)
    }
}

/// The message a checkpoint signature covers:
/// `"MIG-AUDIT-CHECKPOINT-V2"` ‖ seq (u64 BE) ‖ chain head (32 bytes) ‖ TPM counter (u64 BE) ‖
/// length (u32 BE) ‖ time. The chain head is the hash of record `seq`; the counter is the value
/// the TPM's audit counter has once this checkpoint's increment is done.
pub fn checkpoint_message(seq: u64, head: &[u8; 32], counter: u64, time_text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    out.extend_from_slice(CHECKPOINT_MAGIC);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&counter.to_be_bytes());
    put_bytes(&mut out, time_text.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use strum::IntoEnumIterator;

    #[test]
    fn time_text_is_fixed_width_utc_and_round_trips() {
        let t = OffsetDateTime::parse(
            "2026-11-27T07:52:08.1234567+01:00",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let text = format_time(t).unwrap();
        assert_eq!(text, "2026-11-27T06:52:08.123456Z");
        assert_eq!(format_time(parse_time(&text).unwrap()).unwrap(), text);
        let whole = parse_time("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(format_time(whole).unwrap(), "2026-01-01T00:00:00.000000Z");
    }

    #[test]
    fn canonical_bytes_separate_adjacent_fields() {
        // "ab"+"c" and "a"+"bc" must not collide: lengths are in the encoding.
        let mut one = AuditRecord::new(RecordKind::PartnerRequest, Decision::Permit);
        one.partner_ods = Some("ab".into());
        one.partner_cert_sha256 = Some("c".into());
        let mut two = one.clone();
        two.partner_ods = Some("a".into());
        two.partner_cert_sha256 = Some("bc".into());
        let g = genesis();
        assert_ne!(
            canonical_bytes(1, "t", &one, &g),
            canonical_bytes(1, "t", &two, &g)
        );
        // Absent and empty differ too.
        let mut three = one.clone();
        three.sds_user_id = Some(String::new());
        assert_ne!(
            canonical_bytes(1, "t", &one, &g),
            canonical_bytes(1, "t", &three, &g)
        );
        // The sequence number is covered.
        assert_ne!(record_hash(1, "t", &one, &g), record_hash(2, "t", &one, &g));
        // So is the caller's ASID.
        let mut four = one.clone();
        four.from_asid = Some("200000000999".into());
        assert_ne!(
            record_hash(1, "t", &one, &g),
            record_hash(1, "t", &four, &g)
        );
    }

    #[test]
    fn checkpoint_message_covers_the_counter() {
        let head = [5u8; 32];
        assert_ne!(
            checkpoint_message(9, &head, 41, "t"),
            checkpoint_message(9, &head, 42, "t")
        );
    }

    #[test]
    fn each_policy_basis_is_audited_under_its_own_name() {
        use mig_policy::{Basis, OverrideReason};
        for basis in [
            Basis::Granted,
            Basis::StandingConsent { ods: "X26".into() },
            Basis::Attested,
            Basis::Override {
                reason: OverrideReason::Emergency,
                justification: "Patient unconscious at scene".into(),
            },
        ] {
            assert_eq!(PermissionBasis::from(&basis).name(), basis.name());
        }
    }

    #[test]
    fn names_round_trip() {
        for k in RecordKind::iter() {
            assert_eq!(RecordKind::from_name(k.name()), Some(k));
        }
        for b in PermissionBasis::iter() {
            assert_eq!(PermissionBasis::from_name(b.name()), Some(b));
        }
        for d in Decision::iter() {
            assert_eq!(Decision::from_name(d.name()), Some(d));
        }
    }
}
