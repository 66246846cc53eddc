//! Statistical extracts (SPEC §12): the practice's anonymous fit-note figures, counted from the
//! replica, grouped as NHS England's fit note statistics are, with disclosure control applied
//! and Type 1 opt-outs left out. The counting and the control are pure; `run` reads the replica.
//!
//! What it guarantees: every published count is `*` or a multiple of 5; no patient with a
//! Type 1 opt-out (an active Consent with category SNOMED 827241000000103, or an Observation
//! coded with it) contributes; the CSV holds only category labels, the sub-ICB code, the
//! period's bounds and the run date, never anything read from a patient but those categories.
//! What it does not: stop the same period being extracted twice (see `disclosure`).

pub mod conditions;
pub mod disclosure;
pub mod signature;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use time::Date;

use crate::replica::{ReplicaError, ReplicaReader};
pub use conditions::{ConditionMap, ConditionType};
pub use disclosure::{publish, Published};
use mig_policy::fhir::{ItemFacts, SNOMED};

/// SPEC §12: the fit-note Observation code ("Med3 certificate issued to patient").
pub const FIT_NOTE_CODE: &str = "1331000000103";
/// The system of a fit note's component codes and of its fitness values.
pub const FIT_NOTE_SYSTEM: &str = "urn:mig:fit-note";
/// The advice boxes; any ticked counts as "adaptations recommended".
pub const ADVICE_BOXES: [&str; 4] = [
    "phased-return",
    "altered-hours",
    "amended-duties",
    "workplace-adaptations",
];
/// The CSV's columns, in order (SPEC §12: the count column is `count`).
pub const COLUMNS: [&str; 10] = [
    "sub_icb_location_code",
    "period_start",
    "period_end",
    "extract_date",
    "gender",
    "diagnosis",
    "fit_note_duration",
    "fitness_for_work",
    "adaptations_recommended",
    "count",
];

/// Why an extract could not be made. Each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// A line of a condition list is not `CONCEPT ICD10`.
    #[error("condition list {source_name} line {line}: {reason}")]
    ConditionList {
        source_name: String,
        line: usize,
        reason: String,
    },
    /// The practice's condition list named in the config cannot be read.
    #[error("condition list {} (fix extracts.condition_types_file in the config)", path.display())]
    ConditionListFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A date is not YYYY-MM-DD.
    #[error("--{flag}: {value:?} is not a date like 2025-04-01")]
    BadDate { flag: &'static str, value: String },
    /// The period ends before it starts (inclusive bounds: there is no day in it).
    #[error("the period is empty: --to {to} is before --from {from}")]
    EmptyPeriod { from: Date, to: Date },
    /// The period has not ended yet: its fit notes are not all issued.
    #[error("the period ends in the future: --to {to} is after today ({today}); extract a period that has ended")]
    FuturePeriod { to: Date, today: Date },
    /// No sub-ICB location code in the config.
    #[error("no sub-ICB location code is configured: set extracts.sub_icb in the config (migctl init --sub-icb CODE), then restart migd")]
    NoSubIcb,
    /// Nothing to publish once opted-out patients are left out.
    #[error("no fit notes were issued from {from} to {to} (once patients with a Type 1 opt-out are left out): no extract was written")]
    NoFitNotes { from: Date, to: Date },
    /// The replica could not be read.
    #[error("reading the replica")]
    Replica(#[from] ReplicaError),
    /// The signature could not be made.
    #[error("signing the extract with the TPM audit key: {0}")]
    Sign(String),
}

/// The requested period, both bounds included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Date,
    pub to: Date,
}

/// Reads `YYYY-MM-DD`.
pub fn parse_date(flag: &'static str, value: &str) -> Result<Date, ExtractError> {
    let bad = || ExtractError::BadDate {
        flag,
        value: value.chars().take(40).collect(),
    };
    if value.len() != 10 {
        return Err(bad());
    }
    Date::parse(
        value,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| bad())
}

impl Period {
    /// Checks a requested period against today (UTC): not reversed, not still running.
    pub fn new(from: &str, to: &str, today: Date) -> Result<Period, ExtractError> {
        let from = parse_date("from", from)?;
        let to = parse_date("to", to)?;
        if to < from {
            return Err(ExtractError::EmptyPeriod { from, to });
        }
        if to > today {
            return Err(ExtractError::FuturePeriod { to, today });
        }
        Ok(Period { from, to })
    }

    pub fn contains(&self, date: Date) -> bool {
        (self.from..=self.to).contains(&date)
    }
}

