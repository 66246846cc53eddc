//! The form of a resource that is stored to be served, made once at ingest so that requests
//! copy it as it is: an item without its narrative (SPEC §5 step 8: `text` can name what was
//! withheld), and a Patient reduced to the demographics projection of SPEC §3.
//!
//! Removes: narrative of a resource and of its `contained` resources; contained Patient
//! resources and the references to them; of a Patient, everything
//! but the projection's elements, and within those every extension (but the NHS number's
//! verification status) and every reference into `contained`. Does not remove references that
//! leave the Bundle: which those are depends on the request (see `api::bundle`).

use serde_json::{Map, Value};

use super::NHS_NUMBER_SYSTEM;

/// The elements of a Patient that partners see (SPEC §3), after `identifier`.
const PATIENT_ELEMENTS: &[&str] = &[
    "name",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "address",
    "telecom",
    "communication",
    "generalPractitioner",
    "managingOrganization",
];

/// Deeper than any demographics element nests; anything below is dropped, not walked.
const MAX_DEPTH: usize = 16;

/// The body to store for a resource that was received as `received` and parsed as `resource`.
/// Returns `received` itself when nothing needs removing (the common case: no re-encoding).
pub fn serving_body(resource: &Value, received: String) -> String {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        return patient_demographics(resource).to_string();
    }
    let contained = resource.get("contained").and_then(Value::as_array);
    let contained_to_remove =
        contained.is_some_and(|c| c.iter().any(|r| r.get("text").is_some() || is_patient(r)));
    if resource.get("text").is_none() && !contained_to_remove {
        return received;
    }
    let mut resource = resource.clone();
    if let Some(map) = resource.as_object_mut() {
        map.remove("text");
        let mut patients = Vec::new();
        if let Some(Value::Array(contained)) = map.get_mut("contained") {
            // A contained Patient is some patient's demographics inside a clinical item: never
            // served (the Bundle's own Patient is the projection); references to it go too.
            contained.retain(|inner| {
                if is_patient(inner) {
                    patients.extend(
                        inner
                            .get("id")
                            .and_then(Value::as_str)
                            .map(|id| format!("#{id}")),
                    );
                }
                !is_patient(inner)
            });
            for inner in contained.iter_mut().filter_map(Value::as_object_mut) {
                inner.remove("text");
            }
            if contained.is_empty() {
                map.remove("contained");
            }
        }
        if !patients.is_empty() {
            remove_references(&mut resource, &patients, 0);
        }
    }
    resource.to_string()
}

fn is_patient(resource: &Value) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some("Patient")
}

/// Removes every Reference (object with `reference`) naming one of `targets`. The JSON parser
/// bounds nesting (128), so recursion is bounded too; `MAX_DEPTH * 8` is a second guard.
fn remove_references(value: &mut Value, targets: &[String], depth: usize) {
    if depth > MAX_DEPTH * 8 {
        return;
    }
    let names = |v: &Value| {
        v.get("reference")
            .and_then(Value::as_str)
            .is_some_and(|r| targets.iter().any(|t| t == r))
    };
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !names(v));
            map.values_mut()
                .for_each(|v| remove_references(v, targets, depth + 1));
        }
        Value::Array(items) => {
            items.retain(|v| !names(v));
            items
                .iter_mut()
                .for_each(|v| remove_references(v, targets, depth + 1));
        }
        _ => {}
    }
}

/// The demographics projection of a Patient (SPEC §3): `resourceType`, `id`, the NHS number
/// identifier with its verification-status extension, and `PATIENT_ELEMENTS`, cleaned.
pub fn patient_demographics(patient: &Value) -> Value {
    let mut out = Map::new();
    for key in ["resourceType", "id"] {
        if let Some(value) = patient.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    let identifiers: Vec<Value> = patient
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .map(nhs_number_identifier)
        .collect();
    if !identifiers.is_empty() {
        out.insert("identifier".into(), Value::Array(identifiers));
    }
    for &key in PATIENT_ELEMENTS {
        if let Some(value) = patient.get(key).and_then(|v| cleaned(v, 0)) {
            out.insert(key.to_owned(), value);
        }
    }
    Value::Object(out)
}

/// `system`, `value` and the verification-status extension (UK Core or Care Connect).
fn nhs_number_identifier(identifier: &Value) -> Value {
    let mut out = Map::new();
    for key in ["system", "value"] {
        if let Some(value @ Value::String(_)) = identifier.get(key) {
            out.insert(key.to_owned(), value.clone());
        }
    }
    let status: Vec<Value> = identifier
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("url")
                .and_then(Value::as_str)
                .is_some_and(|url| url.contains("NHSNumberVerificationStatus"))
        })
        .filter_map(|e| {
            let concept = cleaned(e.get("valueCodeableConcept")?, 0)?;
            let mut extension = Map::new();
            extension.insert("url".into(), e.get("url")?.clone());
            extension.insert("valueCodeableConcept".into(), concept);
            Some(Value::Object(extension))
        })
        .collect();
    if !status.is_empty() {
        out.insert("extension".into(), Value::Array(status));
    }
    Value::Object(out)
}

