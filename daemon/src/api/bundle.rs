//! The structured-record Bundle (SPEC §4): Patient, the practice Organization, one List per
//! requested section, the released items and the shared resources they reference.
//!
//! Nothing in it may point at what was withheld: a reference to anything not in the Bundle
//! (a withheld item, or one outside the released sections) is removed from the copy we send,
//! and no count of withheld items appears anywhere.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::fhir::{Section, ODS_SYSTEM};
use crate::replica::StoredItem;

pub const WARNING_EXTENSION: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-ListWarningCode-1";
pub const WITHHELD_NOTE: &str = "Items excluded due to confidentiality and/or patient preferences.";
const EMPTY_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/list-empty-reason";

/// One requested section.
#[derive(Debug)]
pub struct SectionList<'a> {
    pub section: Section,
    pub items: Vec<&'a StoredItem>,
    /// Something was withheld from this section (or all of it was).
    pub withheld: bool,
}

/// Everything the Bundle is made of.
#[derive(Debug)]
pub struct RecordParts<'a> {
    pub patient_id: &'a str,
    pub patient_body: &'a str,
    pub practice_ods: &'a str,
    pub practice_name: &'a str,
    pub lists: Vec<SectionList<'a>>,
    /// Shared resources (Medication, Practitioner, …) referenced by released items.
    pub shared: &'a [StoredItem],
    /// RFC 3339 time the record was assembled.
    pub assembled_at: &'a str,
}

