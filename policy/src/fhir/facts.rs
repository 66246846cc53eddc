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
    /// Every coding anywhere in the resource, its `contained` resources included: any object
    /// with a string `system` and `code` (a `coding[]` member, a bare `Coding` in an extension,
    /// `valueCoding`, `Encounter.class`, an Observation component, a `meta` label).
    pub codes: Vec<Coding>,
    /// `meta.security` labels of the resource and of everything it contains.
    pub security: Vec<Coding>,
    /// Literal references (`Type/id`), its `contained` resources' included, to anything but
    /// the item's own `Patient/{id}` (another patient's is kept, so that it is never served).
    pub references: Vec<String>,
    /// NHS numbers named by an identifier anywhere in the item (a Reference by identifier,
    /// its own patient's included): one that is not the patient's is another patient.
    pub nhs_numbers: Vec<String>,
    /// The clinically relevant date (seconds since the Unix epoch), where the resource has one.
    pub date: Option<i64>,
    /// `clinicalStatus` code, or else `status`.
    pub status: Option<String>,
    pub consent: Option<ConsentFacts>,
    /// For a Patient: `deceasedBoolean` not false, or any `deceasedDateTime`.
    pub deceased: bool,
    /// For a Patient: `active` present and not true (the registration has ended).
    pub ended: bool,
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
    walk(resource, &mut facts)?;
    facts.codes.sort();
    facts.codes.dedup();
    facts.security.sort();
    facts.security.dedup();

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
    if let Some(PatientRef::Id(patient_id)) = &facts.patient {
        facts
            .references
            .retain(|r| r.strip_prefix("Patient/") != Some(patient_id.as_str()));
    }
    facts.references.sort();
    facts.references.dedup();
    facts.nhs_numbers.sort();
    facts.nhs_numbers.dedup();
    if resource_type == "Patient" {
        facts.deceased = object
            .get("deceasedBoolean")
            .is_some_and(|d| d != &Value::Bool(false))
            || object.contains_key("deceasedDateTime");
        facts.ended = object
            .get("active")
            .is_some_and(|a| a != &Value::Bool(true));
    }

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

