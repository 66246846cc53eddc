//! The sections of a structured record (SPEC §4): their names, parameters, List codes and
//! tiers, and the List each of a patient's items is filed in.

use serde::{Deserialize, Serialize};

use super::{Coding, ItemFacts};

/// A patient's sharing tier, and the tier each section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Core,
    Additional,
}

/// One section of the structured record.
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
pub enum Section {
    Allergies,
    Medications,
    Problems,
    Immunisations,
    Consultations,
    Investigations,
    UncategorisedData,
    Referrals,
    Procedures,
    EndOfLife,
    CommunicationPreferences,
    RisksAndWarnings,
}

/// The code system of the List codes MIG defines for sections GP Connect has none for.
pub const MIG_LIST_CODE_SYSTEM: &str = "urn:mig:list-code";

impl Section {
    /// In SPEC §4 order, which is also the order of the Lists in a Bundle.
    pub const ALL: [Section; 12] = [
        Section::Allergies,
        Section::Medications,
        Section::Problems,
        Section::Immunisations,
        Section::Consultations,
        Section::Investigations,
        Section::UncategorisedData,
        Section::Referrals,
        Section::Procedures,
        Section::EndOfLife,
        Section::CommunicationPreferences,
        Section::RisksAndWarnings,
    ];

    /// The name used in config, the CLI and the audit trail.
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<Section> {
        name.parse().ok()
    }

    pub fn tier(self) -> Tier {
        match self {
            Section::Allergies | Section::Medications => Tier::Core,
            _ => Tier::Additional,
        }
    }

    /// The `$gpc.getstructuredrecord` parameter that asks for this section.
    pub fn parameter_name(self) -> &'static str {
        match self {
            Section::Allergies => "includeAllergies",
            Section::Medications => "includeMedication",
            Section::Problems => "includeProblems",
            Section::Immunisations => "includeImmunisations",
            Section::Consultations => "includeConsultations",
            Section::Investigations => "includeInvestigations",
            Section::UncategorisedData => "includeUncategorisedData",
            Section::Referrals => "includeReferrals",
            Section::Procedures => "includeProcedures",
            Section::EndOfLife => "includeEndOfLife",
            Section::CommunicationPreferences => "includeCommunicationPreferences",
            Section::RisksAndWarnings => "includeRisksAndWarnings",
        }
    }

    pub fn from_parameter_name(name: &str) -> Option<Section> {
        Section::ALL
            .into_iter()
            .find(|s| s.parameter_name() == name)
    }

    /// The List code: (system, code, display); the display is also the List's title, as the
    /// GP Connect provider assurance suite expects.
    pub fn list_code(self) -> (&'static str, &'static str, &'static str) {
        const SCT: &str = super::SNOMED;
        match self {
            Section::Allergies => (SCT, "886921000000105", "Allergies and adverse reactions"),
            Section::Medications => (SCT, "933361000000108", "Medications and medical devices"),
            Section::Problems => (SCT, "717711000000103", "Problems"),
            Section::Immunisations => (SCT, "1102181000000102", "Immunisations"),
            Section::Consultations => (SCT, "1149501000000101", "List of consultations"),
            Section::Investigations => (SCT, "887191000000108", "Investigations and results"),
            Section::UncategorisedData => (SCT, "826501000000100", "Uncategorised data"),
            Section::Referrals => (SCT, "792931000000107", "Outbound referral"),
            Section::Procedures => (MIG_LIST_CODE_SYSTEM, "procedures", "Procedures"),
            Section::EndOfLife => (
                MIG_LIST_CODE_SYSTEM,
                "end-of-life",
                "Anticipatory and end-of-life care",
            ),
            Section::CommunicationPreferences => (
                MIG_LIST_CODE_SYSTEM,
                "communication-preferences",
                "Communication preferences",
            ),
            Section::RisksAndWarnings => (
                MIG_LIST_CODE_SYSTEM,
                "risks-and-warnings",
                "Risks and warnings",
            ),
        }
    }
}