/// A copy without extensions and without references into `contained` (which the projection
/// drops); `None` if nothing is left, or it nests deeper than `MAX_DEPTH`.
fn cleaned(value: &Value, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::Object(map) => {
            let local = map
                .get("reference")
                .and_then(Value::as_str)
                .is_some_and(|r| r.starts_with('#'));
            if local {
                return None;
            }
            let out: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| *k != "extension" && *k != "modifierExtension")
                .filter_map(|(k, v)| Some((k.clone(), cleaned(v, depth + 1)?)))
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let out: Vec<Value> = items.iter().filter_map(|v| cleaned(v, depth + 1)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn narrative_goes_from_the_item_and_its_contained_resources() {
        let item = json!({"resourceType": "Condition", "id": "c", "text": {"div": "<div>HIV</div>"},
            "contained": [{"resourceType": "Observation", "id": "o", "text": {"div": "x"}}],
            "code": {"text": "kept"}});
        let body: Value = serde_json::from_str(&serving_body(&item, item.to_string())).unwrap();
        assert!(body.get("text").is_none());
        assert!(body["contained"][0].get("text").is_none());
        assert_eq!(body["code"]["text"], "kept");
        let plain = r#"{"resourceType":"Condition","id":"c"}"#;
        let value: Value = serde_json::from_str(plain).unwrap();
        assert_eq!(serving_body(&value, plain.to_owned()), plain);
    }

    #[test]
    fn contained_patients_and_references_to_them_go() {
        let item = json!({"resourceType": "Observation", "id": "o",
            "contained": [{"resourceType": "Patient", "id": "mum", "name": [{"family": "Other"}]},
                {"resourceType": "Practitioner", "id": "gp"}],
            "focus": [{"reference": "#mum", "display": "Mother"}],
            "performer": [{"reference": "#gp"}]});
        let body = serving_body(&item, item.to_string());
        assert!(
            !body.contains("Other") && !body.contains("Mother") && !body.contains("mum"),
            "{body}"
        );
        assert!(body.contains("#gp"));
    }

    #[test]
    fn a_patient_is_reduced_to_its_demographics() {
        let status_url = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
        let patient = json!({"resourceType": "Patient", "id": "p",
            "meta": {"security": [{"system": "urn:x", "code": "secret"}]},
            "text": {"div": "<div>narrative</div>"},
            "contained": [{"resourceType": "Practitioner", "id": "gp"}],
            "extension": [{"url": "urn:ethnicity", "valueString": "x"}],
            "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": "9434765919",
                 "extension": [{"url": status_url, "valueCodeableConcept": {"coding": [{"code": "01"}]}},
                               {"url": "urn:other", "valueString": "x"}]},
                {"system": "urn:local-mrn", "value": "MRN1"}],
            "name": [{"family": "Smith", "extension": [{"url": "urn:x", "valueString": "x"}]}],
            "gender": "female", "birthDate": "1970-01-01",
            "generalPractitioner": [{"reference": "#gp"}, {"reference": "Practitioner/g1"}],
            "maritalStatus": {"text": "married"}, "link": [{"other": {"reference": "Patient/q"}}]});
        let out = patient_demographics(&patient);
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "id": "p",
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919",
                    "extension": [{"url": status_url, "valueCodeableConcept": {"coding": [{"code": "01"}]}}]}],
                "name": [{"family": "Smith"}], "gender": "female", "birthDate": "1970-01-01",
                "generalPractitioner": [{"reference": "Practitioner/g1"}]})
        );
        assert_eq!(serving_body(&patient, String::new()), out.to_string());
    }

    #[test]
    fn deep_nesting_is_cut_not_walked() {
        let mut deep = json!("bottom");
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let out =
            patient_demographics(&json!({"resourceType": "Patient", "id": "p", "name": deep}));
        assert!(out.get("name").is_none());
    }
}
