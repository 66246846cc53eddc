//! The synthetic practice: determinism, validity of every line, realism of the distribution,
//! and coverage of every section, preference kind and sensitive category.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use mig_policy::fhir::{
    extract_facts, file_items, is_valid_nhs_number, ItemFacts, PatientRef, RecordList, Section,
    CONFIDENTIALITY_SYSTEM, SHARING_PREFERENCE_SYSTEM, SNOMED,
};
use mig_synthetic::{demo_patients, vocab, write_practice, DemoKind, Practice, SharingPreference};
use serde_json::Value;

fn read_dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_seed_writes_identical_bytes_and_another_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let summary_a = write_practice(a.path(), 60, 11).unwrap();
    let summary_b = write_practice(b.path(), 60, 11).unwrap();
    write_practice(c.path(), 60, 12).unwrap();
    assert_eq!(summary_a.resources, summary_b.resources);
    assert_eq!(summary_a.files, summary_b.files);
    let (bytes_a, bytes_b, bytes_c) = (
        read_dir_bytes(a.path()),
        read_dir_bytes(b.path()),
        read_dir_bytes(c.path()),
    );
    assert_eq!(bytes_a, bytes_b);
    assert_ne!(bytes_a.get("Patient.ndjson"), bytes_c.get("Patient.ndjson"));
    assert_ne!(
        bytes_a.get("Observation.ndjson"),
        bytes_c.get("Observation.ndjson")
    );
}

#[test]
fn one_patient_built_alone_matches_its_lines_in_the_files() {
    let dir = tempfile::tempdir().unwrap();
    write_practice(dir.path(), 30, 8).unwrap();
    let alone: BTreeSet<String> = Practice::new(8)
        .patient(21)
        .unwrap()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let mut from_files = BTreeSet::new();
    for (_, bytes) in read_dir_bytes(dir.path()) {
        for line in String::from_utf8(bytes).unwrap().lines() {
            if line.contains("\"Patient/p21\"") || line.contains("\"id\":\"p21\"") {
                from_files.insert(line.to_owned());
            }
        }
    }
    assert_eq!(alone, from_files);
}

#[test]
fn writing_again_replaces_the_old_files() {
    let dir = tempfile::tempdir().unwrap();
    write_practice(dir.path(), 40, 3).unwrap();
    let summary = write_practice(dir.path(), 5, 3).unwrap();
    let patients = std::fs::read_to_string(dir.path().join("Patient.ndjson")).unwrap();
    assert_eq!(patients.lines().count(), 5);
    assert_eq!(summary.files["Patient.ndjson"], 5);
}

/// Reads every line of a written practice through `extract_facts`, checking file/type
/// agreement, id uniqueness and that every literal reference resolves.
fn read_practice(dir: &Path) -> Vec<(Value, ItemFacts)> {
    let mut all = Vec::new();
    for (name, bytes) in read_dir_bytes(dir) {
        let text = String::from_utf8(bytes).unwrap();
        for (number, line) in text.lines().enumerate() {
            let resource: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name} line {}: {e}", number + 1));
            let facts = extract_facts(&resource)
                .unwrap_or_else(|e| panic!("{name} line {}: {e}: {line}", number + 1));
            assert_eq!(format!("{}.ndjson", facts.resource_type), name);
            all.push((resource, facts));
        }
    }
    let mut ids = BTreeSet::new();
    for (_, facts) in &all {
        assert!(
            ids.insert(facts.reference()),
            "duplicate {}",
            facts.reference()
        );
    }
    for (_, facts) in &all {
        for reference in &facts.references {
            assert!(
                ids.contains(reference),
                "{} cites missing {reference}",
                facts.reference()
            );
        }
        if let Some(PatientRef::Id(patient)) = &facts.patient {
            assert!(ids.contains(&format!("Patient/{patient}")));
        }
    }
    all
}

fn patient_of(facts: &ItemFacts) -> String {
    match &facts.patient {
        Some(PatientRef::Id(id)) => id.clone(),
        _ if facts.resource_type == "Patient" => facts.id.clone(),
        other => panic!("{} has patient {other:?}", facts.reference()),
    }
}

