//! What access decisions need to know about a resource, read once at ingest and stored beside
//! it: its codes, `meta.security` labels, references, patient, dates and (for `Consent`) the
//! preference it records. Extraction validates the parts it reads and refuses what it cannot use.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{is_valid_nhs_number, NHS_NUMBER_SYSTEM, ODS_SYSTEM};

/// Resource types held per patient (each needs a `subject` or `patient` reference).
pub const PATIENT_SCOPED_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "Condition",
    "Consent",
    "DiagnosticReport",
    "Encounter",
    "Flag",
    "Immunization",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Procedure",
    "ServiceRequest",
];

/// Resource types shared across patients (referenced from patients' items).
pub const SHARED_TYPES: &[&str] = &[
    "Location",
    "Medication",
    "Organization",
    "Practitioner",
    "PractitionerRole",
];

/// A code from a terminology.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
}

impl Coding {
    pub fn new(system: &str, code: &str) -> Coding {
        Coding {
            system: system.to_owned(),
            code: code.to_owned(),
        }
    }

    pub fn is(&self, system: &str, code: &str) -> bool {
        self.system == system && self.code == code
    }
}

/// How an item names its patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PatientRef {
    /// `Patient/{id}`.
    Id(String),
    /// A logical reference by NHS number.
    NhsNumber(String),
}

/// The facts about one resource.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ItemFacts {
    pub resource_type: String,
    pub id: String,
    /// For a Patient, its NHS number.
    pub nhs_number: Option<String>,
    /// For a patient-scoped item, its patient.
    pub patient: Option<PatientRef>,
    /// Every coding anywhere in the resource outside `meta`.
    pub codes: Vec<Coding>,
    /// `meta.security` labels.
    pub security: Vec<Coding>,
    /// Literal references (`Type/id`) to anything but the item's own patient.
    pub references: Vec<String>,
    /// The clinically relevant date (seconds since the Unix epoch), where the resource has one.
    pub date: Option<i64>,
    /// `clinicalStatus` code, or else `status`.
    pub status: Option<String>,
    pub consent: Option<ConsentFacts>,
    /// For the types whose section they decide (Observation, Flag, CarePlan): the codings of
    /// `category` and `code`.
    pub category_codes: Vec<Coding>,
}

impl ItemFacts {
    /// `Type/id`, the form references use.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }

    /// Whether `reference` (`Type/id`) names this resource, without building the string.
    pub fn is_named_by(&self, reference: &str) -> bool {
        reference.split_once('/') == Some((self.resource_type.as_str(), self.id.as_str()))
    }

    /// The stored form: compact binary, since every request decodes every item of a patient.
    pub fn encode(&self) -> Result<Vec<u8>, FactsError> {
        postcard::to_stdvec(self).map_err(|e| FactsError(format!("cannot record facts: {e}")))
    }

    /// Reads the stored form; `None` if the bytes are not facts.
    pub fn decode(stored: &[u8]) -> Option<ItemFacts> {
        match postcard::take_from_bytes(stored) {
            Ok((facts, [])) => Some(facts),
            _ => None,
        }
    }
}

/// What a `Consent` says, in the terms SPEC §6 uses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ConsentFacts {
    /// `status` is `active`.
    pub active: bool,
    /// `scope` is `patient-privacy`.
    pub patient_privacy: bool,
    pub categories: Vec<Coding>,
    /// `dateTime`, seconds since the Unix epoch.
    pub date_time: Option<i64>,
    /// `provision.type` is `permit`.
    pub permit: bool,
    /// `provision.securityLabel`.
    pub security_labels: Vec<Coding>,
    /// ODS codes of `provision.actor[].reference.identifier`.
    pub actor_ods_codes: Vec<String>,
    /// `provision.period`, seconds since the Unix epoch.
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
}

/// Why a resource cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FactsError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, FactsError> {
    Err(FactsError(message.into()))
}