/// A sub-ICB location code (the former CCG code): 3 or 5 upper-case letters and digits
/// (`16C`, `X2C4Y`).
pub fn is_sub_icb_code(code: &str) -> bool {
    matches!(code.len(), 3 | 5)
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gender {
    Female,
    Male,
    /// FHIR `other`, `unknown` or none: grouped, as they are few.
    Unknown,
}

impl Gender {
    pub const ALL: [Gender; 3] = [Gender::Female, Gender::Male, Gender::Unknown];

    pub fn label(self) -> &'static str {
        match self {
            Gender::Female => "Female",
            Gender::Male => "Male",
            Gender::Unknown => "Unknown",
        }
    }

    /// From a Patient resource's JSON.
    pub fn of_patient(body: &str) -> Gender {
        #[derive(serde::Deserialize)]
        struct Patient {
            gender: Option<String>,
        }
        match serde_json::from_str::<Patient>(body)
            .ok()
            .and_then(|p| p.gender)
            .as_deref()
        {
            Some("female") => Gender::Female,
            Some("male") => Gender::Male,
            _ => Gender::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fitness {
    NotFit,
    MayBeFit,
}

impl Fitness {
    pub const ALL: [Fitness; 2] = [Fitness::NotFit, Fitness::MayBeFit];

    pub fn label(self) -> &'static str {
        match self {
            Fitness::NotFit => "Not fit for work",
            Fitness::MayBeFit => "May be fit for work",
        }
    }
}

/// How long a note covers, in the published statistics' week bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DurationBand {
    UpTo1Week,
    From1To2Weeks,
    From2To4Weeks,
    From4To12Weeks,
    Over12Weeks,
}

impl DurationBand {
    pub const ALL: [DurationBand; 5] = [
        DurationBand::UpTo1Week,
        DurationBand::From1To2Weeks,
        DurationBand::From2To4Weeks,
        DurationBand::From4To12Weeks,
        DurationBand::Over12Weeks,
    ];

    pub fn of_days(days: u32) -> DurationBand {
        match days {
            0..=7 => DurationBand::UpTo1Week,
            8..=14 => DurationBand::From1To2Weeks,
            15..=28 => DurationBand::From2To4Weeks,
            29..=84 => DurationBand::From4To12Weeks,
            _ => DurationBand::Over12Weeks,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DurationBand::UpTo1Week => "Up to 1 week",
            DurationBand::From1To2Weeks => "1 to 2 weeks",
            DurationBand::From2To4Weeks => "2 to 4 weeks",
            DurationBand::From4To12Weeks => "4 to 12 weeks",
            DurationBand::Over12Weeks => "Over 12 weeks",
        }
    }
}

/// One row's categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub gender: Gender,
    pub condition: ConditionType,
    pub duration: DurationBand,
    pub fitness: Fitness,
    pub adaptations: bool,
}

/// A fit note as read from its Observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitNote {
    /// `effectiveDateTime`'s date: the day it was issued.
    pub issued: Date,
    pub fitness: Fitness,
    pub duration_days: u32,
    /// The SNOMED CT concept of the condition, if one is recorded.
    pub condition: Option<String>,
    /// Any advice box ticked.
    pub adaptations: bool,
}

fn coding_code<'a>(concept: &'a Value, system: &str) -> Option<&'a str> {
    concept["coding"]
        .as_array()?
        .iter()
        .find(|c| c["system"].as_str() == Some(system))
        .and_then(|c| c["code"].as_str())
}