#[test]
fn a_practice_of_500_is_valid_realistic_and_covers_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let summary = write_practice(dir.path(), 500, 2026).unwrap();
    let all = read_practice(dir.path());
    assert_eq!(all.len() as u64, summary.resources);

    // NHS numbers: valid, test range, unique.
    let numbers: Vec<&String> = all
        .iter()
        .filter_map(|(_, f)| f.nhs_number.as_ref())
        .collect();
    assert_eq!(numbers.len(), 500);
    assert!(numbers
        .iter()
        .all(|n| n.starts_with("999") && is_valid_nhs_number(n)));
    assert_eq!(numbers.iter().collect::<BTreeSet<_>>().len(), 500);

    // Size distribution: mean 120-180 with a long tail.
    let mut per_patient: BTreeMap<String, usize> = BTreeMap::new();
    for (_, facts) in all
        .iter()
        .filter(|(_, f)| f.patient.is_some() || f.resource_type == "Patient")
    {
        *per_patient.entry(patient_of(facts)).or_default() += 1;
    }
    let sizes: Vec<usize> = per_patient.values().copied().collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let small = sizes.iter().filter(|&&n| n <= 80).count();
    let large = sizes.iter().filter(|&&n| n >= 500).count();
    println!(
        "mean {mean:.1}, <=80: {small}, >=500: {large}, max {:?}",
        sizes.iter().max()
    );
    assert!((120.0..=180.0).contains(&mean), "mean {mean}");
    assert!(small >= 100, "only {small} records of 80 or fewer");
    assert!(large >= 3, "only {large} records of 500 or more");

    // Every List of SPEC §4, and a CarePlan no List holds.
    let mut by_patient: BTreeMap<String, Vec<ItemFacts>> = BTreeMap::new();
    for (_, facts) in all.iter().filter(|(_, f)| f.patient.is_some()) {
        by_patient
            .entry(patient_of(facts))
            .or_default()
            .push(facts.clone());
    }
    let mut lists: BTreeSet<RecordList> = BTreeSet::new();
    let mut unserved_care_plans = 0;
    for items in by_patient.values() {
        for (item, list) in items.iter().zip(file_items(items)) {
            match list {
                Some(list) => {
                    lists.insert(list);
                }
                None if item.resource_type == "CarePlan" => unserved_care_plans += 1,
                None => assert_eq!(item.resource_type, "Consent"),
            }
        }
    }
    let expected: BTreeSet<RecordList> = Section::ALL
        .into_iter()
        .map(RecordList::Section)
        .chain([RecordList::EndedAllergies])
        .collect();
    assert_eq!(lists, expected);
    assert!(unserved_care_plans > 0);
    let types: BTreeSet<&str> = all.iter().map(|(_, f)| f.resource_type.as_str()).collect();
    for expected in [
        "MedicationStatement",
        "MedicationRequest",
        "Medication",
        "DiagnosticReport",
        "Organization",
        "Practitioner",
        "Consent",
    ] {
        assert!(types.contains(expected), "no {expected}");
    }

    // Every preference kind, by both codings.
    let consents: Vec<&ItemFacts> = all
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f.consent.is_some())
        .collect();
    let has_category = |system: &str, code: &str| {
        consents.iter().any(|f| {
            let c = f.consent.as_ref().unwrap();
            c.active
                && c.patient_privacy
                && c.date_time.is_some()
                && c.categories.iter().any(|k| k.is(system, code))
        })
    };
    for code in ["dissent", "core", "core-and-additional"] {
        assert!(has_category(SHARING_PREFERENCE_SYSTEM, code), "no {code}");
    }
    for (code, _) in [
        vocab::SNOMED_DISSENT,
        vocab::SNOMED_CONSENT_CORE,
        vocab::TYPE1_OPT_OUT,
        vocab::STANDING_THIRD_PARTY_CONSENT,
    ] {
        assert!(has_category(SNOMED, code), "no consent category {code}");
    }
    assert!(all.iter().any(|(_, f)| f.resource_type == "Observation"
        && f.codes.iter().any(|c| c.is(SNOMED, vocab::TYPE1_OPT_OUT.0))));
    let third_party = consents.iter().find_map(|f| {
        let c = f.consent.as_ref().unwrap();
        (c.permit && !c.actor_ods_codes.is_empty()).then_some(c)
    });
    let third_party = third_party.expect("a standing third-party consent");
    assert!(
        third_party.period_start.is_some() && third_party.period_end > third_party.period_start
    );
    for category in vocab::SENSITIVE_CATEGORIES {
        assert!(
            consents.iter().any(|f| {
                let c = f.consent.as_ref().unwrap();
                c.permit
                    && c.security_labels
                        .iter()
                        .any(|l| l.is(SNOMED, category.refset_id))
            }),
            "no specific consent to {}",
            category.name
        );
    }
    // Patients with more than one tier preference (newest wins), and some with none.
    let mut tier_records: BTreeMap<String, usize> = BTreeMap::new();
    for f in &consents {
        let c = f.consent.as_ref().unwrap();
        if c.categories.iter().any(|k| {
            k.system == SHARING_PREFERENCE_SYSTEM
                || k.is(SNOMED, vocab::SNOMED_DISSENT.0)
                || k.is(SNOMED, vocab::SNOMED_CONSENT_CORE.0)
        }) {
            *tier_records.entry(patient_of(f)).or_default() += 1;
        }
    }
    assert!(tier_records.values().filter(|&&n| n > 1).count() >= 10);
    assert!(
        per_patient.len() - tier_records.len() >= 20,
        "too few without a preference"
    );
    let dissenting = consents
        .iter()
        .filter(|f| {
            f.consent
                .as_ref()
                .unwrap()
                .categories
                .iter()
                .any(|k| k.code == "dissent" || k.code == vocab::SNOMED_DISSENT.0)
        })
        .count();
    assert!(
        (5..=60).contains(&dissenting),
        "{dissenting} dissent records"
    );

    // Every sensitive category, by label and by code only.
    let clinical: Vec<&ItemFacts> = all
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f.consent.is_none())
        .collect();
    for category in vocab::SENSITIVE_CATEGORIES {
        let labelled = clinical
            .iter()
            .filter(|f| f.security.iter().any(|s| s.is(SNOMED, category.refset_id)))
            .count();
        let coded_only = clinical
            .iter()
            .filter(|f| {
                f.security.is_empty()
                    && f.codes.iter().any(|c| {
                        c.system == SNOMED
                            && category.concepts.iter().any(|(code, _)| *code == c.code)
                    })
            })
            .count();
        assert!(
            labelled > 0 && coded_only > 0,
            "{}: {labelled} labelled, {coded_only} coded",
            category.name
        );
    }
    // Practice-confidential R and V.
    for code in ["R", "V"] {
        assert!(
            clinical.iter().any(|f| f
                .security
                .iter()
                .any(|s| s.is(CONFIDENTIALITY_SYSTEM, code))),
            "no {code}"
        );
    }
    // A prescription citing a sensitive condition.
    let sti_conditions: BTreeSet<String> = clinical
        .iter()
        .filter(|f| {
            f.resource_type == "Condition"
                && f.codes
                    .iter()
                    .any(|c| vocab::STI_CONCEPTS.iter().any(|(code, _)| *code == c.code))
        })
        .map(|f| f.reference())
        .collect();
    assert!(clinical
        .iter()
        .any(|f| f.resource_type == "MedicationRequest"
            && f.references.iter().any(|r| sti_conditions.contains(r))));
    // Fit notes with their components; resolved allergies; end-of-life care plans.
    let fit_notes: Vec<&Value> = all
        .iter()
        .filter(|(_, f)| f.codes.iter().any(|c| c.is(SNOMED, vocab::FIT_NOTE.0)))
        .map(|(r, _)| r)
        .collect();
    assert!(fit_notes.len() >= 10);
    for note in &fit_notes {
        let components: BTreeSet<&str> = note["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        // The condition is left out of about one note in ten, as in real records.
        for part in [
            "fitness",
            "duration",
            "phased-return",
            "altered-hours",
            "amended-duties",
            "workplace-adaptations",
        ] {
            assert!(components.contains(part), "fit note lacks {part}");
        }
        // SPEC §12: the day issued, and readable by the extract.
        assert!(note["effectiveDateTime"].is_string());
        mig::extract::read_fit_note(note).unwrap();
    }
    let with_condition = fit_notes
        .iter()
        .filter(|n| {
            n["component"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["code"]["coding"][0]["code"] == "condition")
        })
        .count();
    assert!(
        with_condition * 10 >= fit_notes.len() * 7,
        "{with_condition} of {}",
        fit_notes.len()
    );
    assert!(all
        .iter()
        .any(|(_, f)| f.resource_type == "AllergyIntolerance"
            && f.status.as_deref() == Some("resolved")));
    assert!(all.iter().any(|(_, f)| f.resource_type == "CarePlan"));
    // Diagnostic reports cite their observations; observations cite encounters.
    assert!(all
        .iter()
        .any(|(_, f)| f.resource_type == "DiagnosticReport"
            && f.references.iter().any(|r| r.starts_with("Observation/"))));
    assert!(all.iter().any(|(_, f)| f.resource_type == "Observation"
        && f.references.iter().any(|r| r.starts_with("Encounter/"))));
    assert!(all
        .iter()
        .any(|(_, f)| f.resource_type == "MedicationRequest"
            && f.references.iter().any(|r| r.starts_with("Condition/"))
            && f.references.iter().any(|r| r.starts_with("Medication/"))));
    // Interpreter needs and languages.
    assert!(all.iter().any(|(r, _)| r.get("communication").is_some()));
}

