//! The `$gpc.getstructuredrecord` request body: an R4 `Parameters` resource naming the patient,
//! the sections wanted and GP Connect 1.6's filters on them.
//!
//! Strict where it must be: a name that neither GP Connect 1.6 nor SPEC §3 defines, a repeat, a
//! part without its value, a malformed or future date, or a combination 1.6 forbids is refused
//! (422 INVALID_PARAMETER) rather than ignored, so a client never silently gets less than it
//! asked for. A parameter or part that 1.6 defines but this appliance does not implement is
//! accepted and named in `not_implemented`, for the Bundle's warning (1.6 version compatibility).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use mig_policy::fhir::{is_valid_nhs_number, parse_fhir_date_time, Section, NHS_NUMBER_SYSTEM};

/// Longest accepted body; a structured-record request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// GP Connect 1.6 top-level parameters with no section here: accepted with a warning.
const NOT_IMPLEMENTED_PARAMETERS: &[&str] = &["includeDiaryEntries"];

/// A search period: whole dates, both ends inclusive (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: Option<i64>,
    /// The last second of the end date.
    pub end: Option<i64>,
}

impl Period {
    /// Whether an item dated `date` falls in the period. An item with no date is kept:
    /// GP Connect returns undated information alongside what matches.
    pub fn admits(&self, date: Option<i64>) -> bool {
        let Some(date) = date else { return true };
        self.start.is_none_or(|s| date >= s) && self.end.is_none_or(|e| date <= e)
    }
}

/// One `includeProblems` repetition: a status and significance pair (either may be absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProblemFilter {
    /// `active` or `inactive`.
    pub status: Option<String>,
    /// `major` or `minor`.
    pub significance: Option<String>,
}

/// What the partner asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRequest {
    pub nhs_number: String,
    pub sections: BTreeSet<Section>,
    pub include_resolved_allergies: bool,
    /// `medicationSearchFromDate`, seconds since the Unix epoch.
    pub medication_from: Option<i64>,
    /// `includePrescriptionIssues` (default true): with false, only the authorisations
    /// (MedicationStatement and MedicationRequest with intent `plan`) are returned.
    pub include_prescription_issues: bool,
    /// One entry per `includeProblems` repetition; a problem matching any of them is returned.
    pub problem_filters: Vec<ProblemFilter>,
    /// Search periods by the parameter they belong to (`includeConsultations`,
    /// `includeUncategorisedData`, `includeInvestigations`, `includeReferrals`).
    pub search_periods: BTreeMap<&'static str, Period>,
    /// `includeNumberOfMostRecent` consultations.
    pub most_recent_consultations: Option<usize>,
    /// `includeImmunisations.includeNotGiven` (default false).
    pub include_not_given: bool,
    /// 1.6 parameters and parts accepted but not implemented (`name` or `name.part`), for the
    /// Bundle's NOT_IMPLEMENTED warnings.
    pub not_implemented: Vec<String>,
}

impl RecordRequest {
    /// A request for the patient alone (the Patient search).
    pub fn patient_only(nhs_number: String) -> RecordRequest {
        RecordRequest {
            nhs_number,
            sections: BTreeSet::new(),
            include_resolved_allergies: false,
            medication_from: None,
            include_prescription_issues: true,
            problem_filters: Vec::new(),
            search_periods: BTreeMap::new(),
            most_recent_consultations: None,
            include_not_given: false,
            not_implemented: Vec::new(),
        }
    }
}

/// Why the body was refused; each maps to one SPEC §5 code. The text names the parameter or
/// part at fault and goes to the partner as `diagnostics` (it never holds record data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParametersError {
    /// Not JSON, or not a Parameters resource (400 BAD_REQUEST).
    #[error("body: {0}")]
    Malformed(String),
    /// patientNHSNumber is not in the NHS number system (400 INVALID_IDENTIFIER_SYSTEM).
    #[error("patientNHSNumber system is not {NHS_NUMBER_SYSTEM}")]
    IdentifierSystem,
    /// patientNHSNumber fails the format or Modulus 11 check (400 INVALID_NHS_NUMBER).
    #[error("patientNHSNumber is not a valid NHS number")]
    NhsNumber,
    /// An unknown, repeated or malformed parameter or part (422 INVALID_PARAMETER).
    #[error("{0}")]
    Parameter(String),
}

