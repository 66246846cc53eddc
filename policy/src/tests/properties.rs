//! Property tests: for arbitrary agreements, requests and patients (items with random codes,
//! labels and references among themselves, random consents), `decide` never panics and never
//! releases what SPEC §5 and §6 forbid. The checks recompute the rules independently.

use std::collections::BTreeSet;
use strum::IntoEnumIterator;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::sample::select;

use super::super::*;
use crate::fhir::{
    Coding, ConsentFacts, ItemFacts, Section, Tier, CONFIDENTIALITY_SYSTEM,
    CONFIDENTIALITY_SYSTEM_V3, SHARING_PREFERENCE_SYSTEM, SNOMED,
};

const DAY: i64 = 86_400;
const BASE: i64 = 1_795_780_800; // 2026-11-27T12:00:00Z
const ODS: [&str; 5] = ["RX8", "RX8AA", "RYY", "rx8", ""];
const ROLES: [&str; 3] = ["R8000", "R8003", "R0260"];
const TYPES: [&str; 13] = [
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationStatement",
    "Condition",
    "Observation",
    "Encounter",
    "Procedure",
    "CarePlan",
    "Flag",
    "ServiceRequest",
    "Immunization",
    "DiagnosticReport",
    "Consent",
];
const IDS: [&str; 2] = ["a", "b"];
/// Sensitive concepts (from the shipped lists and the extra gender code) and benign ones,
/// the benign ones repeated so that most items are shareable.
const CODES: [&str; 16] = [
    "105629000",
    "386639001",
    "93461009",
    "52637005",
    "22298006",
    "404684003",
    "827241000000103",
    "195967001",
    "38341003",
    "73211009",
    "195967001",
    "38341003",
    "73211009",
    "271737000",
    "271737000",
    "44054006",
];

fn section() -> impl Strategy<Value = Section> {
    select(Section::ALL.to_vec())
}

/// Often every section, otherwise any subset.
fn sections() -> impl Strategy<Value = BTreeSet<Section>> {
    prop_oneof![
        Just(Section::ALL.into_iter().collect()),
        btree_set(section(), 0..=Section::ALL.len()),
    ]
}

fn role_set() -> impl Strategy<Value = RoleSet> {
    prop_oneof![
        3 => Just(RoleSet::Any),
        2 => btree_set(select(ROLES.to_vec()).prop_map(String::from), 0..3).prop_map(RoleSet::Only),
    ]
}

fn agreement() -> impl Strategy<Value = Agreement> {
    (
        select(vec!["RX8", "RX8", "RX8", "RX8", "RX8", "RX8", "RYY"]),
        btree_set(
            select(vec!["RX8AA", "RX8AA", "RYY", "rx8aa"]).prop_map(String::from),
            0..2,
        ),
        sections(),
        role_set(),
        role_set(),
        proptest::option::of(btree_set(section(), 0..=Section::ALL.len())),
        proptest::option::of(-10i64..60),
    )
        .prop_map(
            |(ods, sites, sections, roles, override_roles, override_sections, expires)| Agreement {
                ods: ods.into(),
                name: "partner".into(),
                partner_type: PartnerType::Acute,
                sites,
                sections,
                roles,
                override_roles,
                override_sections,
                expires: expires.and_then(|days| {
                    time::OffsetDateTime::from_unix_timestamp(BASE + days * DAY)
                        .ok()
                        .map(|t| t.date())
                }),
                attested_permission: false,
            },
        )
}

fn permission() -> impl Strategy<Value = Option<Permission>> {
    let reason =
        proptest::option::weighted(0.8, select(OverrideReason::iter().collect::<Vec<_>>()));
    let justification = proptest::option::weighted(
        0.8,
        select(vec![
            String::new(),
            "too short".to_string(),
            "          padded   ".to_string(),
            "x".repeat(10),
            "Unconscious at scene, no relative present".to_string(),
            "Unconscious at scene, no relative present".to_string(),
            "Unconscious at scene, no relative present".to_string(),
            "y".repeat(501),
        ]),
    );
    prop_oneof![
        1 => Just(None),
        3 => Just(Some(Permission::Granted)),
        3 => (reason, justification).prop_map(|(reason, justification)| Some(Permission::Override {
            reason,
            justification
        })),
    ]
}

fn request() -> impl Strategy<Value = AccessRequest> {
    (
        select(vec![
            "RX8", "RX8", "RX8", "RX8", "RX8", "rx8", "RX8AA", "RX8AA", "RYY", "",
        ]),
        select(ROLES.to_vec()),
        permission(),
        sections(),
        -15i64..15,
    )
        .prop_map(|(ods, role, permission, sections, days)| AccessRequest {
            requesting_ods: ods.into(),
            job_role: role.into(),
            permission,
            sections,
            now: BASE + days * DAY,
        })
}