/// The tier a patient's Consents give, newest first within the tier kind (SPEC §6).
fn effective_tier(resources: &[Value]) -> SharingPreference {
    let mut newest: Option<(i64, SharingPreference)> = None;
    for resource in resources {
        let facts = extract_facts(resource).unwrap();
        let Some(consent) = facts.consent else {
            continue;
        };
        let tier =
            consent
                .categories
                .iter()
                .find_map(|c| match (c.system.as_str(), c.code.as_str()) {
                    (SHARING_PREFERENCE_SYSTEM, "dissent") | (SNOMED, "416409005") => {
                        Some(SharingPreference::Dissent)
                    }
                    (SHARING_PREFERENCE_SYSTEM, "core") | (SNOMED, "417528008") => {
                        Some(SharingPreference::Core)
                    }
                    (SHARING_PREFERENCE_SYSTEM, "core-and-additional") => {
                        Some(SharingPreference::CoreAndAdditional)
                    }
                    _ => None,
                });
        if let (Some(tier), Some(when)) = (tier, consent.date_time) {
            if newest.is_none_or(|(t, _)| when > t) {
                newest = Some((when, tier));
            }
        }
    }
    newest.map_or(SharingPreference::Core, |(_, tier)| tier)
}

#[test]
fn demo_patients_are_what_the_list_says_for_any_seed() {
    for seed in [1, 99] {
        let practice = Practice::new(seed);
        for demo in demo_patients() {
            let resources = practice.patient(demo.index).unwrap();
            assert_eq!(
                effective_tier(&resources),
                demo.preference,
                "{:?}",
                demo.kind
            );
            let facts: Vec<ItemFacts> = resources
                .iter()
                .map(|r| extract_facts(r).unwrap())
                .collect();
            assert_eq!(
                facts[0].nhs_number.as_deref(),
                Some(demo.nhs_number.as_str())
            );
            let consents: Vec<_> = facts.iter().filter_map(|f| f.consent.as_ref()).collect();
            let labelled = |refset: &str| {
                facts
                    .iter()
                    .any(|f| f.security.iter().any(|s| s.code == refset))
            };
            let coded = |concepts: &[vocab::Code]| {
                facts.iter().any(|f| {
                    f.codes
                        .iter()
                        .any(|c| concepts.iter().any(|(code, _)| *code == c.code))
                })
            };
            match demo.kind {
                DemoKind::NoPreference => assert!(consents.is_empty()),
                DemoKind::SensitiveWithoutConsent
                | DemoKind::SpecificConsentSti
                | DemoKind::SpecificConsentAll => {
                    for category in vocab::SENSITIVE_CATEGORIES {
                        assert!(
                            labelled(category.refset_id) && coded(category.concepts),
                            "{}",
                            category.name
                        );
                    }
                    let specific: Vec<&str> = consents
                        .iter()
                        .flat_map(|c| c.security_labels.iter().map(|l| l.code.as_str()))
                        .collect();
                    if demo.kind == DemoKind::SpecificConsentSti {
                        assert_eq!(specific, [vocab::STI_REFSET]);
                    } else if demo.kind == DemoKind::SpecificConsentAll {
                        let all: Vec<&str> = vocab::SENSITIVE_CATEGORIES
                            .iter()
                            .map(|c| c.refset_id)
                            .collect();
                        assert_eq!(specific, all);
                    } else {
                        assert!(specific.is_empty());
                    }
                }
                DemoKind::StandingThirdPartyConsent | DemoKind::LapsedThirdPartyConsent => {
                    let consent = consents
                        .iter()
                        .find(|c| !c.actor_ods_codes.is_empty())
                        .unwrap();
                    assert_eq!(consent.actor_ods_codes, [demo.third_party_ods.unwrap()]);
                    let reference = mig_policy::fhir::parse_fhir_date_time("2026-11-01").unwrap();
                    let in_date = consent.period_end.unwrap() > reference;
                    assert_eq!(in_date, demo.kind == DemoKind::StandingThirdPartyConsent);
                }
                DemoKind::PracticeConfidential => {
                    assert!(labelled("R") && labelled("V"));
                }
                DemoKind::Type1OptOut => {
                    assert!(consents.iter().any(|c| c
                        .categories
                        .iter()
                        .any(|k| k.code == vocab::TYPE1_OPT_OUT.0)));
                }
                DemoKind::EndOfLife => {
                    assert!(facts.iter().any(|f| f.resource_type == "CarePlan"));
                }
                DemoKind::CommunicationNeeds => {
                    assert!(facts.iter().filter(|f| f.resource_type == "Flag").count() >= 2);
                }
                DemoKind::FitNotes => {
                    assert!(facts
                        .iter()
                        .any(|f| f.codes.iter().any(|c| c.code == vocab::FIT_NOTE.0)));
                }
                _ => {}
            }
            if matches!(
                demo.kind,
                DemoKind::CoreAndAdditional | DemoKind::CoreOnly | DemoKind::Dissent
            ) {
                assert!(
                    facts.iter().all(|f| f.security.is_empty()),
                    "{:?} has labelled items",
                    demo.kind
                );
            }
        }
    }
}

