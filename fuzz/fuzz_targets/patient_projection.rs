//! `fhir::patient_demographics` and `fhir::serving_body` (what ingest stores to be served) on
//! any JSON value. A Patient's stored body must hold nothing but the SPEC §3 projection: only
//! its elements, no extension but the NHS number's verification status, no reference into
//! `contained`, nothing nested deeper than the projection keeps. Any other resource's stored
//! body must be valid JSON without narrative, its own or its contained resources'.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig_policy::fhir::{patient_demographics, serving_body};
use serde_json::Value;

const ALLOWED: &[&str] = &[
    "resourceType",
    "id",
    "identifier",
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

fuzz_target!(|data: &[u8]| {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let received = String::from_utf8_lossy(data).into_owned();
    let stored = serving_body(&value, received);
    let stored: Value = serde_json::from_str(&stored).expect("stored body is JSON");

    if let Some(map) = value.as_object_mut() {
        map.insert("resourceType".into(), Value::from("Patient"));
    }
    let projected = patient_demographics(&value);
    let object = projected.as_object().expect("a projection is an object");
    for key in object.keys() {
        assert!(ALLOWED.contains(&key.as_str()), "{key} left the projection");
    }
    for identifier in object
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        assert_eq!(identifier["system"], "https://fhir.nhs.uk/Id/nhs-number");
        for extension in identifier["extension"].as_array().into_iter().flatten() {
            let url = extension["url"].as_str().unwrap_or_default();
            assert!(url.contains("NHSNumberVerificationStatus"), "{url}");
        }
    }
    for (key, element) in object {
        if key != "identifier" {
            assert_clean(element, 0);
        }
    }
    if value.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        assert_eq!(serving_body(&value, String::new()), projected.to_string());
    }

    if stored.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        assert!(stored.get("text").is_none(), "narrative kept");
        for inner in stored
            .get("contained")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(inner.get("text").is_none(), "contained narrative kept");
        }
    }
});

/// No extension and no `#` reference anywhere, and no deeper than the projection keeps.
fn assert_clean(value: &Value, depth: usize) {
    assert!(depth <= 17, "nested deeper than the projection keeps");
    match value {
        Value::Object(map) => {
            assert!(!map.contains_key("extension") && !map.contains_key("modifierExtension"));
            let local = map
                .get("reference")
                .and_then(Value::as_str)
                .is_some_and(|r| r.starts_with('#'));
            assert!(!local, "reference into contained kept");
            map.values().for_each(|v| assert_clean(v, depth + 1));
        }
        Value::Array(items) => items.iter().for_each(|v| assert_clean(v, depth + 1)),
        _ => {}
    }
}
