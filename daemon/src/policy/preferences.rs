//! A patient's sharing preferences, read from their `Consent` facts (SPEC §6): tier or dissent,
//! specific consents to sensitive categories, standing third-party consents, Type 1 opt-out.
//!
//! Rules where SPEC §6 is silent (chosen to fail closed):
//! - Every kind counts only `status` `active` Consents. Tier/dissent also needs `scope`
//!   `patient-privacy`; specific, standing and Type 1 consents do not (SPEC names no scope).
//! - "Newest wins" compares `dateTime`; a Consent without one is older than any dated one.
//!   When the newest Consents of a kind tie, the most restrictive wins (dissent over core over
//!   core-and-additional; refusal over permit), so input order never matters.
//! - A Consent carrying several tier codes counts as its most restrictive one.
//! - Specific consent, per category: the newest active Consent whose `provision.securityLabel`
//!   holds the refset id (system SNOMED) decides; it consents if its `provision.type` is
//!   `permit`, so a newer `deny` withdraws an older permit.
//! - Standing consent, per ODS code: the newest active Consent with category SNOMED
//!   319951000000105 naming that code as actor decides; it stands if it is a permit and its
//!   `provision.period` covers `now`. A period needs at least one bound (SPEC requires a
//!   period); a missing bound is open. Bounds are inclusive instants; note that a date-only
//!   `end` is read by `fhir` as the first moment of that day. ODS codes compare ignoring ASCII
//!   case.
//! - Type 1 opt-out: any active Consent with category SNOMED 827241000000103, or an Observation
//!   coded with it (see [`type1_opt_out_in_items`]); it never affects direct care.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::SensitiveCategory;
use crate::fhir::{ConsentFacts, ItemFacts, SHARING_PREFERENCE_SYSTEM, SNOMED};

/// Category of a standing consent for a named third party.
pub const STANDING_CONSENT_CATEGORY: &str = "319951000000105";
/// Type 1 opt-out (dissent from secondary use of GP patient identifiable data).
pub const TYPE1_OPT_OUT_CODE: &str = "827241000000103";
/// GP code accepted as `dissent`: refused consent for upload to local shared electronic record.
pub const SNOMED_DISSENT_SYNONYM: &str = "416409005";
/// GP code accepted as `core`: consent given for upload to local shared electronic record.
pub const SNOMED_CORE_SYNONYM: &str = "417528008";

/// The patient's sharing tier. Ordered from most to least restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SharingPreference {
    Dissent,
    Core,
    CoreAndAdditional,
}

impl SharingPreference {
    pub fn name(self) -> &'static str {
        match self {
            SharingPreference::Dissent => "dissent",
            SharingPreference::Core => "core",
            SharingPreference::CoreAndAdditional => "core-and-additional",
        }
    }

    pub fn from_name(name: &str) -> Option<SharingPreference> {
        [
            SharingPreference::Dissent,
            SharingPreference::Core,
            SharingPreference::CoreAndAdditional,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// A standing consent in force for one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandingConsent {
    /// The organisation's ODS code, as recorded in the Consent.
    pub ods: String,
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// What a patient has said about sharing, as of one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    pub sharing: SharingPreference,
    /// False when no tier/dissent Consent counted and `sharing` is the default (`core`).
    pub sharing_recorded: bool,
    /// Sensitive categories the patient consents to share.
    pub specific_consents: BTreeSet<SensitiveCategory>,
    /// Standing third-party consents in force at the moment asked about.
    pub standing_consents: Vec<StandingConsent>,
    /// The patient has a Type 1 opt-out Consent (see also [`type1_opt_out_in_items`]).
    pub type1_opt_out: bool,
}

impl Preferences {
    /// The standing consent in force for any of these ODS codes, if there is one.
    pub fn standing_consent_for<'a>(&'a self, ods_codes: &[&str]) -> Option<&'a StandingConsent> {
        self.standing_consents.iter().find(|consent| {
            ods_codes
                .iter()
                .any(|ods| consent.ods.eq_ignore_ascii_case(ods))
        })
    }
}