#[test]
fn sensitive_concept_lists_match_their_refsets() {
    let refsets: BTreeSet<&str> = vocab::SENSITIVE_CATEGORIES
        .iter()
        .map(|c| c.refset_id)
        .collect();
    assert_eq!(
        refsets,
        BTreeSet::from([
            "999004351000000109",
            "999004371000000100",
            "999004361000000107",
            "999004381000000103"
        ])
    );
    for (refset, code) in [
        (vocab::STI_REFSET, "105629000"),
        (vocab::TERMINATION_OF_PREGNANCY_REFSET, "386639001"),
        (vocab::ASSISTED_FERTILISATION_REFSET, "52637005"),
        (vocab::GENDER_REFSET, "93461009"),
    ] {
        let category = vocab::SENSITIVE_CATEGORIES
            .iter()
            .find(|c| c.refset_id == refset)
            .unwrap();
        assert!(
            category.concepts.iter().any(|(c, _)| *c == code),
            "{refset} lacks {code}"
        );
    }
}

#[test]
fn every_coded_sensitive_item_the_generator_makes_is_in_the_shipped_lists() {
    let shipped = mig_policy::SensitiveCodes::shipped().unwrap();
    for category in mig_synthetic::vocab::SENSITIVE_CATEGORIES {
        let policy_category =
            mig_policy::SensitiveCategory::from_refset_id(category.refset_id).unwrap();
        for concept in category.concepts {
            let coding = mig_policy::fhir::Coding::new(mig_policy::fhir::SNOMED, concept.0);
            assert!(
                shipped.contains(policy_category, &coding),
                "{} {} is not shipped",
                category.name,
                concept.0
            );
        }
    }
}
