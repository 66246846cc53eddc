//! `fhir::extract_facts` on any JSON value (inputs that are not JSON are skipped). The facts
//! are stored as JSON beside each resource and read back on every request, so they must also
//! survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig::fhir::{extract_facts, is_valid_id, ItemFacts, PATIENT_SCOPED_TYPES, SHARED_TYPES};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(facts) = extract_facts(&value) else {
        return;
    };
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
    assert_eq!(read, facts, "facts changed in a storage round trip");
});