fn coding() -> impl Strategy<Value = Coding> {
    (
        select(vec![SNOMED, SNOMED, "urn:other"]),
        select(CODES.to_vec()),
    )
        .prop_map(|(system, code)| Coding::new(system, code))
}

fn label() -> impl Strategy<Value = Coding> {
    let mut labels: Vec<(&str, &str)> = vec![
        (CONFIDENTIALITY_SYSTEM, "R"),
        (CONFIDENTIALITY_SYSTEM, "V"),
        (CONFIDENTIALITY_SYSTEM, "N"),
        (CONFIDENTIALITY_SYSTEM, "M"),
        (CONFIDENTIALITY_SYSTEM, "r"),
        (CONFIDENTIALITY_SYSTEM_V3, "R"),
        (CONFIDENTIALITY_SYSTEM_V3, "V"),
        (CONFIDENTIALITY_SYSTEM_V3, "N"),
        ("urn:oid:2.16.840.1.113883.5.25", "V"),
        ("https://example.org/CodeSystem/CONFIDENTIALITY", "N"),
        ("urn:other", "R"),
    ];
    for category in SensitiveCategory::ALL {
        labels.push((SNOMED, category.refset_id()));
    }
    labels.push(("urn:other", SensitiveCategory::Gender.refset_id()));
    select(labels).prop_map(|(system, code)| Coding::new(system, code))
}

fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (select(TYPES.to_vec()), select(IDS.to_vec())).prop_map(|(t, id)| format!("{t}/{id}")),
        1 => select(vec!["m0", "m1", "m2"]).prop_map(|id| format!("Medication/{id}")),
    ]
}

fn item_with(types: Vec<&'static str>, ids: Vec<&'static str>) -> impl Strategy<Value = ItemFacts> {
    (
        select(types),
        select(ids),
        vec(coding(), 0..3),
        proptest::option::weighted(0.25, label()).prop_map(|l| l.into_iter().collect::<Vec<_>>()),
        vec(reference(), 0..3),
    )
        .prop_map(
            |(resource_type, id, codes, security, references)| ItemFacts {
                resource_type: resource_type.into(),
                id: id.into(),
                codes,
                security,
                references,
                ..ItemFacts::default()
            },
        )
}

fn consent() -> impl Strategy<Value = ConsentFacts> {
    let categories = vec![
        Coding::new(SHARING_PREFERENCE_SYSTEM, "dissent"),
        Coding::new(SHARING_PREFERENCE_SYSTEM, "core"),
        Coding::new(SHARING_PREFERENCE_SYSTEM, "core-and-additional"),
        Coding::new(SNOMED, SNOMED_DISSENT_SYNONYM),
        Coding::new(SNOMED, SNOMED_CORE_SYNONYM),
        Coding::new(SNOMED, STANDING_CONSENT_CATEGORY),
        Coding::new(SNOMED, TYPE1_OPT_OUT_CODE),
        Coding::new("http://loinc.org", "59284-0"),
    ];
    let refsets: Vec<Coding> = SensitiveCategory::ALL
        .into_iter()
        .map(|c| Coding::new(SNOMED, c.refset_id()))
        .collect();
    let time = || proptest::option::of((-60i64..60).prop_map(|d| BASE + d * DAY));
    (
        any::<bool>(),
        any::<bool>(),
        vec(select(categories), 0..3),
        time(),
        any::<bool>(),
        vec(select(refsets), 0..3),
        vec(select(ODS.to_vec()).prop_map(String::from), 0..2),
        time(),
        time(),
    )
        .prop_map(
            |(
                active,
                patient_privacy,
                categories,
                date_time,
                permit,
                labels,
                actors,
                start,
                end,
            )| {
                ConsentFacts {
                    active,
                    patient_privacy,
                    categories,
                    date_time,
                    permit,
                    security_labels: labels,
                    actor_ods_codes: actors,
                    period_start: start,
                    period_end: end,
                }
            },
        )
}