/// FHIR `id`: 1 to 64 of `[A-Za-z0-9-.]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Reads and checks the facts of one resource.
pub fn extract_facts(resource: &Value) -> Result<ItemFacts, FactsError> {
    let Some(object) = resource.as_object() else {
        return fail("not a JSON object");
    };
    let Some(resource_type) = object.get("resourceType").and_then(Value::as_str) else {
        return fail("missing resourceType");
    };
    let patient_scoped = PATIENT_SCOPED_TYPES.contains(&resource_type);
    if !patient_scoped && resource_type != "Patient" && !SHARED_TYPES.contains(&resource_type) {
        return fail(format!("unsupported resourceType {resource_type:?}"));
    }
    let Some(id) = object.get("id").and_then(Value::as_str) else {
        return fail(format!("{resource_type} has no id"));
    };
    if !is_valid_id(id) {
        return fail(format!("{resource_type} id {id:?} is not a valid FHIR id"));
    }
    let mut facts = ItemFacts {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        ..ItemFacts::default()
    };
    if let Some(security) = object.get("meta").and_then(|m| m.get("security")) {
        facts.security = codings_in_list(security);
    }
    for (key, value) in object {
        if key != "meta" {
            collect_codings(key, value, &mut facts.codes);
        }
    }
    facts.codes.sort();
    facts.codes.dedup();

    if resource_type == "Patient" {
        facts.nhs_number = Some(patient_nhs_number(object)?);
    }
    if patient_scoped {
        let field = ["subject", "patient"]
            .into_iter()
            .find_map(|key| object.get(key));
        let Some(reference) = field else {
            return fail(format!("{resource_type}/{id} has no subject or patient"));
        };
        facts.patient =
            Some(patient_reference(reference).map_err(|e| {
                FactsError(format!("{resource_type}/{id} subject/patient: {}", e.0))
            })?);
    }
    let own_patient = match &facts.patient {
        Some(PatientRef::Id(patient_id)) => Some(format!("Patient/{patient_id}")),
        _ => None,
    };
    for (key, value) in object {
        if key != "meta" && key != "contained" {
            collect_references(value, &mut facts.references)?;
        }
    }
    facts
        .references
        .retain(|r| Some(r) != own_patient.as_ref() && !r.starts_with("Patient/"));
    facts.references.sort();
    facts.references.dedup();

    facts.date = clinical_date(object)?;
    facts.status = object
        .get("clinicalStatus")
        .map(codings_in_concept)
        .and_then(|codes| codes.into_iter().next().map(|c| c.code))
        .or_else(|| {
            object
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    if resource_type == "Consent" {
        facts.consent = Some(consent_facts(object)?);
    }
    if matches!(resource_type, "Observation" | "Flag" | "CarePlan") {
        facts.category_codes = ["category", "code"]
            .into_iter()
            .filter_map(|key| object.get(key))
            .flat_map(|value| match value {
                Value::Array(concepts) => concepts.iter().flat_map(codings_in_concept).collect(),
                concept => codings_in_concept(concept),
            })
            .collect();
    }
    Ok(facts)
}

fn patient_nhs_number(object: &serde_json::Map<String, Value>) -> Result<String, FactsError> {
    let identifiers = object.get("identifier").and_then(Value::as_array);
    let nhs = identifiers
        .into_iter()
        .flatten()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str));
    match nhs {
        Some(number) if is_valid_nhs_number(number) => Ok(number.to_owned()),
        Some(number) => fail(format!(
            "Patient NHS number {number:?} is not 10 digits with a valid check digit"
        )),
        None => fail(format!("Patient has no identifier in {NHS_NUMBER_SYSTEM}")),
    }
}

fn patient_reference(reference: &Value) -> Result<PatientRef, FactsError> {
    if let Some(literal) = reference.get("reference").and_then(Value::as_str) {
        return match split_reference(literal) {
            Some(("Patient", id)) => Ok(PatientRef::Id(id.to_owned())),
            _ => fail(format!("{literal:?} is not a Patient reference")),
        };
    }
    let identifier = reference.get("identifier");
    let system = identifier
        .and_then(|i| i.get("system"))
        .and_then(Value::as_str);
    let value = identifier
        .and_then(|i| i.get("value"))
        .and_then(Value::as_str);
    match (system, value) {
        (Some(NHS_NUMBER_SYSTEM), Some(number)) if is_valid_nhs_number(number) => {
            Ok(PatientRef::NhsNumber(number.to_owned()))
        }
        (Some(NHS_NUMBER_SYSTEM), Some(number)) => fail(format!("invalid NHS number {number:?}")),
        _ => fail("neither a Patient reference nor an NHS number identifier"),
    }
}