/// Reads codings, security labels and references from everything in the resource, contained
/// resources included. Iterative, so no nesting depth can exhaust the stack.
fn walk(resource: &Value, facts: &mut ItemFacts) -> Result<(), FactsError> {
    let mut pending = vec![resource];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => {
                if let (Some(Value::String(system)), Some(Value::String(code))) =
                    (map.get("system"), map.get("code"))
                {
                    facts.codes.push(Coding::new(system, code));
                }
                if let (Some(Value::String(system)), Some(Value::String(value))) =
                    (map.get("system"), map.get("value"))
                {
                    if system == NHS_NUMBER_SYSTEM {
                        facts.nhs_numbers.push(value.clone());
                    }
                }
                if let Some(labels) = map.get("meta").and_then(|m| m.get("security")) {
                    facts.security.extend(codings_in_list(labels));
                }
                if let Some(Value::String(literal)) = map.get("reference") {
                    if !literal.starts_with('#') {
                        let Some((resource_type, id)) = split_reference(literal) else {
                            return fail(format!(
                                "reference {literal:?} is not of the form Type/id"
                            ));
                        };
                        facts.references.push(format!("{resource_type}/{id}"));
                    }
                }
                pending.extend(map.values());
            }
            _ => {}
        }
    }
    Ok(())
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
        assert_eq!(
            facts.codes,
            [
                Coding::new("http://snomed.info/sct", "1234"),
                Coding::new(
                    "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "R"
                )
            ]
        );
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

    #[test]
    fn contained_resources_count_as_the_item_s_own() {
        let facts = extract_facts(&json!({
            "resourceType": "MedicationRequest", "id": "mr1",
            "subject": {"reference": "Patient/p1"},
            "contained": [{"resourceType": "Condition", "id": "c",
                "meta": {"security": [{"system": "http://hl7.org/fhir/v3/Confidentiality", "code": "R"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "8098009"}]},
                "evidence": [{"detail": [{"reference": "Observation/o1"}]}],
                "subject": {"reference": "Patient/p2", "display": "Someone Else"}}],
            "reasonReference": [{"reference": "#c"}],
            "focus": [{"reference": "Patient/p3"}]
        }))
        .unwrap();
        assert_eq!(
            facts.security,
            [Coding::new("http://hl7.org/fhir/v3/Confidentiality", "R")]
        );
        assert!(facts
            .codes
            .contains(&Coding::new("http://snomed.info/sct", "8098009")));
        assert_eq!(
            facts.references,
            ["Observation/o1", "Patient/p2", "Patient/p3"],
            "other patients are kept, the own patient and #local are not"
        );
    }

    #[test]
    fn bare_codings_anywhere_are_read() {
        let facts = extract_facts(&json!({
            "resourceType": "Encounter", "id": "e",
            "subject": {"reference": "Patient/p1"},
            "class": {"system": "urn:a", "code": "1"},
            "extension": [{"url": "urn:x", "extension": [{"url": "urn:y", "valueCoding": {"system": "urn:b", "code": "2"}}]}],
            "reasonCode": [{"coding": [{"system": "urn:c", "code": "3"}]}]
        }))
        .unwrap();
        let systems: Vec<&str> = facts.codes.iter().map(|c| c.system.as_str()).collect();
        assert_eq!(systems, ["urn:a", "urn:b", "urn:c"]);
    }

    #[test]
    fn a_patient_s_deceased_and_active_flags_are_read_fail_closed() {
        let patient = |extra: Value| {
            let mut p = json!({"resourceType": "Patient", "id": "p",
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}]});
            if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(extra.clone());
            }
            extract_facts(&p).unwrap()
        };
        let plain = patient(json!({"active": true, "deceasedBoolean": false}));
        assert!(!plain.deceased && !plain.ended);
        assert!(patient(json!({"deceasedBoolean": true})).deceased);
        assert!(patient(json!({"deceasedBoolean": "yes"})).deceased);
        assert!(patient(json!({"deceasedDateTime": "2025-01-01"})).deceased);
        assert!(patient(json!({"active": false})).ended);
        assert!(patient(json!({"active": null})).ended);
    }

    #[test]
    fn deep_nesting_is_read_without_recursion() {
        let mut deep = json!({"system": "http://snomed.info/sct", "code": "8098009"});
        for _ in 0..10_000 {
            // Built by hand: `json!` would serialise `deep` again, recursively.
            let mut wrapper = serde_json::Map::new();
            wrapper.insert("extension".into(), Value::Array(vec![deep]));
            deep = Value::Object(wrapper);
        }
        let mut item = json!({"resourceType": "Condition", "id": "c",
            "subject": {"reference": "Patient/p"}});
        item["extension"] = Value::Array(vec![deep]);
        let facts = extract_facts(&item).unwrap();
        assert_eq!(
            facts.codes,
            [Coding::new("http://snomed.info/sct", "8098009")]
        );
        // serde_json drops a Value recursively; leak this one rather than overflow the stack.
        std::mem::forget(item);
    }

    proptest::proptest! {
        /// A sensitive coding or label buried anywhere (under contained, extensions, arrays)
        /// is found.
        #[test]
        fn a_buried_coding_or_label_is_always_found(
            path in proptest::collection::vec(0u8..4, 0..40),
            as_label in proptest::bool::ANY,
        ) {
            let leaf = json!({"system": "http://snomed.info/sct", "code": "8098009"});
            let mut value = if as_label {
                json!({"resourceType": "Condition", "id": "inner", "meta": {"security": [leaf.clone()]}})
            } else {
                leaf.clone()
            };
            for step in path {
                value = match step {
                    0 => json!([value]),
                    1 => json!({"extension": [{"url": "urn:x", "valueCoding": {"system": "urn:y", "code": "z"}}, value]}),
                    2 => json!({"resourceType": "Observation", "id": "o", "component": [value]}),
                    _ => json!({"anything": value}),
                };
            }
            let item = json!({"resourceType": "MedicationRequest", "id": "m",
                "subject": {"reference": "Patient/p"}, "contained": [value]});
            let facts = extract_facts(&item).unwrap();
            let coding = Coding::new("http://snomed.info/sct", "8098009");
            if as_label {
                proptest::prop_assert!(facts.security.contains(&coding));
            } else {
                proptest::prop_assert!(facts.codes.contains(&coding));
            }
        }
    }
}