fn parameter_error<T>(reason: impl Into<String>) -> Result<T, ParametersError> {
    Err(ParametersError::Parameter(reason.into()))
}

/// Parts that GP Connect 1.6 forbids alongside a parameter ("Not permitted parameter
/// combinations": a filter there would silently thin the linked information).
const FORBIDDEN_WITH: &[(&str, &[&str])] = &[
    (
        "includeConsultations",
        &[
            "includeMedication.medicationSearchFromDate",
            "includeUncategorisedData.uncategorisedDataSearchPeriod",
            "includeProblems.filterSignificance",
            "includeProblems.filterStatus",
            "includeReferrals.referralSearchPeriod",
            "includeDiaryEntries.diaryEntriesSearchDate",
            "includeImmunisations.includeNotGiven",
            "includeImmunisations.includeStatus",
        ],
    ),
    (
        "includeProblems",
        &[
            "includeMedication.medicationSearchFromDate",
            "includeUncategorisedData.uncategorisedDataSearchPeriod",
            "includeReferrals.referralSearchPeriod",
            "includeDiaryEntries.diaryEntriesSearchDate",
            "includeImmunisations.includeNotGiven",
            "includeImmunisations.includeStatus",
        ],
    ),
];

/// Parses the body; `now` (unix seconds) bounds the search dates, which may not be in the future.
pub fn parse(body: &[u8], now: i64) -> Result<RecordRequest, ParametersError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParametersError::Malformed("too large".into()));
    }
    // Strict: a repeated key (two patientNHSNumber values in one parameter) is refused.
    let value: Value = mig_policy::json::from_slice(body)
        .map_err(|e| ParametersError::Malformed(format!("not valid JSON: {e}")))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ParametersError::Malformed(
            "resourceType is not Parameters".into(),
        ));
    }
    let parameters = match value.get("parameter") {
        Some(Value::Array(parameters)) => parameters,
        _ => return parameter_error("parameter is missing or not an array"),
    };
    let mut nhs_number = None;
    let mut request = RecordRequest::patient_only(String::new());
    // Every `parameter.part` sent, for the combination rules.
    let mut sent_parts = BTreeSet::new();
    let mut top_level = BTreeSet::new();
    for parameter in parameters {
        let Some(parameter) = parameter.as_object() else {
            return parameter_error("a parameter is not an object");
        };
        let name = parameter
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ParametersError::Parameter("a parameter has no name".into()))?;
        if name == "patientNHSNumber" {
            if nhs_number.is_some() {
                return parameter_error("patientNHSNumber is repeated");
            }
            nhs_number = Some(patient_nhs_number(parameter)?);
            continue;
        }
        let section = Section::from_parameter_name(name);
        let Some(name) = section.map(Section::parameter_name).or_else(|| {
            NOT_IMPLEMENTED_PARAMETERS
                .iter()
                .copied()
                .find(|n| *n == name)
        }) else {
            return parameter_error(format!("unknown parameter {name:?}"));
        };
        // Only includeProblems may repeat (each repetition a status and significance pair).
        if !top_level.insert(name) && name != "includeProblems" {
            return parameter_error(format!("{name} is repeated"));
        }
        if parameter.keys().any(|k| k != "name" && k != "part") {
            return parameter_error(format!("{name} takes only parts, not a value"));
        }
        let parts = match parameter.get("part") {
            None => &[][..],
            Some(Value::Array(parts)) => &parts[..],
            Some(_) => return parameter_error(format!("{name}.part is not an array")),
        };
        let mut seen = BTreeSet::new();
        for part in parts {
            let part_name = part.get("name").and_then(Value::as_str).unwrap_or_default();
            if !seen.insert(part_name) {
                return parameter_error(format!("{name}.{part_name} is repeated"));
            }
            sent_parts.insert(format!("{name}.{part_name}"));
        }
        match section {
            Some(section) => {
                request.sections.insert(section);
                read_parts(name, parts, now, &mut request)?;
            }
            // Reported at the least granular level: the parameter, not its parts.
            None => request.not_implemented.push(name.to_owned()),
        }
    }
    request.nhs_number = nhs_number
        .ok_or_else(|| ParametersError::Parameter("patientNHSNumber is missing".into()))?;
    for (parameter, forbidden) in FORBIDDEN_WITH {
        if !top_level.contains(parameter) {
            continue;
        }
        if let Some(part) = forbidden.iter().find(|p| sent_parts.contains(**p)) {
            return parameter_error(format!("{part} may not be sent with {parameter}"));
        }
    }
    if request.search_periods.contains_key("includeConsultations")
        && request.most_recent_consultations.is_some()
    {
        return parameter_error(
            "includeConsultations.consultationSearchPeriod and includeNumberOfMostRecent may not both be sent",
        );
    }
    Ok(request)
}