fn patient() -> impl Strategy<Value = Option<PatientData>> {
    let open = ConsentFacts {
        active: true,
        patient_privacy: true,
        categories: vec![Coding::new(
            SHARING_PREFERENCE_SYSTEM,
            "core-and-additional",
        )],
        date_time: Some(BASE - 90 * DAY),
        ..ConsentFacts::default()
    };
    let consents = (any::<bool>(), vec(consent(), 0..5)).prop_map(move |(share_all, mut rest)| {
        if share_all {
            rest.insert(0, open.clone());
        }
        rest
    });
    let data = (
        consents,
        vec(item_with(TYPES.to_vec(), IDS.to_vec()), 0..16),
        vec(item_with(vec!["Medication"], vec!["m0", "m1", "m2"]), 0..3),
    )
        .prop_map(|(consents, items, shared)| PatientData {
            demographics: ItemFacts {
                resource_type: "Patient".into(),
                id: "p".into(),
                ..ItemFacts::default()
            },
            consents,
            items,
            shared,
        });
    // Now and then a patient who must be answered as unknown.
    let data = (
        data,
        proptest::option::weighted(0.1, (any::<bool>(), any::<bool>(), label())),
    )
        .prop_map(|(mut data, hidden)| {
            if let Some((deceased, ended, label)) = hidden {
                data.demographics.deceased = deceased;
                data.demographics.ended = ended;
                data.demographics.security.push(label);
            }
            data
        });
    proptest::option::weighted(0.9, data)
}

fn codes() -> SensitiveCodes {
    SensitiveCodes::shipped()
        .unwrap()
        .with_extra(SensitiveCategory::Gender, ["22298006"])
        .unwrap()
}

/// Recomputed independently of `decide`: the categories an item is in.
fn categories(item: &ItemFacts, codes: &SensitiveCodes) -> BTreeSet<SensitiveCategory> {
    SensitiveCategory::ALL
        .into_iter()
        .filter(|c| {
            item.security
                .iter()
                .any(|l| l.system == SNOMED && l.code == c.refset_id())
                || item
                    .codes
                    .iter()
                    .any(|k| k.system == SNOMED && codes.concepts(*c).any(|id| id == k.code))
        })
        .collect()
}

/// SPEC §5 step 8, restated: in the v3 Confidentiality system (any of its addresses) only the
/// codes that allow release pass; any other system naming confidentiality withholds.
fn confidential(item: &ItemFacts) -> bool {
    item.security.iter().any(|l| {
        let v3 = [
            CONFIDENTIALITY_SYSTEM,
            CONFIDENTIALITY_SYSTEM_V3,
            "urn:oid:2.16.840.1.113883.5.25",
        ]
        .contains(&l.system.as_str());
        if v3 {
            !["U", "L", "M", "N"].contains(&l.code.as_str())
        } else {
            l.system.to_lowercase().contains("confidentiality")
        }
    })
}

