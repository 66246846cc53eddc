//! The fit-note extract (SPEC §12) over a synthetic practice in a real SQLCipher replica: what
//! it counts, who it leaves out, and that nothing in it could name a patient.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;

use mig::extract::{self, ConditionMap, CsvContext, Period};
use mig::replica::{ReaderPool, Replica};
use mig_policy::fhir::SNOMED;
use serde_json::Value;
use time::macros::date;
use zeroize::Zeroizing;

const KEY: [u8; 32] = [7; 32];
const PATIENTS: u64 = 500;
/// The synthetic practice's "today" is 2026-11-01: a year that has ended by then.
const TODAY: time::Date = date!(2026 - 11 - 01);
const NOW: i64 = 1_793_491_200; // 2026-11-01T00:00:00Z

struct Fixture {
    _dir: tempfile::TempDir,
    readers: ReaderPool,
    resources: Vec<Value>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ndjson = dir.path().join("ndjson");
    mig_synthetic::write_practice(&ndjson, PATIENTS, 1).unwrap();
    let path = dir.path().join("replica.db");
    let mut replica = Replica::create(&path, &KEY).unwrap();
    let mut resources = Vec::new();
    for file in mig::replica::ndjson_import_order(&ndjson).unwrap() {
        let bytes = std::fs::read(&file).unwrap();
        replica.import_ndjson(&bytes[..]).unwrap();
        for line in bytes.lines() {
            resources.push(serde_json::from_str(&line.unwrap()).unwrap());
        }
    }
    opt_out_two_patients(&mut replica, &mut resources);
    drop(replica);
    let readers = ReaderPool::new(path, Zeroizing::new(KEY)).unwrap();
    Fixture {
        _dir: dir,
        readers,
        resources,
    }
}

/// Gives two patients who have fit notes in the test year a Type 1 opt-out, one as a Consent
/// and one as an Observation, made like the generator's own.
fn opt_out_two_patients(replica: &mut Replica, resources: &mut Vec<Value>) {
    let period = Period::new("2025-11-01", "2026-10-31", TODAY).unwrap();
    let (by_consent, by_observation) = opted_out(resources);
    let mut with_notes = BTreeSet::new();
    for r in resources.iter() {
        if r["resourceType"] == "Observation" && has_code(&r["code"], extract::FIT_NOTE_CODE) {
            let patient = patient_of(r).unwrap();
            if period.contains(extract::read_fit_note(r).unwrap().issued)
                && !by_consent.contains(&patient)
                && !by_observation.contains(&patient)
            {
                with_notes.insert(patient);
            }
        }
    }
    let mut chosen = with_notes.into_iter();
    let (a, b) = (chosen.next().unwrap(), chosen.next().unwrap());
    let template = |kind: &str| {
        resources
            .iter()
            .find(|r| {
                r["resourceType"] == kind
                    && (has_code(&r["code"], "827241000000103")
                        || r["category"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| has_code(c, "827241000000103"))))
            })
            .unwrap()
            .clone()
    };
    let mut consent = template("Consent");
    consent["id"] = format!("{a}-test-optout").into();
    consent["patient"]["reference"] = format!("Patient/{a}").into();
    let mut observation = template("Observation");
    observation["id"] = format!("{b}-test-optout").into();
    observation["subject"]["reference"] = format!("Patient/{b}").into();
    let mut batch = Vec::new();
    for r in [&consent, &observation] {
        batch.extend_from_slice(r.to_string().as_bytes());
        batch.push(b'\n');
    }
    replica.import_ndjson(&batch[..]).unwrap();
    resources.push(consent);
    resources.push(observation);
}

fn context(from: &str, to: &str) -> CsvContext {
    CsvContext {
        sub_icb: "16C".into(),
        period: Period::new(from, to, TODAY).unwrap(),
        run_date: date!(2026 - 12 - 06),
    }
}

fn patient_of(resource: &Value) -> Option<String> {
    resource["subject"]["reference"]
        .as_str()
        .or(resource["patient"]["reference"].as_str())
        .and_then(|r| r.strip_prefix("Patient/"))
        .map(str::to_owned)
}

fn has_code(concept: &Value, code: &str) -> bool {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["system"] == SNOMED && c["code"] == code)
}

/// Patients with a Type 1 opt-out, read straight from the NDJSON: (by Consent, by Observation).
fn opted_out(resources: &[Value]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut by_consent = BTreeSet::new();
    let mut by_observation = BTreeSet::new();
    for r in resources {
        let Some(patient) = patient_of(r) else {
            continue;
        };
        match r["resourceType"].as_str() {
            Some("Consent")
                if r["status"] == "active"
                    && r["category"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|c| has_code(c, "827241000000103")) =>
            {
                by_consent.insert(patient);
            }
            Some("Observation") if has_code(&r["code"], "827241000000103") => {
                by_observation.insert(patient);
            }
            _ => {}
        }
    }
    (by_consent, by_observation)
}

