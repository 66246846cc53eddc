//! What `decide` is asked and what it answers: the request as the API has parsed it, the
//! patient as the replica holds it, and the decision with the error codes partners see.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fhir::{ConsentFacts, ItemFacts, RecordList, Section};

/// Why a clinician overrides the patient's permission (`override_reason` JWT claim).
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
pub enum OverrideReason {
    Emergency,
    Safeguarding,
    UnableToConsent,
}

impl OverrideReason {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<OverrideReason> {
        name.parse().ok()
    }
}

/// The `permission_to_view` claim.
///
/// The override's reason and justification are optional here on purpose: SPEC §5 step 6 makes
/// a missing or unusable reason or justification a policy refusal (403 `ACCESS_DENIED`), not a
/// malformed request, so the API passes what it found (an unknown reason value as `None`) and
/// `decide` refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// The patient agreed at the point of care.
    Granted,
    Override {
        reason: Option<OverrideReason>,
        justification: Option<String>,
    },
}

impl Permission {
    /// The `permission_to_view` claim value.
    pub fn name(&self) -> &'static str {
        match self {
            Permission::Granted => "granted",
            Permission::Override { .. } => "override",
        }
    }
}

/// Bounds on `override_justification`, in characters, after trimming surrounding whitespace.
pub const JUSTIFICATION_CHARS: std::ops::RangeInclusive<usize> = 10..=500;

/// One partner request, as parsed and checked by the API (SPEC §5 step 2 already passed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// ODS code of `requesting_organization`.
    pub requesting_ods: String,
    /// SDS job role code of the practitioner (e.g. `R8000`).
    pub job_role: String,
    /// `None` when the claim is absent.
    pub permission: Option<Permission>,
    /// Sections asked for; empty for a Patient search (demographics only).
    pub sections: BTreeSet<Section>,
    /// The time of the decision, unix seconds.
    pub now: i64,
}

/// A patient as the replica holds them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatientData {
    /// The facts of the patient's own Patient resource: a deceased, ended or restricted
    /// patient is answered as unknown (SPEC §3).
    pub demographics: ItemFacts,
    /// Every Consent of the patient's (they may also be among `items`; they have no section
    /// and are never released).
    pub consents: Vec<ConsentFacts>,
    /// Every patient-scoped resource. `Release::released_items` indexes into this.
    pub items: Vec<ItemFacts>,
    /// Shared resources (Medication, Practitioner, ...) that `items` reference, where the
    /// replica has them. They are never released by policy, but an item that references a
    /// confidential or sensitive one is withheld (a MedicationRequest for a sensitive
    /// Medication, say). May be empty.
    pub shared: Vec<ItemFacts>,
}

impl PatientData {
    /// Builds the patient from their Patient resource's facts and their items, taking the
    /// consents from the Consent items' facts.
    pub fn from_items(
        demographics: ItemFacts,
        items: Vec<ItemFacts>,
        shared: Vec<ItemFacts>,
    ) -> PatientData {
        let consents = items.iter().filter_map(|i| i.consent.clone()).collect();
        PatientData {
            demographics,
            consents,
            items,
            shared,
        }
    }

    /// Whether the patient has a Type 1 opt-out, by Consent or by Observation (for statistical
    /// extracts; it does not affect direct care).
    pub fn type1_opt_out(&self) -> bool {
        super::type1_opt_out_in_items(&self.items)
            || self
                .consents
                .iter()
                .any(super::preferences::is_type1_opt_out)
    }
}

