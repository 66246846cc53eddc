//! `fhir::extract_facts` on any JSON value (inputs that are not JSON are skipped). The facts
//! are stored beside each resource and read back on every request, so they must also survive
//! a round trip. Then the same value again, buried in a MedicationRequest's `contained`
//! under as many levels of extensions and arrays as the input's length modulo 101 (the JSON
//! parser's own depth limit being 128): whatever codings and labels the value holds must count
//! as the wrapping item's own (SPEC §5 step 8: an item is judged with everything inside it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig_policy::fhir::{extract_facts, is_valid_id, ItemFacts, PATIENT_SCOPED_TYPES, SHARED_TYPES};
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let depth = data.len() % 101;
    if let Ok(facts) = extract_facts(&value) {
        check(&facts);
    }

    // Buried: codings and labels anywhere inside come out as the item's own.
    let mut buried = value.clone();
    for level in 0..depth {
        let mut wrapper = Map::new();
        if level % 2 == 0 {
            wrapper.insert("url".into(), json!("urn:fuzz"));
            wrapper.insert("extension".into(), Value::Array(vec![buried]));
        } else {
            wrapper.insert("component".into(), Value::Array(vec![buried]));
        }
        buried = Value::Object(wrapper);
    }
    let item = json!({"resourceType": "MedicationRequest", "id": "m",
        "subject": {"reference": "Patient/p"}, "contained": [buried]});
    let Ok(outer) = extract_facts(&item) else {
        // Only an unusable reference inside may refuse the item.
        return;
    };
    check(&outer);
    if let Ok(inner) = extract_facts(&value) {
        for coding in &inner.codes {
            assert!(
                outer.codes.contains(coding),
                "buried coding {coding:?} lost"
            );
        }
        for label in &inner.security {
            assert!(
                outer.security.contains(label),
                "buried label {label:?} lost"
            );
        }
        for reference in &inner.references {
            assert!(
                reference == "Patient/p" || outer.references.contains(reference),
                "buried reference {reference} lost"
            );
        }
    }
});

fn check(facts: &ItemFacts) {
    let kind = facts.resource_type.as_str();
    assert!(
        kind == "Patient" || PATIENT_SCOPED_TYPES.contains(&kind) || SHARED_TYPES.contains(&kind)
    );
    assert!(is_valid_id(&facts.id));
    assert_eq!(
        PATIENT_SCOPED_TYPES.contains(&kind),
        facts.patient.is_some()
    );
    assert_eq!(kind == "Patient", facts.nhs_number.is_some());
    let stored = facts.encode().expect("facts encode");
    let read = ItemFacts::decode(&stored).expect("stored facts read back");
    assert_eq!(&read, facts, "facts changed in a storage round trip");
}