#[test]
fn the_extract_counts_what_the_record_holds_and_leaves_opted_out_patients_out() {
    let f = fixture();
    let context = context("2025-11-01", "2026-10-31");
    let gathered = f
        .readers
        .with(|r| extract::gather(r, &context.period, NOW))
        .unwrap();
    let (by_consent, by_observation) = opted_out(&f.resources);
    assert!(!by_consent.is_empty() && !by_observation.is_empty());
    assert_eq!(
        gathered.selection.opted_out,
        by_consent.union(&by_observation).cloned().collect()
    );

    // The same count straight from the NDJSON, without the replica's index.
    let mut expected = 0u64;
    let mut left_out_consent = 0u64;
    let mut left_out_observation = 0u64;
    for r in &f.resources {
        if r["resourceType"] != "Observation" || !has_code(&r["code"], extract::FIT_NOTE_CODE) {
            continue;
        }
        let note = extract::read_fit_note(r).unwrap();
        if !context.period.contains(note.issued) {
            continue;
        }
        let patient = patient_of(r).unwrap();
        if by_consent.contains(&patient) {
            left_out_consent += 1;
        } else if by_observation.contains(&patient) {
            left_out_observation += 1;
        } else {
            expected += 1;
        }
    }
    assert!(
        expected > 40,
        "a year of a {PATIENTS}-patient practice: {expected} notes"
    );
    assert!(
        left_out_consent > 0,
        "no opted-out (Consent) patient had a note in the year"
    );
    assert!(
        left_out_observation > 0,
        "no opted-out (Observation) patient had a note in the year"
    );
    assert_eq!(gathered.selection.notes.len() as u64, expected);
    assert_eq!(
        gathered.selection.notes_left_out,
        left_out_consent + left_out_observation
    );
    for (patient, _) in &gathered.selection.notes {
        assert!(!by_consent.contains(patient) && !by_observation.contains(patient));
    }

    let built =
        extract::finish_gathered(gathered, &context, &ConditionMap::shipped().unwrap()).unwrap();
    assert_eq!(built.notes, expected);
    assert!(built.unreadable.is_empty(), "{:?}", built.unreadable);
    // Reads like the published statistics: the big groups are there and counted.
    assert!(built.csv.contains(",Mental and behavioural disorders,"));
    assert!(built
        .csv
        .contains(",Diseases of the musculoskeletal system and connective tissue,"));
    assert!(
        built.csv.contains(",Not fit for work,") && built.csv.contains(",May be fit for work,")
    );
    assert!(built.rows >= 5, "{}", built.csv);
}

/// Splits one CSV line (RFC 4180 quoting).
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cell)),
            (c, _) => cell.push(c),
        }
    }
    out.push(cell);
    out
}