fn patient_nhs_number(parameter: &Map<String, Value>) -> Result<String, ParametersError> {
    let Some(identifier) = parameter.get("valueIdentifier") else {
        return parameter_error("patientNHSNumber has no valueIdentifier");
    };
    if identifier.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
        return Err(ParametersError::IdentifierSystem);
    }
    match identifier.get("value").and_then(Value::as_str) {
        Some(value) if is_valid_nhs_number(value) => Ok(value.to_owned()),
        _ => Err(ParametersError::NhsNumber),
    }
}

/// A part's value of the given FHIR type, or the error naming the part.
fn value<'a>(part: &'a Value, what: &str, key: &str) -> Result<&'a Value, ParametersError> {
    part.get(key)
        .ok_or_else(|| ParametersError::Parameter(format!("{what} needs {key}")))
}

fn boolean(part: &Value, what: &str) -> Result<bool, ParametersError> {
    // The 1.6 page's full example sends includePrescriptionIssues as `"valueDate": true`: an
    // unambiguous boolean, accepted so that a consumer built from the example works.
    part.get("valueBoolean")
        .or_else(|| part.get("valueDate").filter(|v| v.is_boolean()))
        .and_then(Value::as_bool)
        .ok_or_else(|| ParametersError::Parameter(format!("{what} needs valueBoolean")))
}

/// A whole date (`YYYY-MM-DD`, no time or offset) not after today; its first second.
fn whole_date(text: Option<&str>, what: &str, now: i64) -> Result<i64, ParametersError> {
    let date = text
        .filter(|d| d.len() == 10)
        .and_then(parse_fhir_date_time)
        .ok_or_else(|| {
            ParametersError::Parameter(format!("{what} must be a whole date YYYY-MM-DD"))
        })?;
    if date > now {
        return parameter_error(format!("{what} is in the future"));
    }
    Ok(date)
}

fn period(part: &Value, what: &str, now: i64) -> Result<Period, ParametersError> {
    let period = value(part, what, "valuePeriod")?;
    let end_of = |key: &str| -> Result<Option<i64>, ParametersError> {
        match period.get(key) {
            None => Ok(None),
            Some(v) => whole_date(v.as_str(), &format!("{what}.{key}"), now).map(Some),
        }
    };
    let start = end_of("start")?;
    let end = end_of("end")?;
    if start.is_none() && end.is_none() {
        return parameter_error(format!("{what} needs a start or an end"));
    }
    if let (Some(start), Some(end)) = (start, end) {
        if start > end {
            return parameter_error(format!("{what}.start is after its end"));
        }
    }
    Ok(Period {
        start,
        end: end.map(|e| e + 86_399),
    })
}

fn code<'a>(part: &'a Value, what: &str, allowed: &[&str]) -> Result<&'a str, ParametersError> {
    match value(part, what, "valueCode")?.as_str() {
        Some(code) if allowed.contains(&code) => Ok(code),
        _ => parameter_error(format!("{what} must be one of {}", allowed.join(", "))),
    }
}

