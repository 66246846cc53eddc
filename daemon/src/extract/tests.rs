#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{json, Value};
use time::macros::date;

use super::*;
use mig_policy::fhir::{Coding, ConsentFacts};

const TODAY: Date = date!(2026 - 12 - 06);
const NOW: i64 = 1_796_515_200; // 2026-12-06T00:00:00Z

fn period() -> Period {
    Period::new("2025-04-01", "2026-03-31", TODAY).unwrap()
}

fn context() -> CsvContext {
    CsvContext {
        sub_icb: "16C".into(),
        period: period(),
        run_date: TODAY,
    }
}

fn fit_note_body(
    id: &str,
    issued: &str,
    fitness: &str,
    days: u32,
    condition: Option<&str>,
    advice: bool,
) -> Value {
    let mut components = vec![
        json!({"code": {"coding": [{"system": FIT_NOTE_SYSTEM, "code": "fitness"}]},
               "valueCodeableConcept": {"coding": [{"system": FIT_NOTE_SYSTEM, "code": fitness}]}}),
        json!({"code": {"coding": [{"system": FIT_NOTE_SYSTEM, "code": "duration"}]},
               "valueQuantity": {"value": days, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}),
    ];
    if let Some(code) = condition {
        components.push(
            json!({"code": {"coding": [{"system": FIT_NOTE_SYSTEM, "code": "condition"}]},
            "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": code}]}}),
        );
    }
    for (i, name) in ADVICE_BOXES.iter().enumerate() {
        components.push(
            json!({"code": {"coding": [{"system": FIT_NOTE_SYSTEM, "code": name}]},
            "valueBoolean": advice && i == 2}),
        );
    }
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": SNOMED, "code": FIT_NOTE_CODE}]},
        "effectiveDateTime": issued, "component": components})
}

fn fit_note(
    patient: &str,
    id: &str,
    issued: &str,
    fitness: &str,
    days: u32,
    condition: Option<&str>,
    advice: bool,
) -> Candidate {
    let body = fit_note_body(id, issued, fitness, days, condition, advice);
    Candidate {
        patient_id: Some(patient.into()),
        facts: ItemFacts {
            resource_type: "Observation".into(),
            id: id.into(),
            codes: vec![Coding::new(SNOMED, FIT_NOTE_CODE)],
            status: Some("final".into()),
            ..ItemFacts::default()
        },
        body: body.to_string(),
    }
}

fn opt_out_consent(patient: &str, active: bool) -> Candidate {
    Candidate {
        patient_id: Some(patient.into()),
        facts: ItemFacts {
            resource_type: "Consent".into(),
            id: format!("{patient}-optout"),
            consent: Some(ConsentFacts {
                active,
                patient_privacy: true,
                categories: vec![Coding::new(SNOMED, mig_policy::TYPE1_OPT_OUT_CODE)],
                date_time: Some(NOW - 86_400 * 400),
                ..ConsentFacts::default()
            }),
            ..ItemFacts::default()
        },
        body: "{}".into(),
    }
}

fn opt_out_observation(patient: &str, status: &str) -> Candidate {
    Candidate {
        patient_id: Some(patient.into()),
        facts: ItemFacts {
            resource_type: "Observation".into(),
            id: format!("{patient}-optout-obs"),
            codes: vec![Coding::new(SNOMED, mig_policy::TYPE1_OPT_OUT_CODE)],
            status: Some(status.into()),
            ..ItemFacts::default()
        },
        body: "{}".into(),
    }
}