/// One List of the structured record: each section's own, and "Ended allergies", the second
/// List of the allergies section (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordList {
    Section(Section),
    /// Resolved or inactive allergies; only sent when `includeResolvedAllergies` is true.
    EndedAllergies,
}

impl RecordList {
    /// The section whose release decides this List's.
    pub fn section(self) -> Section {
        match self {
            RecordList::Section(section) => section,
            RecordList::EndedAllergies => Section::Allergies,
        }
    }

    /// The List code: (system, code, display); the display is also the List's title.
    pub fn code(self) -> (&'static str, &'static str, &'static str) {
        match self {
            RecordList::Section(section) => section.list_code(),
            RecordList::EndedAllergies => (super::SNOMED, "1103671000000101", "Ended allergies"),
        }
    }
}

/// The CodeSystem R4 Observations are categorised in, and its STU3 address, taken as a synonym.
const OBSERVATION_CATEGORY_SYSTEMS: [&str; 2] = [
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://hl7.org/fhir/observation-category",
];

/// The concept ids of a shipped list (`policy/data/sections/`): the first word of each line
/// that is not blank or a comment. The lists are checked in the tests (valid SNOMED CT concept
/// ids, the same format as the sensitive lists), so reading them cannot fail at run time.
fn concept_set(text: &'static str) -> rustc_hash::FxHashSet<&'static str> {
    text.lines()
        .filter_map(|line| line.split('#').next()?.split_whitespace().next())
        .collect()
}

static END_OF_LIFE: std::sync::LazyLock<rustc_hash::FxHashSet<&'static str>> =
    std::sync::LazyLock::new(|| concept_set(END_OF_LIFE_LIST));
static COMMUNICATION: std::sync::LazyLock<rustc_hash::FxHashSet<&'static str>> =
    std::sync::LazyLock::new(|| concept_set(COMMUNICATION_LIST));

/// CarePlans whose category or code is one of these are end-of-life care; others are not served.
pub const END_OF_LIFE_LIST: &str = include_str!("../../data/sections/end-of-life.txt");
/// Flags whose category or code is one of these are communication preferences; others are risks
/// and warnings.
pub const COMMUNICATION_LIST: &str = include_str!("../../data/sections/communication-flags.txt");

fn any_in(codes: &[Coding], list: &rustc_hash::FxHashSet<&'static str>) -> bool {
    codes
        .iter()
        .any(|c| c.system == super::SNOMED && list.contains(c.code.as_str()))
}

/// The List each of a patient's items is filed in (SPEC §4), one per item in order; `None` for
/// what no List holds (Consent, a CarePlan that is not end-of-life care).
///
/// An Observation is an investigation result when a DiagnosticReport of the patient's holds it
/// (its `result`: a DiagnosticReport references Observations nowhere else) or its category is
/// `laboratory` or `imaging`; every other Observation is uncategorised data.
pub fn file_items(items: &[ItemFacts]) -> Vec<Option<RecordList>> {
    let held: rustc_hash::FxHashSet<&str> = items
        .iter()
        .filter(|i| i.resource_type == "DiagnosticReport")
        .flat_map(|report| report.references.iter())
        .filter_map(|r| r.strip_prefix("Observation/"))
        .collect();
    items
        .iter()
        .map(|item| file_item(item, held.contains(item.id.as_str())))
        .collect()
}

/// The List of one item; `held_by_report`: a DiagnosticReport holds it (Observations only).
pub fn file_item(item: &ItemFacts, held_by_report: bool) -> Option<RecordList> {
    let section = match item.resource_type.as_str() {
        "AllergyIntolerance" => {
            return Some(match item.status.as_deref() {
                Some("resolved" | "inactive") => RecordList::EndedAllergies,
                _ => RecordList::Section(Section::Allergies),
            })
        }
        "MedicationStatement" | "MedicationRequest" => Section::Medications,
        "Condition" => Section::Problems,
        "Immunization" => Section::Immunisations,
        "Encounter" => Section::Consultations,
        "DiagnosticReport" => Section::Investigations,
        "Observation" => {
            let result = item.category_codes.iter().any(|c| {
                OBSERVATION_CATEGORY_SYSTEMS.contains(&c.system.as_str())
                    && matches!(c.code.as_str(), "laboratory" | "imaging")
            });
            if held_by_report || result {
                Section::Investigations
            } else {
                Section::UncategorisedData
            }
        }
        "ServiceRequest" => Section::Referrals,
        "Procedure" => Section::Procedures,
        "CarePlan" if any_in(&item.category_codes, &END_OF_LIFE) => Section::EndOfLife,
        "Flag" if any_in(&item.category_codes, &COMMUNICATION) => Section::CommunicationPreferences,
        "Flag" => Section::RisksAndWarnings,
        _ => return None,
    };
    Some(RecordList::Section(section))
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::fhir::{extract_facts, SNOMED};
    use serde_json::{json, Value};

    #[test]
    fn names_and_parameters_round_trip() {
        for section in Section::ALL {
            assert_eq!(Section::from_name(section.name()), Some(section));
            assert_eq!(
                Section::from_parameter_name(section.parameter_name()),
                Some(section)
            );
        }
        assert_eq!(
            Section::from_name("uncategorised-data"),
            Some(Section::UncategorisedData)
        );
        assert_eq!(
            Section::from_parameter_name("includeRisksAndWarnings"),
            Some(Section::RisksAndWarnings)
        );
    }

    #[test]
    fn only_allergies_and_medications_are_core() {
        let core: Vec<_> = Section::ALL
            .into_iter()
            .filter(|s| s.tier() == Tier::Core)
            .collect();
        assert_eq!(core, [Section::Allergies, Section::Medications]);
    }

    #[test]
    fn all_is_in_spec_order() {
        assert!(Section::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn shipped_lists_hold_valid_concept_ids_and_read_the_same_as_the_policy_parser() {
        for (name, text) in [
            ("end-of-life.txt", END_OF_LIFE_LIST),
            ("communication-flags.txt", COMMUNICATION_LIST),
        ] {
            let checked = crate::parse_concept_list(name, text).unwrap();
            let read: std::collections::BTreeSet<String> =
                concept_set(text).into_iter().map(str::to_owned).collect();
            assert_eq!(read, checked, "{name}");
            assert!(checked.len() >= 3, "{name}");
        }
        assert!(END_OF_LIFE.contains("736373009"));
    }

    fn concept(system: &str, code: &str) -> Value {
        json!({"coding": [{"system": system, "code": code}]})
    }

    fn filed(mut resource: Value) -> Option<RecordList> {
        resource["id"] = json!("x");
        resource["subject"] = json!({"reference": "Patient/p"});
        file_item(&extract_facts(&resource).unwrap(), false)
    }

    const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

    #[test]
    fn observations_are_results_only_with_a_laboratory_or_imaging_category() {
        let observation = |category: Value| {
            filed(
                json!({"resourceType": "Observation", "category": [category],
                "code": concept(SNOMED, "1331000000103")}),
            )
        };
        let results = RecordList::Section(Section::Investigations);
        let other = RecordList::Section(Section::UncategorisedData);
        assert_eq!(observation(concept(CATEGORY, "laboratory")), Some(results));
        assert_eq!(observation(concept(CATEGORY, "imaging")), Some(results));
        assert_eq!(
            observation(concept(
                "http://hl7.org/fhir/observation-category",
                "laboratory"
            )),
            Some(results),
            "the STU3 system is a synonym"
        );
        for category in ["vital-signs", "social-history", "survey", "exam"] {
            assert_eq!(observation(concept(CATEGORY, category)), Some(other));
        }
        assert_eq!(observation(concept(SNOMED, "laboratory")), Some(other));
        // A fit note, uncategorised, even with `laboratory` coded somewhere else in it.
        assert_eq!(
            filed(json!({"resourceType": "Observation",
                "code": concept(SNOMED, "1331000000103"),
                "valueCodeableConcept": concept(CATEGORY, "laboratory")})),
            Some(other)
        );
    }

    #[test]
    fn observations_a_diagnostic_report_holds_are_results() {
        let stored = |v: Value| extract_facts(&v).unwrap();
        let items = [
            stored(json!({"resourceType": "DiagnosticReport", "id": "fbc",
                "subject": {"reference": "Patient/p"}, "result": [{"reference": "Observation/hb"}]})),
            stored(
                json!({"resourceType": "Observation", "id": "hb", "subject": {"reference": "Patient/p"}}),
            ),
            stored(
                json!({"resourceType": "Observation", "id": "bp", "subject": {"reference": "Patient/p"}}),
            ),
        ];
        assert_eq!(
            file_items(&items),
            [
                Some(RecordList::Section(Section::Investigations)),
                Some(RecordList::Section(Section::Investigations)),
                Some(RecordList::Section(Section::UncategorisedData)),
            ]
        );
    }

    #[test]
    fn flags_are_communication_preferences_only_by_the_list() {
        let comm = RecordList::Section(Section::CommunicationPreferences);
        let risk = RecordList::Section(Section::RisksAndWarnings);
        let bsl = concept(SNOMED, "204331000000107");
        assert_eq!(
            filed(json!({"resourceType": "Flag", "code": bsl})),
            Some(comm)
        );
        assert_eq!(
            filed(json!({"resourceType": "Flag", "category": [bsl], "code": {"text": "BSL"}})),
            Some(comm)
        );
        // Risk to staff; and a list code in another system is not the SNOMED concept.
        assert_eq!(
            filed(json!({"resourceType": "Flag", "code": concept(SNOMED, "15220000")})),
            Some(risk)
        );
        assert_eq!(
            filed(
                json!({"resourceType": "Flag", "code": concept("http://read.info/ctv3", "204331000000107")})
            ),
            Some(risk)
        );
        assert_eq!(filed(json!({"resourceType": "Flag"})), Some(risk));
    }

    #[test]
    fn care_plans_are_served_only_as_end_of_life_care() {
        assert_eq!(
            filed(json!({"resourceType": "CarePlan", "category": [concept(SNOMED, "736373009")]})),
            Some(RecordList::Section(Section::EndOfLife))
        );
        assert_eq!(
            filed(json!({"resourceType": "CarePlan", "category": [concept(SNOMED, "734163000")]})),
            None
        );
        // An end-of-life code in an activity is not the plan's category.
        assert_eq!(
            filed(
                json!({"resourceType": "CarePlan", "category": [concept(SNOMED, "734163000")],
                "activity": [{"detail": {"code": concept(SNOMED, "736373009")}}]})
            ),
            None
        );
    }

    #[test]
    fn ended_allergies_have_their_own_list() {
        let allergy = |status: &str| {
            let mut value = json!({"resourceType": "AllergyIntolerance", "id": "a",
                "patient": {"reference": "Patient/p"},
                "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", status)});
            file_item(&extract_facts(&value.take()).unwrap(), false)
        };
        assert_eq!(
            allergy("active"),
            Some(RecordList::Section(Section::Allergies))
        );
        assert_eq!(allergy("resolved"), Some(RecordList::EndedAllergies));
        assert_eq!(allergy("inactive"), Some(RecordList::EndedAllergies));
        assert_eq!(RecordList::EndedAllergies.section(), Section::Allergies);
        assert_eq!(
            RecordList::EndedAllergies.code(),
            (SNOMED, "1103671000000101", "Ended allergies")
        );
    }

    #[test]
    fn other_resources_are_in_no_list() {
        for resource_type in ["Consent", "Patient", "Medication", "Practitioner"] {
            let facts = ItemFacts {
                resource_type: resource_type.into(),
                ..ItemFacts::default()
            };
            assert_eq!(file_item(&facts, false), None, "{resource_type}");
        }
    }
}