/// Reads a fit-note Observation's fields (SPEC §12). `Err` says what is missing; such a note
/// is reported to the operator, not counted.
pub fn read_fit_note(body: &Value) -> Result<FitNote, String> {
    let when = body["effectiveDateTime"]
        .as_str()
        .ok_or("no effectiveDateTime")?;
    let issued = when
        .get(..10)
        .and_then(|d| parse_date("from", d).ok())
        .ok_or("effectiveDateTime is not a full date")?;
    let mut fitness = None;
    let mut duration = None;
    let mut condition = None;
    let mut adaptations = false;
    for component in body["component"].as_array().into_iter().flatten() {
        let Some(name) = coding_code(&component["code"], FIT_NOTE_SYSTEM) else {
            continue;
        };
        match name {
            "fitness" => {
                fitness = match coding_code(&component["valueCodeableConcept"], FIT_NOTE_SYSTEM) {
                    Some("unfit") => Some(Fitness::NotFit),
                    Some("may-be-fit") => Some(Fitness::MayBeFit),
                    _ => return Err("fitness is neither unfit nor may-be-fit".into()),
                }
            }
            "duration" => {
                let q = &component["valueQuantity"];
                let value = q["value"].as_f64().filter(|v| v.is_finite() && *v >= 0.0);
                let days = match (q["system"].as_str(), q["code"].as_str(), value) {
                    (Some("http://unitsofmeasure.org"), Some("d"), Some(v)) => v,
                    (Some("http://unitsofmeasure.org"), Some("wk"), Some(v)) => v * 7.0,
                    _ => return Err("duration is not a quantity in UCUM d or wk".into()),
                };
                duration = Some(days.ceil().min(f64::from(u32::MAX)) as u32);
            }
            "condition" => {
                condition =
                    coding_code(&component["valueCodeableConcept"], SNOMED).map(str::to_owned);
            }
            box_name if ADVICE_BOXES.contains(&box_name) => {
                adaptations |= component["valueBoolean"].as_bool() == Some(true);
            }
            _ => {}
        }
    }
    Ok(FitNote {
        issued,
        fitness: fitness.ok_or("no fitness component")?,
        duration_days: duration.ok_or("no duration component")?,
        condition,
        adaptations,
    })
}

/// An item the replica's statistics index found: maybe a fit note, maybe a Type 1 opt-out.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub patient_id: Option<String>,
    pub facts: ItemFacts,
    pub body: String,
}

/// What `select` found.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// Fit notes in the period, by patient id, opted-out patients already left out.
    pub notes: Vec<(String, FitNote)>,
    /// Patients with a Type 1 opt-out (whether or not they had notes in the period).
    pub opted_out: BTreeSet<String>,
    /// Notes in the period left out for an opt-out.
    pub notes_left_out: u64,
    /// Fit notes that could not be read (`Observation/id: why`); not counted.
    pub unreadable: Vec<String>,
}

fn is_fit_note(facts: &ItemFacts) -> bool {
    facts.resource_type == "Observation"
        && facts.codes.iter().any(|c| c.is(SNOMED, FIT_NOTE_CODE))
        && !matches!(
            facts.status.as_deref(),
            Some("entered-in-error" | "cancelled")
        )
}

fn is_opt_out(facts: &ItemFacts, now: i64) -> bool {
    match (&facts.consent, facts.resource_type.as_str()) {
        (Some(consent), "Consent") => {
            mig_policy::preferences(std::slice::from_ref(consent), now).type1_opt_out
        }
        (None, "Observation") => mig_policy::type1_opt_out_in_items(std::slice::from_ref(facts)),
        _ => false,
    }
}

/// Picks the fit notes issued in `period` of patients without a Type 1 opt-out. `now` is the
/// time (Unix seconds) the opt-outs are judged at.
pub fn select(candidates: &[Candidate], period: &Period, now: i64) -> Selection {
    let mut selection = Selection::default();
    for c in candidates {
        if let Some(patient) = &c.patient_id {
            if is_opt_out(&c.facts, now) {
                selection.opted_out.insert(patient.clone());
            }
        }
    }
    for c in candidates {
        let Some(patient) = &c.patient_id else {
            continue;
        };
        if !is_fit_note(&c.facts) {
            continue;
        }
        let read = serde_json::from_str::<Value>(&c.body)
            .map_err(|_| "not JSON".to_string())
            .and_then(|body| read_fit_note(&body));
        match read {
            Ok(note) if period.contains(note.issued) => {
                if selection.opted_out.contains(patient) {
                    selection.notes_left_out += 1;
                } else {
                    selection.notes.push((patient.clone(), note));
                }
            }
            Ok(_) => {}
            // An unreadable note of an opted-out patient is not reported: it is not counted
            // either way, and its id would only point at that patient.
            Err(_) if selection.opted_out.contains(patient) => {}
            Err(why) => selection
                .unreadable
                .push(format!("Observation/{}: {why}", c.facts.id)),
        }
    }
    selection
}

/// Counts notes per group; `gender` gives each note's patient's gender.
pub fn tabulate(
    notes: &[(String, FitNote)],
    gender: impl Fn(&str) -> Gender,
    conditions: &ConditionMap,
) -> BTreeMap<GroupKey, u64> {
    let mut cells = BTreeMap::new();
    for (patient, note) in notes {
        let key = GroupKey {
            gender: gender(patient),
            condition: note
                .condition
                .as_deref()
                .map_or(ConditionType::Unknown, |c| conditions.condition_type(c)),
            duration: DurationBand::of_days(note.duration_days),
            fitness: note.fitness,
            adaptations: note.adaptations,
        };
        *cells.entry(key).or_insert(0) += 1;
    }
    cells
}