/// Splits `Type/id`, or the last two segments of an absolute URL, into type and id.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.split('#').next().unwrap_or(reference);
    let mut segments = reference.rsplit('/');
    let id = segments.next()?;
    let resource_type = segments.next()?;
    let type_ok = resource_type
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
        && resource_type.chars().all(|c| c.is_ascii_alphabetic());
    (type_ok && is_valid_id(id)).then_some((resource_type, id))
}

fn collect_codings(key: &str, value: &Value, out: &mut Vec<Coding>) {
    match value {
        Value::Array(_) if key == "coding" => out.extend(codings_in_list(value)),
        Value::Array(items) => items.iter().for_each(|v| collect_codings(key, v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| collect_codings(k, v, out)),
        _ => {}
    }
}

fn codings_in_list(value: &Value) -> Vec<Coding> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let system = c.get("system")?.as_str()?;
            let code = c.get("code")?.as_str()?;
            Some(Coding::new(system, code))
        })
        .collect()
}

fn codings_in_concept(concept: &Value) -> Vec<Coding> {
    concept
        .get("coding")
        .map(codings_in_list)
        .unwrap_or_default()
}

fn collect_references(value: &Value, out: &mut Vec<String>) -> Result<(), FactsError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|v| collect_references(v, out)),
        Value::Object(map) => {
            if let Some(Value::String(literal)) = map.get("reference") {
                if literal.starts_with('#') {
                    return Ok(());
                }
                let Some((resource_type, id)) = split_reference(literal) else {
                    return fail(format!("reference {literal:?} is not of the form Type/id"));
                };
                out.push(format!("{resource_type}/{id}"));
            }
            map.values().try_for_each(|v| collect_references(v, out))
        }
        _ => Ok(()),
    }
}

fn clinical_date(object: &serde_json::Map<String, Value>) -> Result<Option<i64>, FactsError> {
    const DATE_FIELDS: &[(&str, Option<&str>)] = &[
        ("effectiveDateTime", None),
        ("effectivePeriod", Some("start")),
        ("authoredOn", None),
        ("occurrenceDateTime", None),
        ("performedDateTime", None),
        ("performedPeriod", Some("start")),
        ("onsetDateTime", None),
        ("recordedDate", None),
        ("dateAsserted", None),
        ("issued", None),
        ("period", Some("start")),
        ("created", None),
    ];
    for (field, inner) in DATE_FIELDS {
        let value = match (object.get(*field), inner) {
            (Some(v), Some(inner)) => v.get(*inner),
            (v, None) => v,
            (None, _) => None,
        };
        if let Some(text) = value.and_then(Value::as_str) {
            return parse_fhir_date_time(text)
                .map(Some)
                .ok_or_else(|| FactsError(format!("{field} {text:?} is not a FHIR dateTime")));
        }
    }
    Ok(None)
}