/// Reads a patient's preferences as of `now` (unix seconds).
pub fn preferences(consents: &[ConsentFacts], now: i64) -> Preferences {
    let (sharing, sharing_recorded) = match newest(
        consents
            .iter()
            .filter(|c| c.active && c.patient_privacy)
            .filter_map(|c| tier_of(c).map(|tier| (c.date_time, tier))),
    ) {
        Some(tier) => (tier, true),
        None => (SharingPreference::Core, false),
    };

    let specific_consents = SensitiveCategory::ALL
        .into_iter()
        .filter(|category| {
            // `false` (refusal) sorts before `true`, so a tie counts as refusal.
            newest(
                consents
                    .iter()
                    .filter(|c| c.active)
                    .filter(|c| {
                        c.security_labels
                            .iter()
                            .any(|l| l.is(SNOMED, category.refset_id()))
                    })
                    .map(|c| (c.date_time, c.permit)),
            )
            .unwrap_or(false)
        })
        .collect();

    // Newest standing consent per ODS code (upper-cased key); a tie keeps the refusal or the
    // one that does not cover `now`.
    let mut by_ods: BTreeMap<String, (Option<i64>, bool, &ConsentFacts)> = BTreeMap::new();
    for consent in consents.iter().filter(|c| {
        c.active
            && c.categories
                .iter()
                .any(|k| k.is(SNOMED, STANDING_CONSENT_CATEGORY))
    }) {
        let stands = consent.permit && period_covers(consent, now);
        for ods in &consent.actor_ods_codes {
            let key = ods.to_ascii_uppercase();
            let candidate = (consent.date_time, stands, consent);
            match by_ods.get(&key) {
                Some((date, old_stands, _))
                    if (*date, !*old_stands) >= (consent.date_time, !stands) => {}
                _ => {
                    by_ods.insert(key, candidate);
                }
            }
        }
    }
    let standing_consents = by_ods
        .into_iter()
        .filter(|(_, (_, stands, _))| *stands)
        .map(|(ods, (_, _, consent))| StandingConsent {
            ods,
            start: consent.period_start,
            end: consent.period_end,
        })
        .collect();

    let type1_opt_out = consents.iter().any(is_type1_opt_out);

    Preferences {
        sharing,
        sharing_recorded,
        specific_consents,
        standing_consents,
        type1_opt_out,
    }
}

/// Whether a Consent records a Type 1 opt-out.
pub(super) fn is_type1_opt_out(consent: &ConsentFacts) -> bool {
    consent.active
        && consent
            .categories
            .iter()
            .any(|k| k.is(SNOMED, TYPE1_OPT_OUT_CODE))
}

/// Whether any Observation among a patient's items records a Type 1 opt-out (one marked
/// `entered-in-error` does not count).
pub fn type1_opt_out_in_items(items: &[ItemFacts]) -> bool {
    items.iter().any(|item| {
        item.resource_type == "Observation"
            && item.status.as_deref() != Some("entered-in-error")
            && item.codes.iter().any(|c| c.is(SNOMED, TYPE1_OPT_OUT_CODE))
    })
}

/// The tier a Consent records, if it records one (its most restrictive if several).
fn tier_of(consent: &ConsentFacts) -> Option<SharingPreference> {
    consent
        .categories
        .iter()
        .filter_map(|coding| {
            if coding.system == SHARING_PREFERENCE_SYSTEM {
                SharingPreference::from_name(&coding.code)
            } else if coding.is(SNOMED, SNOMED_DISSENT_SYNONYM) {
                Some(SharingPreference::Dissent)
            } else if coding.is(SNOMED, SNOMED_CORE_SYNONYM) {
                Some(SharingPreference::Core)
            } else {
                None
            }
        })
        .min()
}

/// The value of the newest entry; among equally new entries, the least (most restrictive).
fn newest<T: Ord + Copy>(entries: impl Iterator<Item = (Option<i64>, T)>) -> Option<T> {
    let mut best: Option<(Option<i64>, T)> = None;
    for (date, value) in entries {
        best = match best {
            Some((best_date, best_value))
                if best_date > date || (best_date == date && best_value <= value) =>
            {
                Some((best_date, best_value))
            }
            _ => Some((date, value)),
        };
    }
    best.map(|(_, value)| value)
}

fn period_covers(consent: &ConsentFacts, now: i64) -> bool {
    if consent.period_start.is_none() && consent.period_end.is_none() {
        return false;
    }
    consent.period_start.is_none_or(|start| start <= now)
        && consent.period_end.is_none_or(|end| now <= end)
}