/// Renders the Bundle as JSON text. Item bodies are copied as stored unless they reference
/// something outside the Bundle.
pub fn structured_record(parts: &RecordParts<'_>) -> String {
    let practice_ref = format!("Organization/{}", parts.practice_ods);
    let mut included: HashSet<String> = HashSet::new();
    included.insert(format!("Patient/{}", parts.patient_id));
    included.insert(practice_ref.clone());
    let items = parts.lists.iter().flat_map(|l| l.items.iter().copied());
    for item in items.clone().chain(parts.shared.iter()) {
        included.insert(item.facts.reference());
    }

    let mut out =
        String::with_capacity(4096 + items.clone().map(|i| i.body.len() + 16).sum::<usize>());
    out.push_str(r#"{"resourceType":"Bundle","id":""#);
    out.push_str(&uuid::Uuid::new_v4().to_string());
    out.push_str(r#"","meta":{"lastUpdated":""#);
    out.push_str(parts.assembled_at);
    out.push_str(r#""},"type":"collection","entry":["#);

    let mut first = true;
    let mut push = |out: &mut String, resource: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(r#"{"resource":"#);
        out.push_str(resource);
        out.push('}');
    };
    let patient = serde_json::from_str::<Value>(parts.patient_body)
        .map(|mut v| {
            strip_outside_references(&mut v, &included);
            v.to_string()
        })
        .unwrap_or_else(|_| parts.patient_body.to_owned());
    push(&mut out, &patient);
    let practice = json!({
        "resourceType": "Organization", "id": parts.practice_ods,
        "identifier": [{"system": ODS_SYSTEM, "value": parts.practice_ods}],
        "name": parts.practice_name
    });
    push(&mut out, &practice.to_string());
    for list in &parts.lists {
        push(&mut out, &section_list(list, parts).to_string());
    }
    for item in items.chain(parts.shared.iter()) {
        let outside = item.facts.references.iter().any(|r| !included.contains(r));
        if outside {
            match serde_json::from_str::<Value>(&item.body) {
                Ok(mut value) => {
                    strip_outside_references(&mut value, &included);
                    push(&mut out, &value.to_string());
                }
                // Bodies were parsed at ingest; a body that no longer parses is left out.
                Err(_) => continue,
            }
        } else {
            push(&mut out, &item.body);
        }
    }
    out.push_str("]}");
    out
}

fn section_list(list: &SectionList<'_>, parts: &RecordParts<'_>) -> Value {
    let (system, code, display) = list.section.list_code();
    let mut value = json!({
        "resourceType": "List",
        "id": uuid::Uuid::new_v4().to_string(),
        "status": "current",
        "mode": "snapshot",
        "title": display,
        "code": {"coding": [{"system": system, "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{}", parts.patient_id)},
        "date": parts.assembled_at,
    });
    if list.withheld {
        value["extension"] = json!([{"url": WARNING_EXTENSION, "valueCode": "confidential-items"}]);
        value["note"] = json!([{"text": WITHHELD_NOTE}]);
    }
    if list.items.is_empty() {
        let (reason, text) = if list.withheld {
            ("withheld", "Information withheld")
        } else {
            ("nilknown", "No content recorded")
        };
        value["emptyReason"] = json!({
            "coding": [{"system": EMPTY_REASON_SYSTEM, "code": reason}], "text": text
        });
    } else {
        value["entry"] = list
            .items
            .iter()
            .map(|item| json!({"item": {"reference": item.facts.reference()}}))
            .collect();
    }
    value
}

/// Removes every Reference whose target is not in `included` (contained `#` references stay).
pub(crate) fn strip_outside_references(value: &mut Value, included: &HashSet<String>) {
    let is_outside = |v: &Value| -> bool {
        match v.get("reference").and_then(Value::as_str) {
            Some(r) if r.starts_with('#') => false,
            Some(r) => match crate::fhir::split_reference(r) {
                Some((t, id)) => !included.contains(&format!("{t}/{id}")),
                None => true,
            },
            None => false,
        }
    };
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !(v.is_object() && is_outside(v)));
            for v in map.values_mut() {
                if let Value::Array(items) = v {
                    items.retain(|item| !(item.is_object() && is_outside(item)));
                }
            }
            map.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
            map.values_mut()
                .for_each(|v| strip_outside_references(v, included));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| strip_outside_references(v, included)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::extract_facts;

    fn stored(value: Value) -> StoredItem {
        StoredItem {
            facts: extract_facts(&value).unwrap(),
            body: value.to_string(),
        }
    }

    #[test]
    fn removes_references_to_anything_outside_the_bundle() {
        let condition = stored(
            json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}}),
        );
        let request = stored(json!({"resourceType": "MedicationRequest", "id": "m1",
            "subject": {"reference": "Patient/p"},
            "reasonReference": [{"reference": "Condition/secret"}, {"reference": "Condition/c1"}],
            "basedOn": [{"reference": "CarePlan/hidden"}],
            "recorder": {"reference": "Practitioner/gp"}}));
        let parts = RecordParts {
            patient_id: "p",
            patient_body: r#"{"resourceType":"Patient","id":"p","managingOrganization":{"reference":"Organization/elsewhere"}}"#,
            practice_ods: "A81001",
            practice_name: "The Surgery",
            lists: vec![
                SectionList {
                    section: Section::Problems,
                    items: vec![&condition],
                    withheld: false,
                },
                SectionList {
                    section: Section::Medications,
                    items: vec![&request],
                    withheld: true,
                },
                SectionList {
                    section: Section::Allergies,
                    items: vec![],
                    withheld: false,
                },
                SectionList {
                    section: Section::EndOfLife,
                    items: vec![],
                    withheld: true,
                },
            ],
            shared: &[],
            assembled_at: "2026-11-27T10:00:00Z",
        };
        let bundle: Value = serde_json::from_str(&structured_record(&parts)).unwrap();
        let text = bundle.to_string();
        for gone in [
            "Condition/secret",
            "CarePlan/hidden",
            "Practitioner/gp",
            "Organization/elsewhere",
            "basedOn",
        ] {
            assert!(!text.contains(gone), "{gone} leaked");
        }
        assert!(text.contains("Condition/c1"));
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2 + 4 + 2);
        let lists: Vec<&Value> = entries
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "List")
            .collect();
        assert!(lists[0].get("extension").is_none() && lists[0].get("emptyReason").is_none());
        assert_eq!(lists[1]["extension"][0]["valueCode"], "confidential-items");
        assert!(lists[1].get("emptyReason").is_none());
        assert_eq!(lists[2]["emptyReason"]["coding"][0]["code"], "nilknown");
        assert_eq!(lists[3]["emptyReason"]["coding"][0]["code"], "withheld");
        assert_eq!(lists[3]["note"][0]["text"], WITHHELD_NOTE);
    }
}