fn read_parts(
    name: &'static str,
    parts: &[Value],
    now: i64,
    request: &mut RecordRequest,
) -> Result<(), ParametersError> {
    let mut problem = ProblemFilter::default();
    let mut resolved_allergies = None;
    for part in parts {
        let part_name = part.get("name").and_then(Value::as_str).unwrap_or_default();
        let what = format!("{name}.{part_name}");
        match (name, part_name) {
            ("includeAllergies", "includeResolvedAllergies") => {
                resolved_allergies = Some(boolean(part, &what)?);
            }
            ("includeMedication", "medicationSearchFromDate") => {
                let date = value(part, &what, "valueDate")?.as_str();
                request.medication_from = Some(whole_date(date, &what, now)?);
            }
            ("includeMedication", "includePrescriptionIssues") => {
                request.include_prescription_issues = boolean(part, &what)?;
            }
            ("includeProblems", "filterStatus") => {
                problem.status = Some(code(part, &what, &["active", "inactive"])?.to_owned());
            }
            ("includeProblems", "filterSignificance") => {
                problem.significance = Some(code(part, &what, &["major", "minor"])?.to_owned());
            }
            ("includeConsultations", "consultationSearchPeriod")
            | ("includeInvestigations", "investigationSearchPeriod")
            | ("includeReferrals", "referralSearchPeriod")
            | ("includeUncategorisedData", "uncategorisedDataSearchPeriod") => {
                request
                    .search_periods
                    .insert(name, period(part, &what, now)?);
            }
            ("includeConsultations", "includeNumberOfMostRecent") => {
                let n = value(part, &what, "valuePositiveInt")?
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        ParametersError::Parameter(format!("{what} must be a positive integer"))
                    })?;
                request.most_recent_consultations = Some(usize::try_from(n).unwrap_or(usize::MAX));
            }
            ("includeImmunisations", "includeNotGiven") => {
                request.include_not_given = boolean(part, &what)?;
            }
            // Immunisation status Observations (consent and dissent) are not held apart here:
            // asking for them is answered with a warning; not asking is already what we do.
            ("includeImmunisations", "includeStatus") => {
                if boolean(part, &what)? {
                    request.not_implemented.push(what);
                }
            }
            _ => return parameter_error(format!("unknown part {name}.{part_name:?}")),
        }
    }
    if name == "includeAllergies" {
        request.include_resolved_allergies = resolved_allergies.ok_or_else(|| {
            ParametersError::Parameter(
                "includeAllergies needs the part includeResolvedAllergies".into(),
            )
        })?;
    }
    if name == "includeProblems" {
        request.problem_filters.push(problem);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-12-06T10:00:00Z.
    const NOW: i64 = 1_796_551_200;

    fn body(parameters: Value) -> Vec<u8> {
        json!({"resourceType": "Parameters", "parameter": parameters})
            .to_string()
            .into_bytes()
    }

    fn nhs(value: &str) -> Value {
        json!({"name": "patientNHSNumber", "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": value}})
    }

    fn date(text: &str) -> i64 {
        parse_fhir_date_time(text).unwrap()
    }

    #[test]
    fn reads_patient_sections_and_parts() {
        let request = parse(
            &body(json!([
                nhs("9434765919"),
                {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]},
                {"name": "includeMedication", "part": [
                    {"name": "medicationSearchFromDate", "valueDate": "2024-01-31"},
                    {"name": "includePrescriptionIssues", "valueBoolean": false}]},
                {"name": "includeEndOfLife"}
            ])),
            NOW,
        )
        .unwrap();
        assert_eq!(request.nhs_number, "9434765919");
        assert!(request.include_resolved_allergies);
        assert!(!request.include_prescription_issues);
        assert_eq!(request.medication_from, Some(date("2024-01-31")));
        assert!(request.problem_filters.is_empty());
        assert_eq!(
            request.sections.into_iter().collect::<Vec<_>>(),
            [Section::Allergies, Section::Medications, Section::EndOfLife]
        );
        assert!(request.not_implemented.is_empty());
    }

    #[test]
    fn reads_every_gp_connect_1_6_filter() {
        let request = parse(
            &body(json!([
                nhs("9434765919"),
                {"name": "includeProblems", "part": [
                    {"name": "filterStatus", "valueCode": "active"},
                    {"name": "filterSignificance", "valueCode": "major"}]},
                {"name": "includeProblems", "part": [{"name": "filterStatus", "valueCode": "inactive"}]},
                {"name": "includeInvestigations", "part": [{"name": "investigationSearchPeriod",
                    "valuePeriod": {"start": "2017-01-02", "end": "2017-07-02"}}]}
            ])),
            NOW,
        )
        .unwrap();
        assert_eq!(
            request.problem_filters,
            [
                ProblemFilter {
                    status: Some("active".into()),
                    significance: Some("major".into())
                },
                ProblemFilter {
                    status: Some("inactive".into()),
                    significance: None
                }
            ]
        );
        assert_eq!(
            request.search_periods["includeInvestigations"],
            Period {
                start: Some(date("2017-01-02")),
                end: Some(date("2017-07-02") + 86_399)
            }
        );
        assert!(
            request.not_implemented.is_empty(),
            "includeStatus false is honoured"
        );

        let referrals = parse(
            &body(
                json!([nhs("9434765919"), {"name": "includeReferrals", "part": [
                {"name": "referralSearchPeriod", "valuePeriod": {"start": "2016-12-25"}}]}]),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(referrals.search_periods["includeReferrals"].end, None);

        let consultations = parse(
            &body(
                json!([nhs("9434765919"), {"name": "includeConsultations", "part": [
                {"name": "includeNumberOfMostRecent", "valuePositiveInt": 3}]}]),
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(consultations.most_recent_consultations, Some(3));
    }

    #[test]
    fn names_what_1_6_defines_but_is_not_implemented() {
        let request = parse(
            &body(json!([
                nhs("9434765919"),
                {"name": "includeMedication"},
                {"name": "includeDiaryEntries", "part": [{"name": "diaryEntriesSearchDate", "valueDate": "2030-01-01"}]},
                {"name": "includeImmunisations", "part": [{"name": "includeStatus", "valueBoolean": true}]}
            ])),
            NOW,
        )
        .unwrap();
        assert_eq!(
            request.not_implemented,
            ["includeDiaryEntries", "includeImmunisations.includeStatus"]
        );
        assert!(request.include_prescription_issues, "default true");

        // The assurance suite's "one parameter, no clinical information": the patient alone.
        let alone = parse(&body(json!([nhs("9434765919")])), NOW).unwrap();
        assert!(alone.sections.is_empty() && alone.not_implemented.is_empty());
        let unsupported_only = parse(
            &body(json!([nhs("9434765919"), {"name": "includeDiaryEntries"}])),
            NOW,
        )
        .unwrap();
        assert_eq!(unsupported_only.not_implemented, ["includeDiaryEntries"]);
    }

    #[test]
    fn accepts_the_published_example_boolean_sent_as_value_date() {
        let request = parse(
            &body(
                json!([nhs("9434765919"), {"name": "includeMedication", "part": [
                {"name": "includePrescriptionIssues", "valueDate": false}]}]),
            ),
            NOW,
        )
        .unwrap();
        assert!(!request.include_prescription_issues);
    }

    #[test]
    fn maps_each_fault_to_its_code() {
        use ParametersError::*;
        type Expectation = fn(&ParametersError) -> bool;
        let with = |parameter: Value| body(json!([nhs("9434765919"), parameter]));
        let cases: Vec<(Vec<u8>, Expectation)> = vec![
            (b"{not json".to_vec(), |e| matches!(e, Malformed(_))),
            (
                json!({"resourceType": "Bundle"}).to_string().into_bytes(),
                |e| matches!(e, Malformed(_)),
            ),
            (
                body(
                    json!([{"name": "patientNHSNumber", "valueIdentifier": {"system": "https://example.org/mrn", "value": "9434765919"}}]),
                ),
                |e| *e == IdentifierSystem,
            ),
            (body(json!([nhs("9434765918")])), |e| *e == NhsNumber),
            (body(json!([nhs("943476591")])), |e| *e == NhsNumber),
            (
                body(json!([{"name": "includeProblems"}])),
                |e| matches!(e, Parameter(r) if r.contains("patientNHSNumber is missing")),
            ),
            (
                with(json!({"name": "includeEverything"})),
                |e| matches!(e, Parameter(r) if r.contains("unknown parameter \"includeEverything\"")),
            ),
            (
                body(
                    json!([nhs("9434765919"), {"name": "includeMedication"}, {"name": "includeMedication"}]),
                ),
                |e| matches!(e, Parameter(r) if r.contains("includeMedication is repeated")),
            ),
            (
                body(json!([nhs("9434765919"), nhs("9434765919")])),
                |e| matches!(e, Parameter(r) if r.contains("repeated")),
            ),
            (
                with(json!({"name": "includeAllergies"})),
                |e| matches!(e, Parameter(r) if r.contains("includeResolvedAllergies")),
            ),
            (
                with(
                    json!({"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueString": "yes"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("valueBoolean")),
            ),
            (
                with(
                    json!({"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "31/01/2024"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("medicationSearchFromDate must be a whole date")),
            ),
            (
                with(
                    json!({"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2024-01"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("whole date")),
            ),
            (
                with(
                    json!({"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2026-12-07"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("medicationSearchFromDate is in the future")),
            ),
            (
                with(
                    json!({"name": "includeMedication", "part": [{"name": "medicationSearchFromDate"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("needs valueDate")),
            ),
            (
                with(
                    json!({"name": "includeProblems", "part": [{"name": "filterStatus", "valueCode": "resolved"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("filterStatus must be one of active, inactive")),
            ),
            (
                with(
                    json!({"name": "includeProblems", "part": [{"name": "filterSignificance", "valueCode": "huge"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("filterSignificance")),
            ),
            (
                with(
                    json!({"name": "includeProblems", "part": [{"name": "includeStatus", "valueCode": "active"}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("unknown part includeProblems.\"includeStatus\"")),
            ),
            (
                with(json!({"name": "includeProblems", "valueBoolean": true})),
                |e| matches!(e, Parameter(r) if r.contains("only parts")),
            ),
            (
                with(
                    json!({"name": "includeConsultations", "part": [{"name": "consultationSearchPeriod", "valuePeriod": {"start": "2020-02-01", "end": "2020-01-01"}}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("consultationSearchPeriod.start is after")),
            ),
            (
                with(
                    json!({"name": "includeConsultations", "part": [{"name": "consultationSearchPeriod", "valuePeriod": {"end": "2027-01-01"}}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("consultationSearchPeriod.end is in the future")),
            ),
            (
                with(
                    json!({"name": "includeConsultations", "part": [{"name": "consultationSearchPeriod", "valuePeriod": {}}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("needs a start or an end")),
            ),
            (
                with(
                    json!({"name": "includeConsultations", "part": [{"name": "includeNumberOfMostRecent", "valuePositiveInt": 0}]}),
                ),
                |e| matches!(e, Parameter(r) if r.contains("positive integer")),
            ),
            (
                with(json!({"name": "includeConsultations", "part": [
                    {"name": "includeNumberOfMostRecent", "valuePositiveInt": 2},
                    {"name": "consultationSearchPeriod", "valuePeriod": {"start": "2020-01-01"}}]})),
                |e| matches!(e, Parameter(r) if r.contains("may not both be sent")),
            ),
            (
                body(json!([nhs("9434765919"), {"name": "includeConsultations"},
                    {"name": "includeProblems", "part": [{"name": "filterStatus", "valueCode": "active"}]}])),
                |e| matches!(e, Parameter(r) if r.contains("includeProblems.filterStatus may not be sent with includeConsultations")),
            ),
            (
                body(json!([nhs("9434765919"), {"name": "includeProblems"},
                    {"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2020-01-01"}]}])),
                |e| matches!(e, Parameter(r) if r.contains("medicationSearchFromDate may not be sent with includeProblems")),
            ),
        ];
        for (input, expected) in cases {
            let error = parse(&input, NOW).unwrap_err();
            assert!(
                expected(&error),
                "unexpected {error:?} for {}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