/// The values written in every row besides the categories.
#[derive(Debug, Clone)]
pub struct CsvContext {
    pub sub_icb: String,
    pub period: Period,
    pub run_date: Date,
}

fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The published CSV: a header row, then one row per group that has at least one note, in a
/// fixed order, each count passed through [`publish`]. No totals: a total beside a suppressed
/// cell would give it away by subtraction.
pub fn render_csv(context: &CsvContext, cells: &BTreeMap<GroupKey, u64>) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    let fixed = [
        context.sub_icb.clone(),
        context.period.from.to_string(),
        context.period.to.to_string(),
        context.run_date.to_string(),
    ];
    for (key, count) in cells.iter().filter(|(_, n)| **n > 0) {
        let published = publish(*count).to_string();
        let values = [
            key.gender.label(),
            key.condition.label(),
            key.duration.label(),
            key.fitness.label(),
            if key.adaptations { "Yes" } else { "No" },
            published.as_str(),
        ];
        let mut first = true;
        for value in fixed.iter().map(String::as_str).chain(values) {
            if !first {
                out.push(',');
            }
            first = false;
            csv_field(&mut out, value);
        }
        out.push_str("\r\n");
    }
    out
}

/// A finished extract, before it is signed.
#[derive(Debug, Clone)]
pub struct FitNoteExtract {
    pub csv: String,
    /// Data rows (header excluded).
    pub rows: usize,
    /// Fit notes counted (before disclosure control); for the operator, never published.
    pub notes: u64,
    /// Notes in the period left out for a Type 1 opt-out; for the operator.
    pub notes_left_out: u64,
    pub unreadable: Vec<String>,
}

/// The whole pure part: select, tabulate, control, render. Refuses an empty result.
pub fn build(
    candidates: &[Candidate],
    genders: &HashMap<String, Gender>,
    context: &CsvContext,
    now: i64,
    conditions: &ConditionMap,
) -> Result<FitNoteExtract, ExtractError> {
    let selection = select(candidates, &context.period, now);
    finish(selection, genders, context, conditions)
}

fn finish(
    selection: Selection,
    genders: &HashMap<String, Gender>,
    context: &CsvContext,
    conditions: &ConditionMap,
) -> Result<FitNoteExtract, ExtractError> {
    if !is_sub_icb_code(&context.sub_icb) {
        return Err(ExtractError::NoSubIcb);
    }
    if selection.notes.is_empty() {
        return Err(ExtractError::NoFitNotes {
            from: context.period.from,
            to: context.period.to,
        });
    }
    let cells = tabulate(
        &selection.notes,
        |p| genders.get(p).copied().unwrap_or(Gender::Unknown),
        conditions,
    );
    let csv = render_csv(context, &cells);
    Ok(FitNoteExtract {
        rows: cells.values().filter(|n| **n > 0).count(),
        csv,
        notes: selection.notes.len() as u64,
        notes_left_out: selection.notes_left_out,
        unreadable: selection.unreadable,
    })
}

/// What the extract reads from the replica: the selected notes and their patients' genders.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub selection: Selection,
    pub genders: HashMap<String, Gender>,
}

/// Reads what the extract needs. Call it inside one read transaction (`ReaderPool::with`), so
/// the notes, opt-outs and genders come from one consistent state of the replica.
pub fn gather(reader: &ReplicaReader, period: &Period, now: i64) -> Result<Gathered, ReplicaError> {
    let candidates: Vec<Candidate> = reader
        .statistics_candidates()?
        .into_iter()
        .map(|(patient_id, item)| Candidate {
            patient_id,
            facts: item.facts,
            body: item.body,
        })
        .collect();
    let selection = select(&candidates, period, now);
    let mut genders = HashMap::new();
    for (patient, _) in &selection.notes {
        if !genders.contains_key(patient) {
            let gender = reader
                .patient_body(patient)?
                .map_or(Gender::Unknown, |body| Gender::of_patient(&body));
            genders.insert(patient.clone(), gender);
        }
    }
    Ok(Gathered { selection, genders })
}

/// Tabulates, controls and renders what [`gather`] read.
pub fn finish_gathered(
    gathered: Gathered,
    context: &CsvContext,
    conditions: &ConditionMap,
) -> Result<FitNoteExtract, ExtractError> {
    finish(gathered.selection, &gathered.genders, context, conditions)
}

#[cfg(test)]
mod tests;
