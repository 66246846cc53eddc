//! A patient's sharing preferences, read from their `Consent` facts (SPEC §6): tier or dissent,
//! specific consents to sensitive categories, standing third-party consents, Type 1 opt-out.
//!
//! Ingest refuses a Consent that cannot be read one way only ([`check_consent`]); what is stored
//! is read as follows, failing closed:
//! - Every kind counts only `status` `active` Consents. Tier/dissent also needs `scope`
//!   `patient-privacy`; specific, standing and Type 1 consents do not (SPEC names no scope).
//! - Within each kind the newest `dateTime` wins, among Consents dated no later than `now`: one
//!   dated in the future is not yet in force. An undated Consent cannot be ordered, so it counts
//!   as tied with the newest. On a tie the most restrictive wins (dissent over core over
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
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum SharingPreference {
    Dissent,
    Core,
    CoreAndAdditional,
}

impl SharingPreference {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<SharingPreference> {
        name.parse().ok()
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

/// Checks at ingest that a `Consent` can be read one way only (SPEC §6), given its
/// `provision.type`. Refused: a code in the sharing-preference system that is not one of its
/// three (exact case); a tier or dissent Consent (either system) whose scope is not
/// `patient-privacy` or that has no `dateTime`; a `core` or `core-and-additional` Consent whose
/// `provision.type` is `deny` (a dissent may say `deny`: that is what it means).
pub fn check_consent(consent: &ConsentFacts, provision_type: Option<&str>) -> Result<(), String> {
    let unlisted = consent.categories.iter().find(|coding| {
        coding.system == SHARING_PREFERENCE_SYSTEM
            && SharingPreference::from_name(&coding.code).is_none()
    });
    if let Some(coding) = unlisted {
        return Err(format!(
            "category code {:?} in {SHARING_PREFERENCE_SYSTEM} is not dissent, core or core-and-additional",
            coding.code
        ));
    }
    let Some(tier) = tier_of(consent) else {
        return Ok(());
    };
    if !consent.patient_privacy {
        return Err("a sharing-preference Consent needs scope patient-privacy".into());
    }
    if consent.date_time.is_none() {
        return Err("a sharing-preference Consent needs a dateTime".into());
    }
    if tier != SharingPreference::Dissent && provision_type == Some("deny") {
        return Err(format!(
            "a {} Consent with provision.type deny is ambiguous",
            tier.name()
        ));
    }
    Ok(())
}

/// Reads a patient's preferences as of `now` (unix seconds).
pub fn preferences(consents: &[ConsentFacts], now: i64) -> Preferences {
    let tiers = newest_in_force(
        consents
            .iter()
            .filter(|c| c.active && c.patient_privacy)
            .filter_map(|c| tier_of(c).map(|tier| (c.date_time, tier))),
        now,
    );
    let (sharing, sharing_recorded) = match tiers.into_iter().min() {
        Some(tier) => (tier, true),
        None => (SharingPreference::Core, false),
    };

    let specific_consents = SensitiveCategory::ALL
        .into_iter()
        .filter(|category| {
            // `false` (refusal) sorts before `true`, so a tie counts as refusal.
            newest_in_force(
                consents
                    .iter()
                    .filter(|c| c.active)
                    .filter(|c| {
                        c.security_labels
                            .iter()
                            .any(|l| l.is(SNOMED, category.refset_id()))
                    })
                    .map(|c| (c.date_time, c.permit)),
                now,
            )
            .into_iter()
            .min()
            .unwrap_or(false)
        })
        .collect();

    // Per ODS code (upper-cased), the newest standing consents; a tie keeps the one that does
    // not stand.
    type Dated<'c> = (Option<i64>, (bool, &'c ConsentFacts));
    let mut by_ods: BTreeMap<String, Vec<Dated<'_>>> = BTreeMap::new();
    for consent in consents.iter().filter(|c| {
        c.active
            && c.categories
                .iter()
                .any(|k| k.is(SNOMED, STANDING_CONSENT_CATEGORY))
    }) {
        let stands = consent.permit && period_covers(consent, now);
        for ods in &consent.actor_ods_codes {
            by_ods
                .entry(ods.to_ascii_uppercase())
                .or_default()
                .push((consent.date_time, (stands, consent)));
        }
    }
    let standing_consents = by_ods
        .into_iter()
        .filter_map(|(ods, candidates)| {
            let (stands, consent) = newest_in_force(candidates, now)
                .into_iter()
                .min_by_key(|(stands, c)| (*stands, c.period_end, c.period_start))?;
            stands.then_some(StandingConsent {
                ods,
                start: consent.period_start,
                end: consent.period_end,
            })
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

/// The values of the newest entries in force at `now`: those dated no later than `now` with
/// the greatest date, and the undated ones (which cannot be ordered, so tie with the newest).
fn newest_in_force<T>(entries: impl IntoIterator<Item = (Option<i64>, T)>, now: i64) -> Vec<T> {
    let in_force: Vec<(Option<i64>, T)> = entries
        .into_iter()
        .filter(|(date, _)| date.is_none_or(|date| date <= now))
        .collect();
    let newest = in_force.iter().filter_map(|(date, _)| *date).max();
    in_force
        .into_iter()
        .filter(|(date, _)| date.is_none() || *date == newest)
        .map(|(_, value)| value)
        .collect()
}

fn period_covers(consent: &ConsentFacts, now: i64) -> bool {
    if consent.period_start.is_none() && consent.period_end.is_none() {
        return false;
    }
    consent.period_start.is_none_or(|start| start <= now)
        && consent.period_end.is_none_or(|end| now <= end)
}
