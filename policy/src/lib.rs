//! `mig-policy`: who may see what. The access decision (SPEC §5), item filtering (SPEC §6), and
//! the FHIR vocabulary they are stated in (`fhir`: facts read from items at ingest, sections,
//! NHS numbers, the served Patient projection) with the strict JSON parser (`json`) that reads
//! every input. The crate has no I/O, async or storage dependencies, so its purity is enforced by
//! its Cargo.toml, not only by this comment.
//!
//! The access decision (SPEC §5) and item filtering (SPEC §6). Pure: no I/O, no clock, no async,
//! no logging; the current time is an argument, so every rule can be tested exhaustively.
//!
//! Validates: the partner's agreement, organisation, role, the patient's preferences and
//! permission, and which sections and items may leave. Does not validate: certificates,
//! headers, the JWT, NHS numbers or Parameters (the TLS and API layers do, before `decide`).
//!
//! Rules chosen where SPEC is silent (kept in docs/ as well):
//! - `Agreement::expires` is the last day in force (UTC); it lapses at the next midnight UTC.
//! - ODS codes compare ignoring ASCII case.
//! - Refusal order: no agreement, agreement expired, organisation, role (all ACCESS_DENIED),
//!   patient unknown (PATIENT_NOT_FOUND), dissent (NO_PATIENT_CONSENT), permission.
//! - Override checks, each ACCESS_DENIED: the role may override; a reason is given (the API
//!   passes an absent or unknown `override_reason` as `None`); the justification, trimmed, is
//!   10 to 500 characters (Unicode scalar values). The audited justification is the trimmed one.
//! - With no `permission_to_view`, a standing consent counts if its actor is the partner's ODS
//!   code (covering all its sites) or the requesting organisation (a site named on its own).
//! - The patient's tier applies under an override too (SPEC §5 step 7 intersects both).
//! - Withholding (step 8) is computed over all of the patient's items and the shared resources
//!   they reference, then spread to every referrer, transitively.
//! - Sensitive concept lists match codings in system `http://snomed.info/sct` only, by exact
//!   concept id (no subsumption: the lists must hold every concept meant).
//! - A Patient search asks with no sections: the decision is the same, only nothing is listed
//!   (the API turns PATIENT_NOT_FOUND into an empty searchset there, as SPEC §3 says).
//! - Confidentiality labels (`is_practice_confidential`): in the v3 Confidentiality system (its
//!   current address, the older `http://hl7.org/fhir/v3/Confidentiality`, or its OID) only `U`,
//!   `L`, `M`, `N` release; any other code withholds. A label in any other system whose address
//!   contains `confidentiality` (any case) withholds. Labels and codes of `contained` resources
//!   count as the item's own (the facts are read over the whole item at ingest).
//! - A deceased patient, one whose registration has ended, or one whose Patient resource is
//!   practice-confidential is refused PATIENT_NOT_FOUND at step 4, as an unknown patient.
//! - An item's section is that of the List `fhir::file_items` files it in (by type, and for
//!   Observations, Flags and CarePlans by code); an item in no List (a CarePlan that is not
//!   end-of-life care) is never released and marks no List. The warning is per List: a
//!   withheld ended allergy marks the Ended allergies List only.
//! - `decide` withholds referrers of *withheld* items only (SPEC §5 step 8). A released item may
//!   still reference an item that is merely outside the released sections (a MedicationRequest
//!   whose Condition is in an unrequested or tier-denied section): the API must not emit such
//!   references (SPEC §4: no dangling references).
//!
//! Preference rules (newest wins, ties, periods, Type 1) are in `preferences.rs`'s header.
#![forbid(unsafe_code)]

pub mod fhir;
pub mod json;

mod agreement;
mod decide;
mod preferences;
mod request;
mod sensitive;

#[cfg(test)]
mod tests;

pub use agreement::{Agreement, PartnerType, RoleSet, UNKNOWN_JOB_ROLE};
pub use decide::{decide, is_practice_confidential, patient_unavailable, withheld_items};
pub use preferences::{
    check_consent, preferences, type1_opt_out_in_items, Preferences, SharingPreference,
    StandingConsent, SNOMED_CORE_SYNONYM, SNOMED_DISSENT_SYNONYM, STANDING_CONSENT_CATEGORY,
    TYPE1_OPT_OUT_CODE,
};
pub use request::{
    AccessRequest, Basis, Decision, ErrorCode, OverrideReason, PatientData, Permission, Refusal,
    Release, JUSTIFICATION_CHARS,
};
pub use sensitive::{check_concept_id, parse_concept_list, SensitiveCategory, SensitiveCodes};

/// Errors loading sensitive-category concept lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line of a concept list file is not a SNOMED CT concept id.
    #[error("{file} line {line}: {reason}: {text:?}")]
    ConceptListLine {
        /// The file (or "shipped NAME.txt").
        file: String,
        /// Counted from 1.
        line: usize,
        /// The line, cut to 80 characters.
        text: String,
        reason: &'static str,
    },
    /// An extra concept id from config is not a SNOMED CT concept id.
    #[error("extra {category} concept {code:?}: {reason}")]
    ConceptId {
        category: &'static str,
        code: String,
        reason: &'static str,
    },
}