#[test]
fn no_cell_of_the_extract_could_name_a_patient() {
    let f = fixture();
    // Bounds that are nobody's birth date, so a match below could only be a leak.
    let births: BTreeSet<String> = f
        .resources
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .filter_map(|r| r["birthDate"].as_str().map(str::to_owned))
        .collect();
    let mut from = date!(2025 - 11 - 01);
    while births.contains(&from.to_string()) {
        from = from.next_day().unwrap();
    }
    let context = context(&from.to_string(), "2026-10-31");
    assert!(!births.contains("2026-10-31") && !births.contains("2026-12-06"));
    let built = f
        .readers
        .with(|r| extract::gather(r, &context.period, NOW))
        .map_err(extract::ExtractError::from)
        .and_then(|g| extract::finish_gathered(g, &context, &ConditionMap::shipped().unwrap()))
        .unwrap();

    // Everything that identifies a patient: NHS numbers, other identifiers, names, birth
    // dates, postcodes and address lines, phone numbers, and the record's own ids.
    let mut identifiers: BTreeSet<String> = BTreeSet::new();
    for r in &f.resources {
        if let Some(id) = r["id"].as_str() {
            if patient_of(r).is_some() || r["resourceType"] == "Patient" {
                identifiers.insert(id.to_lowercase());
            }
        }
        if r["resourceType"] != "Patient" {
            continue;
        }
        for i in r["identifier"].as_array().into_iter().flatten() {
            identifiers.insert(i["value"].as_str().unwrap().to_lowercase());
        }
        for name in r["name"].as_array().into_iter().flatten() {
            let family = name["family"].as_str().unwrap_or_default().to_lowercase();
            identifiers.insert(family.clone());
            for given in name["given"].as_array().into_iter().flatten() {
                let given = given.as_str().unwrap().to_lowercase();
                identifiers.insert(format!("{given} {family}"));
                identifiers.insert(given);
            }
        }
        identifiers.insert(r["birthDate"].as_str().unwrap().to_owned());
        for a in r["address"].as_array().into_iter().flatten() {
            identifiers.insert(a["postalCode"].as_str().unwrap().to_lowercase());
            identifiers.insert(
                a["postalCode"]
                    .as_str()
                    .unwrap()
                    .replace(' ', "")
                    .to_lowercase(),
            );
            for line in a["line"].as_array().into_iter().flatten() {
                identifiers.insert(line.as_str().unwrap().to_lowercase());
            }
        }
        for t in r["telecom"].as_array().into_iter().flatten() {
            identifiers.insert(t["value"].as_str().unwrap().to_lowercase());
        }
    }
    identifiers.remove("");
    let nhs_numbers: Vec<&String> = identifiers
        .iter()
        .filter(|i| i.len() == 10 && i.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert!(nhs_numbers.len() as u64 >= PATIENTS);

    let mut lines = built.csv.lines();
    assert_eq!(cells(lines.next().unwrap()), extract::COLUMNS);
    let allowed: [BTreeSet<&str>; 5] = [
        extract::Gender::ALL.iter().map(|g| g.label()).collect(),
        extract::ConditionType::ALL
            .iter()
            .map(|c| c.label())
            .collect(),
        extract::DurationBand::ALL
            .iter()
            .map(|d| d.label())
            .collect(),
        extract::Fitness::ALL.iter().map(|f| f.label()).collect(),
        ["Yes", "No"].into_iter().collect(),
    ];
    let mut rows = 0;
    for line in lines {
        rows += 1;
        let row = cells(line);
        assert_eq!(row.len(), extract::COLUMNS.len(), "{line}");
        // The only dates: the period's bounds and the run date.
        assert_eq!(
            row[..4],
            [
                "16C".to_owned(),
                from.to_string(),
                "2026-10-31".into(),
                "2026-12-06".into()
            ]
        );
        for (cell, allowed) in row[4..9].iter().zip(&allowed) {
            assert!(
                allowed.contains(cell.as_str()),
                "{cell:?} is not a category label"
            );
        }
        let count = &row[9];
        assert!(
            count == "*"
                || count
                    .parse::<u64>()
                    .is_ok_and(|n| n % 5 == 0 && !(1..=7).contains(&n))
        );
        for cell in &row {
            let lower = cell.to_lowercase();
            assert!(
                !identifiers.contains(&lower),
                "cell {cell:?} is a patient identifier"
            );
            for nhs in &nhs_numbers {
                assert!(
                    !lower.contains(nhs.as_str()),
                    "cell {cell:?} holds an NHS number"
                );
            }
        }
    }
    assert_eq!(rows, built.rows);
    assert!(rows >= 10);
    // No date finer than the month anywhere but in the first four columns.
    let date_like = |s: &str| s.len() >= 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
    for line in built.csv.lines().skip(1) {
        assert!(cells(line)[4..].iter().all(|c| !date_like(c)));
    }
}

#[test]
fn an_old_replica_gains_the_statistics_index_and_a_bad_condition_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut replica = Replica::create(&path, &KEY).unwrap();
    let practice = mig_synthetic::Practice::new(1);
    // The demo patient with fit notes (index 16), stored before the index existed.
    let mut ndjson = Vec::new();
    for r in practice.patient(16).unwrap() {
        ndjson.extend_from_slice(r.to_string().as_bytes());
        ndjson.push(b'\n');
    }
    replica.import_ndjson(&ndjson[..]).unwrap();
    drop(replica);
    {
        // Back to schema 2, as a replica written by the previous migd.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA key = \"x'{}'\"; PRAGMA cipher_page_size = 16384; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;
             DROP INDEX resource_statistics; DROP TRIGGER resource_deleted_unpacks;
             DROP TRIGGER resource_moved_unpacks; DROP TABLE patient_record; DROP TABLE record_pending;
             PRAGMA user_version = 2;",
            hex::encode(KEY)
        ))
        .unwrap();
    }
    Replica::open(&path, &KEY).unwrap();
    let readers = ReaderPool::new(path, Zeroizing::new(KEY)).unwrap();
    let candidates = readers.with(|r| r.statistics_candidates()).unwrap();
    assert!(candidates
        .iter()
        .any(|(patient, item)| patient.as_deref() == Some("p16")
            && item
                .facts
                .codes
                .iter()
                .any(|c| c.code == extract::FIT_NOTE_CODE)));
    let missing = ConditionMap::with_practice_file(Path::new("/nonexistent/conditions.txt"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/conditions.txt"), "{missing}");
}