/// Naive fixed point over items and shared resources: withheld until nothing changes.
fn naive_withheld(patient: &PatientData, prefs: &Preferences, codes: &SensitiveCodes) -> Vec<bool> {
    let nodes: Vec<&ItemFacts> = patient.items.iter().chain(&patient.shared).collect();
    let mut withheld: Vec<bool> = nodes
        .iter()
        .map(|n| confidential(n) || !categories(n, codes).is_subset(&prefs.specific_consents))
        .collect();
    loop {
        let mut changed = false;
        for i in 0..nodes.len() {
            if withheld[i] {
                continue;
            }
            let hit = nodes[i].references.iter().any(|r| {
                nodes
                    .iter()
                    .enumerate()
                    .any(|(j, n)| withheld[j] && &n.reference() == r)
            });
            if hit {
                withheld[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    withheld.truncate(patient.items.len());
    withheld
}

fn permission_ok(agreement: &Agreement, request: &AccessRequest, prefs: &Preferences) -> bool {
    match &request.permission {
        Some(Permission::Granted) => true,
        None => prefs
            .standing_consent_for(&[&agreement.ods, &request.requesting_ods])
            .is_some(),
        Some(Permission::Override {
            reason,
            justification,
        }) => {
            let length = justification
                .as_deref()
                .unwrap_or("")
                .trim()
                .chars()
                .count();
            agreement.override_roles.contains(&request.job_role)
                && reason.is_some()
                && (10..=500).contains(&length)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 768,
        // Shrunk failures are reported in the test output; no files outside src/policy.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decide_never_releases_what_policy_forbids(
        agreement in proptest::option::weighted(0.9, agreement()),
        request in request(),
        patient in patient(),
    ) {
        let codes = codes();
        let decision = decide(agreement.as_ref(), &request, patient.as_ref(), &codes);
        let prefs = patient.as_ref().map(|p| preferences(&p.consents, request.now));

        // An override (or anything else) never beats dissent.
        if prefs.as_ref().is_some_and(|p| p.sharing == SharingPreference::Dissent) {
            prop_assert!(decision.release().is_none());
        }

        let Decision::Permitted(release) = decision else {
            return Ok(());
        };
        // Nothing is released unless every step of SPEC §5 passed.
        let agreement = agreement.expect("permitted without an agreement");
        let patient = patient.expect("permitted without a patient");
        // SPEC §3: deceased, ended and restricted patients are answered as unknown.
        prop_assert!(!patient.demographics.deceased && !patient.demographics.ended);
        prop_assert!(!confidential(&patient.demographics), "released a restricted patient");
        let prefs = prefs.expect("patient has preferences");
        prop_assert!(agreement.in_force(request.now));
        let org = request.requesting_ods.to_ascii_uppercase();
        prop_assert!(!org.is_empty());
        prop_assert!(
            agreement.ods.to_ascii_uppercase() == org
                || agreement.sites.iter().any(|s| s.to_ascii_uppercase() == org)
        );
        prop_assert!(agreement.roles.contains(&request.job_role));
        prop_assert!(permission_ok(&agreement, &request, &prefs));
        let is_override = matches!(request.permission, Some(Permission::Override { .. }));
        prop_assert_eq!(release.alert, is_override);
        prop_assert_eq!(matches!(release.basis, Basis::Override { .. }), is_override);

        // Sections: requested ∩ agreement ∩ tier ∩ override sections, and the rest reported.
        for section in &release.released_sections {
            prop_assert!(request.sections.contains(section));
            prop_assert!(agreement.sections.contains(section));
            if prefs.sharing == SharingPreference::Core {
                prop_assert_eq!(section.tier(), Tier::Core);
            }
            if is_override {
                prop_assert!(agreement.sections_under_override().contains(section));
            }
        }
        let expected_withheld_sections: BTreeSet<Section> =
            request.sections.difference(&release.released_sections).copied().collect();
        prop_assert_eq!(&release.withheld_sections, &expected_withheld_sections);

        // Items.
        let withheld = naive_withheld(&patient, &prefs, &codes);
        prop_assert!(release.released_items.windows(2).all(|w| w[0] < w[1]));
        let released: BTreeSet<usize> = release.released_items.iter().copied().collect();
        let mut lists_losing = BTreeSet::new();
        let lists = crate::fhir::file_items(&patient.items);
        prop_assert_eq!(&release.item_lists, &lists);
        for (index, item) in patient.items.iter().enumerate() {
            let list = lists[index];
            let in_released = list.is_some_and(|l| release.released_sections.contains(&l.section()));
            if released.contains(&index) {
                prop_assert!(in_released, "released item outside released sections");
                prop_assert!(!confidential(item), "released a practice-confidential item");
                prop_assert!(
                    categories(item, &codes).is_subset(&prefs.specific_consents),
                    "released a sensitive item without specific consent"
                );
                prop_assert!(!withheld[index], "released an item referencing a withheld one");
                for reference in &item.references {
                    let target_withheld = patient
                        .items
                        .iter()
                        .enumerate()
                        .any(|(j, n)| withheld[j] && &n.reference() == reference);
                    prop_assert!(!target_withheld);
                }
            } else if in_released {
                // Completeness: only withheld items are left out of released sections.
                prop_assert!(withheld[index], "left out an item that may be shared");
                if let Some(list) = list {
                    lists_losing.insert(list);
                }
            }
        }
        prop_assert_eq!(&release.lists_with_withheld, &lists_losing);
    }

    #[test]
    fn concept_list_parser_never_panics(text in "[0-9a-z |#\\n\\t]{0,200}") {
        let _ = parse_concept_list("fuzz", &text);
    }
}

/// Guards the power of the property test: the generators must produce plenty of permitted
/// decisions with both released and withheld items, or the properties prove little.
#[test]
fn generators_produce_permits_with_released_and_withheld_items() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        proptest::option::weighted(0.9, agreement()),
        request(),
        patient(),
    );
    let codes = codes();
    let (mut permits, mut with_released, mut with_withheld, mut overrides) = (0, 0, 0, 0);
    for _ in 0..1000 {
        let (agreement, request, patient) = strategy.new_tree(&mut runner).unwrap().current();
        if let Decision::Permitted(release) =
            decide(agreement.as_ref(), &request, patient.as_ref(), &codes)
        {
            permits += 1;
            with_released += usize::from(!release.released_items.is_empty());
            with_withheld += usize::from(!release.lists_with_withheld.is_empty());
            overrides += usize::from(release.alert);
        }
    }
    assert!(permits >= 120, "permits {permits}");
    assert!(with_released >= 50, "with released {with_released}");
    assert!(with_withheld >= 30, "with withheld {with_withheld}");
    assert!(overrides >= 15, "overrides {overrides}");
}