fn consent_facts(object: &serde_json::Map<String, Value>) -> Result<ConsentFacts, FactsError> {
    let provision = object.get("provision");
    let date = |value: Option<&Value>, what: &str| -> Result<Option<i64>, FactsError> {
        match value.and_then(Value::as_str) {
            None => Ok(None),
            Some(text) => parse_fhir_date_time(text)
                .map(Some)
                .ok_or_else(|| FactsError(format!("Consent {what} {text:?} is not a dateTime"))),
        }
    };
    let period = provision.and_then(|p| p.get("period"));
    let actor_ods_codes = provision
        .and_then(|p| p.get("actor"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|actor| {
            let identifier = actor.get("reference")?.get("identifier")?;
            (identifier.get("system")?.as_str()? == ODS_SYSTEM)
                .then(|| identifier.get("value")?.as_str().map(str::to_owned))?
        })
        .collect();
    Ok(ConsentFacts {
        active: object.get("status").and_then(Value::as_str) == Some("active"),
        patient_privacy: object
            .get("scope")
            .map(codings_in_concept)
            .unwrap_or_default()
            .iter()
            .any(|c| c.code == "patient-privacy"),
        categories: object
            .get("category")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(codings_in_concept)
            .collect(),
        date_time: date(object.get("dateTime"), "dateTime")?,
        permit: provision
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            == Some("permit"),
        security_labels: provision
            .and_then(|p| p.get("securityLabel"))
            .map(codings_in_list)
            .unwrap_or_default(),
        actor_ods_codes,
        period_start: date(
            period.and_then(|p| p.get("start")),
            "provision.period.start",
        )?,
        // A date-only end means the whole of that day.
        period_end: date(period.and_then(|p| p.get("end")), "provision.period.end")?.map(|end| {
            let date_only = period
                .and_then(|p| p.get("end"))
                .and_then(Value::as_str)
                .is_some_and(|t| t.len() <= 10);
            if date_only {
                end + 86_399
            } else {
                end
            }
        }),
    })
}

/// Parses a FHIR `date`/`dateTime`/`instant` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or RFC 3339) to
/// seconds since the Unix epoch; partial dates take their first moment, in UTC.
pub fn parse_fhir_date_time(text: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    if text.len() > 10 {
        return time::OffsetDateTime::parse(text, &Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp());
    }
    let mut parts = text.split('-');
    let year: i32 = parts.next().filter(|y| y.len() == 4)?.parse().ok()?;
    let month: u8 = match parts.next() {
        Some(m) if m.len() == 2 => m.parse().ok()?,
        Some(_) => return None,
        None => 1,
    };
    let day: u8 = match parts.next() {
        Some(d) if d.len() == 2 => d.parse().ok()?,
        Some(_) => return None,
        None => 1,
    };
    if parts.next().is_some() {
        return None;
    }
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extracts_codes_labels_references_and_patient() {
        let facts = extract_facts(&json!({
            "resourceType": "MedicationRequest", "id": "mr1",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "subject": {"reference": "Patient/p1"},
            "medicationReference": {"reference": "Medication/m1"},
            "reasonReference": [{"reference": "Condition/c1"}],
            "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "1234"}]}],
            "authoredOn": "2024-03-01"
        }))
        .unwrap();
        assert_eq!(facts.patient, Some(PatientRef::Id("p1".into())));
        assert_eq!(facts.references, ["Condition/c1", "Medication/m1"]);
        assert_eq!(facts.codes, [Coding::new("http://snomed.info/sct", "1234")]);
        assert_eq!(facts.security.len(), 1);
        assert_eq!(facts.date, parse_fhir_date_time("2024-03-01T00:00:00Z"));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases = [
            (json!([]), "not a JSON object"),
            (json!({"id": "x"}), "missing resourceType"),
            (
                json!({"resourceType": "Basic", "id": "x"}),
                "unsupported resourceType",
            ),
            (
                json!({"resourceType": "Condition", "id": "x y"}),
                "not a valid FHIR id",
            ),
            (
                json!({"resourceType": "Condition", "id": "c"}),
                "no subject or patient",
            ),
            (
                json!({"resourceType": "Patient", "id": "p", "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "1234567890"}]}),
                "valid check digit",
            ),
            (
                json!({"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"}, "onsetDateTime": "yesterday"}),
                "not a FHIR dateTime",
            ),
        ];
        for (resource, expected) in cases {
            let error = extract_facts(&resource).unwrap_err();
            assert!(error.0.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn reads_consent_provisions() {
        let facts = extract_facts(&json!({
            "resourceType": "Consent", "id": "c1", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "319951000000105"}]}],
            "patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}},
            "dateTime": "2024-01-02T10:00:00+00:00",
            "provision": {"type": "permit", "period": {"start": "2024-01-01", "end": "2025-01-01"},
                "actor": [{"reference": {"identifier": {"system": ODS_SYSTEM, "value": "RX8"}}}]}
        }))
        .unwrap();
        let consent = facts.consent.unwrap();
        assert!(consent.active && consent.patient_privacy && consent.permit);
        assert_eq!(consent.actor_ods_codes, ["RX8"]);
        assert_eq!(
            facts.patient,
            Some(PatientRef::NhsNumber("9434765919".into()))
        );
        assert_eq!(
            consent.period_end,
            parse_fhir_date_time("2025-01-01T23:59:59Z"),
            "a date-only end covers its whole day"
        );
    }
}