/// The error codes partners see (SPEC §5), GP Connect style.
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
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
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
    /// The code in the OperationOutcome (`Spine-ErrorOrWarningCode`) and the audit.
    pub fn code(self) -> &'static str {
        self.into()
    }

    pub fn from_code(code: &str) -> Option<ErrorCode> {
        code.parse().ok()
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

    /// The display text of the code, as GP Connect gives it.
    pub fn display(self) -> &'static str {
        match self {
            ErrorCode::AccessDenied => "Access denied",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::InvalidIdentifierSystem => "Invalid identifier system",
            ErrorCode::InvalidNhsNumber => "Invalid NHS number",
            ErrorCode::InvalidParameter => "Invalid parameter",
            ErrorCode::PatientNotFound => "Patient not found",
            ErrorCode::NoPatientConsent => "Patient has not provided consent to share data",
        }
    }

    /// The FHIR `OperationOutcome.issue.code` (IssueType) that goes with it.
    pub fn issue_type(self) -> &'static str {
        match self {
            ErrorCode::AccessDenied | ErrorCode::NoPatientConsent => "forbidden",
            ErrorCode::BadRequest
            | ErrorCode::InvalidIdentifierSystem
            | ErrorCode::InvalidParameter => "invalid",
            ErrorCode::InvalidNhsNumber => "value",
            ErrorCode::PatientNotFound => "not-found",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Refused(Refusal),
    Permitted(Release),
}

impl Decision {
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Decision::Refused(refusal) => Some(refusal.code),
            Decision::Permitted(_) => None,
        }
    }

    pub fn release(&self) -> Option<&Release> {
        match self {
            Decision::Refused(_) => None,
            Decision::Permitted(release) => Some(release),
        }
    }
}

/// A refusal: the code for the partner and the reason for the audit trail only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    /// Plain words for the audit and the privacy officer; never sent to the partner.
    pub reason: String,
}

/// On what grounds access was permitted (audited as the permission basis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// `permission_to_view` `granted`.
    Granted,
    /// No `permission_to_view`; a standing consent for this ODS code (upper-cased) is in force.
    StandingConsent { ods: String },
    /// No `permission_to_view` and no standing consent, from a partner whose agreement obliges
    /// it to ask the patient at the point of care (`--attested-permission`).
    Attested,
    /// A permitted override; `justification` is trimmed.
    Override {
        reason: OverrideReason,
        justification: String,
    },
}

impl Basis {
    /// The name recorded in the audit.
    pub fn name(&self) -> &'static str {
        match self {
            Basis::Granted => "granted",
            Basis::StandingConsent { .. } => "standing-consent",
            Basis::Attested => "attested",
            Basis::Override { .. } => "override",
        }
    }
}

/// What a permitted request may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub basis: Basis,
    /// requested ∩ agreement ∩ tier ∩ (override sections, for an override).
    pub released_sections: BTreeSet<Section>,
    /// Indexes into `PatientData::items`, ascending: the items in released sections that are
    /// not withheld. Items with no section (Consent, Patient, ...) are never listed.
    pub released_items: Vec<usize>,
    /// Indexes into `PatientData::shared`, ascending: the shared resources that are not
    /// withheld, which released items may bring into the response.
    pub released_shared: Vec<usize>,
    /// The List each of `PatientData::items` is filed in (`fhir::file_items`), in order.
    pub item_lists: Vec<Option<RecordList>>,
    /// Lists of released sections from which at least one item was withheld (they get the
    /// `confidential-items` warning).
    pub lists_with_withheld: BTreeSet<RecordList>,
    /// Requested sections not released at all (agreement, tier or override limits): each comes
    /// back as an empty List with the warning and `emptyReason`.
    pub withheld_sections: BTreeSet<Section>,
    /// A permitted override: the API must write an alert (SPEC §8).
    pub alert: bool,
}

impl Release {
    /// The released items themselves.
    pub fn items<'a>(&'a self, patient: &'a PatientData) -> impl Iterator<Item = &'a ItemFacts> {
        self.released_items
            .iter()
            .filter_map(|&index| patient.items.get(index))
    }

    /// Whether a List of a requested section must carry the `confidential-items` warning.
    pub fn list_has_warning(&self, list: RecordList) -> bool {
        self.lists_with_withheld.contains(&list) || self.withheld_sections.contains(&list.section())
    }
}