#[test]
fn reads_a_fit_note() {
    let body = fit_note_body(
        "o1",
        "2025-06-03T10:15:00+01:00",
        "may-be-fit",
        28,
        Some("279039007"),
        true,
    );
    let note = read_fit_note(&body).unwrap();
    assert_eq!(
        note,
        FitNote {
            issued: date!(2025 - 06 - 03),
            fitness: Fitness::MayBeFit,
            duration_days: 28,
            condition: Some("279039007".into()),
            adaptations: true,
        }
    );
    let mut weeks = body.clone();
    weeks["component"][1]["valueQuantity"]["code"] = json!("wk");
    weeks["component"][1]["valueQuantity"]["value"] = json!(2);
    assert_eq!(read_fit_note(&weeks).unwrap().duration_days, 14);
    let mut no_date = body.clone();
    no_date.as_object_mut().unwrap().remove("effectiveDateTime");
    assert_eq!(read_fit_note(&no_date).unwrap_err(), "no effectiveDateTime");
    let mut bad_fitness = body.clone();
    bad_fitness["component"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("fit");
    assert!(read_fit_note(&bad_fitness).is_err());
    let mut minutes = body;
    minutes["component"][1]["valueQuantity"]["code"] = json!("min");
    assert!(read_fit_note(&minutes).is_err());
}

#[test]
fn periods_are_checked() {
    assert_eq!(period().from, date!(2025 - 04 - 01));
    assert!(period().contains(date!(2026 - 03 - 31)));
    assert!(!period().contains(date!(2026 - 04 - 01)));
    assert!(Period::new("2026-12-06", "2026-12-06", TODAY).is_ok());
    let reversed = Period::new("2026-03-31", "2025-04-01", TODAY).unwrap_err();
    assert_eq!(
        reversed.to_string(),
        "the period is empty: --to 2025-04-01 is before --from 2026-03-31"
    );
    assert!(matches!(
        Period::new("2026-12-01", "2026-12-07", TODAY),
        Err(ExtractError::FuturePeriod { .. })
    ));
    assert!(matches!(
        Period::new("2027-01-01", "2027-02-01", TODAY),
        Err(ExtractError::FuturePeriod { .. })
    ));
    for bad in [
        "",
        "2025-4-1",
        "2025-02-30",
        "01/04/2025",
        "2025-04-01T00:00:00Z",
    ] {
        assert!(
            matches!(
                Period::new(bad, "2026-01-01", TODAY),
                Err(ExtractError::BadDate { flag: "from", .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn sub_icb_codes() {
    for good in ["16C", "00L", "X2C4Y"] {
        assert!(is_sub_icb_code(good), "{good}");
    }
    for bad in ["", "16c", "16", "1234", "16C 1", "ABCDEF"] {
        assert!(!is_sub_icb_code(bad), "{bad}");
    }
}

#[test]
fn type1_opt_outs_by_consent_and_by_observation_are_left_out() {
    let mut candidates = Vec::new();
    for patient in ["consent", "observation", "withdrawn", "erroneous", "plain"] {
        candidates.push(fit_note(
            patient,
            &format!("{patient}-fn"),
            "2025-06-01",
            "unfit",
            14,
            Some("35489007"),
            false,
        ));
    }
    candidates.push(opt_out_consent("consent", true));
    candidates.push(opt_out_observation("observation", "final"));
    // A withdrawn (inactive) opt-out and one entered in error do not count.
    candidates.push(opt_out_consent("withdrawn", false));
    candidates.push(opt_out_observation("erroneous", "entered-in-error"));
    let selection = select(&candidates, &period(), NOW);
    let kept: Vec<&str> = selection.notes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(kept, ["withdrawn", "erroneous", "plain"]);
    assert_eq!(selection.notes_left_out, 2);
    assert_eq!(
        selection
            .opted_out
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["consent", "observation"]
    );
}

#[test]
fn only_notes_issued_in_the_period_count_and_unreadable_ones_are_reported() {
    let mut broken = fit_note("p", "broken", "2025-06-01", "unfit", 14, None, false);
    broken.body = broken.body.replace("effectiveDateTime", "effectivePeriod");
    let candidates = vec![
        fit_note("p", "before", "2025-03-31", "unfit", 14, None, false),
        fit_note("p", "first", "2025-04-01", "unfit", 14, None, false),
        fit_note(
            "p",
            "last",
            "2026-03-31T23:59:00Z",
            "unfit",
            14,
            None,
            false,
        ),
        fit_note("p", "after", "2026-04-01", "unfit", 14, None, false),
        broken,
    ];
    let selection = select(&candidates, &period(), NOW);
    assert_eq!(selection.notes.len(), 2);
    assert_eq!(
        selection.unreadable,
        ["Observation/broken: no effectiveDateTime"]
    );
}

#[test]
fn the_csv_groups_as_the_published_statistics() {
    let conditions = ConditionMap::shipped().unwrap();
    let mut candidates = Vec::new();
    for i in 0..12 {
        candidates.push(fit_note(
            &format!("f{i}"),
            &format!("a{i}"),
            "2025-05-01",
            "unfit",
            14,
            Some("35489007"),
            false,
        ));
    }
    for i in 0..3 {
        candidates.push(fit_note(
            &format!("m{i}"),
            &format!("b{i}"),
            "2025-05-01",
            "may-be-fit",
            90,
            Some("279039007"),
            true,
        ));
    }
    candidates.push(fit_note("m9", "c", "2025-05-01", "unfit", 7, None, false));
    let genders: HashMap<String, Gender> = candidates
        .iter()
        .map(|c| {
            let p = c.patient_id.clone().unwrap();
            let g = if p.starts_with('f') {
                Gender::Female
            } else {
                Gender::Male
            };
            (p, g)
        })
        .collect();
    let extract = build(&candidates, &genders, &context(), NOW, &conditions).unwrap();
    assert_eq!(
        extract.csv,
        "sub_icb_location_code,period_start,period_end,extract_date,gender,diagnosis,fit_note_duration,fitness_for_work,adaptations_recommended,count\r\n\
         16C,2025-04-01,2026-03-31,2026-12-06,Female,Mental and behavioural disorders,1 to 2 weeks,Not fit for work,No,10\r\n\
         16C,2025-04-01,2026-03-31,2026-12-06,Male,Diseases of the musculoskeletal system and connective tissue,Over 12 weeks,May be fit for work,Yes,*\r\n\
         16C,2025-04-01,2026-03-31,2026-12-06,Male,Unknown,Up to 1 week,Not fit for work,No,*\r\n"
    );
    assert_eq!(extract.rows, 3);
    assert_eq!(extract.notes, 16);
}

#[test]
fn labels_with_commas_are_quoted() {
    let conditions = ConditionMap::shipped().unwrap();
    let candidates = vec![fit_note(
        "p",
        "x",
        "2025-05-01",
        "unfit",
        30,
        Some("125605004"),
        false,
    )];
    let extract = build(&candidates, &HashMap::new(), &context(), NOW, &conditions).unwrap();
    assert!(extract.csv.contains(
        ",Unknown,\"Injury, poisoning and certain other consequences of external causes\",4 to 12 weeks,"
    ));
}

#[test]
fn nothing_to_publish_is_an_error_not_an_empty_file() {
    let conditions = ConditionMap::shipped().unwrap();
    let none = build(&[], &HashMap::new(), &context(), NOW, &conditions).unwrap_err();
    assert!(matches!(none, ExtractError::NoFitNotes { .. }), "{none}");
    let all_opted_out = vec![
        fit_note("p", "x", "2025-05-01", "unfit", 30, None, false),
        opt_out_consent("p", true),
    ];
    let e = build(
        &all_opted_out,
        &HashMap::new(),
        &context(),
        NOW,
        &conditions,
    )
    .unwrap_err();
    assert!(matches!(e, ExtractError::NoFitNotes { .. }));
    let mut no_code = context();
    no_code.sub_icb = String::new();
    let e = build(
        &all_opted_out[..1],
        &HashMap::new(),
        &no_code,
        NOW,
        &conditions,
    )
    .unwrap_err();
    assert!(matches!(e, ExtractError::NoSubIcb));
}

/// The count column of every data row.
fn counts(csv: &str) -> Vec<String> {
    csv.lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_owned())
        .collect()
}

/// A generated practice: each patient has a gender and some notes (condition, days, fitness,
/// advice) in or around the period.
/// A generated note: (condition index, days, may be fit, advice, days after the period starts).
type GeneratedNote = (usize, u32, bool, bool, i64);
/// A generated practice: each patient's gender and notes.
type GeneratedPractice = Vec<(Gender, Vec<GeneratedNote>)>;

fn practice() -> impl Strategy<Value = GeneratedPractice> {
    let note = (
        0usize..6,
        1u32..200,
        any::<bool>(),
        any::<bool>(),
        -30i64..400,
    );
    let gender = prop_oneof![
        Just(Gender::Female),
        Just(Gender::Male),
        Just(Gender::Unknown)
    ];
    prop::collection::vec((gender, prop::collection::vec(note, 0..5)), 1..120)
}

const CONDITIONS: [Option<&str>; 6] = [
    Some("35489007"),
    Some("279039007"),
    Some("125605004"),
    Some("54150009"),
    Some("999999999"),
    None,
];

fn candidates_of(
    practice: &[(Gender, Vec<GeneratedNote>)],
) -> (Vec<Candidate>, HashMap<String, Gender>) {
    let mut candidates = Vec::new();
    let mut genders = HashMap::new();
    for (p, (gender, notes)) in practice.iter().enumerate() {
        let patient = format!("p{p}");
        genders.insert(patient.clone(), *gender);
        for (n, (condition, days, may_be_fit, advice, offset)) in notes.iter().enumerate() {
            let issued = period().from + time::Duration::days(*offset);
            candidates.push(fit_note(
                &patient,
                &format!("p{p}-{n}"),
                &issued.to_string(),
                if *may_be_fit { "may-be-fit" } else { "unfit" },
                *days,
                CONDITIONS[*condition],
                *advice,
            ));
        }
    }
    (candidates, genders)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the practice, no published cell is 1 to 7 and every number is a multiple of 5.
    #[test]
    fn no_published_count_is_small_or_unrounded(practice in practice()) {
        let conditions = ConditionMap::shipped().unwrap();
        let (candidates, genders) = candidates_of(&practice);
        match build(&candidates, &genders, &context(), NOW, &conditions) {
            Ok(extract) => {
                for cell in counts(&extract.csv) {
                    if cell != "*" {
                        let n: u64 = cell.parse().unwrap();
                        prop_assert!(n % 5 == 0, "{} is not a multiple of 5", n);
                        prop_assert!(!(1..=7).contains(&n), "{} published", n);
                    }
                }
                prop_assert_eq!(extract.csv.lines().count(), extract.rows + 1);
            }
            Err(ExtractError::NoFitNotes { .. }) => {
                let none_in_period = candidates.iter().all(|c| {
                    let body: Value = serde_json::from_str(&c.body).unwrap();
                    !period().contains(read_fit_note(&body).unwrap().issued)
                });
                prop_assert!(none_in_period, "notes in the period but nothing published");
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    /// Removing one patient who has exactly one fit note in the period, from a practice where
    /// that note's cell held `count` notes, leaves the published extract identical exactly when
    /// the control should hide it: the cell held 2 to 7 notes (still `*`), or 9 or more and not
    /// 3 more than a multiple of 5 (the same multiple of 5). In the other cases (1 → row gone,
    /// 8 → `*`, 13 → 10, 18 → 15, ...) the two extracts differ: that is the limit of rounding,
    /// and why docs/operations.md says to send one extract per period.
    #[test]
    fn removing_one_patient_is_hidden_where_the_control_should_hide_it(
        count in 1u64..60,
        others in practice(),
    ) {
        let conditions = ConditionMap::shipped().unwrap();
        // The target cell: female, circulatory (myocardial infarction: no generated note has
        // a circulatory condition), 1-2 weeks, not fit, no advice.
        let (mut candidates, mut genders) = candidates_of(&others);
        for i in 0..count {
            let patient = format!("cell{i}");
            genders.insert(patient.clone(), Gender::Female);
            candidates.push(fit_note(&patient, &format!("cell{i}-n"), "2025-07-01", "unfit", 10, Some("22298006"), false));
        }
        let before = build(&candidates, &genders, &context(), NOW, &conditions).unwrap().csv;
        // Take out the patient "cell0" (their only item).
        candidates.retain(|c| c.patient_id.as_deref() != Some("cell0"));
        let after = match build(&candidates, &genders, &context(), NOW, &conditions) {
            Ok(extract) => extract.csv,
            Err(ExtractError::NoFitNotes { .. }) => String::new(),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        let should_hide = (2..=7).contains(&count) || (count >= 9 && count % 5 != 3);
        prop_assert_eq!(should_hide, disclosure::removal_is_hidden(count, 1));
        prop_assert_eq!(before == after, should_hide, "count {}", count);
    }
}
