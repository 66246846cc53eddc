//! The CapabilityStatement served at `GET /fhir/metadata`.

use serde_json::{json, Value};

use mig_policy::fhir::{RecordList, Section};

pub const STRUCTURED_RECORD_INTERACTION: &str =
    "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
pub const PATIENT_SEARCH_INTERACTION: &str =
    "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";

pub fn capability_statement(fhir_base: &str, practice_name: &str, date: &str) -> Value {
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": practice_name,
        "kind": "instance",
        "software": {"name": "MIG appliance (migd)", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("Medical Interoperability Gateway for {practice_name}"), "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "description": "Mutually authenticated TLS with a registered partner certificate; a GP Connect access token (unsigned JWT) on every interaction but this one."
            },
            "resource": [{
                "type": "Patient",
                "interaction": [{"code": "search-type"}],
                "searchParam": [{"name": "identifier", "type": "token",
                    "documentation": "https://fhir.nhs.uk/Id/nhs-number|NHS number"}],
                "operation": [{"name": "gpc.getstructuredrecord",
                    "definition": "https://fhir.nhs.uk/STU3/OperationDefinition/GPConnect-GetStructuredRecord-Operation-1",
                    "documentation": structured_record_documentation()}]
            }]
        }]
    })
}

/// The record's parameters and the List each answers with, for the operation's documentation.
fn structured_record_documentation() -> String {
    let lists: Vec<String> = Section::ALL
        .into_iter()
        .map(|section| {
            let (system, code, title) = section.list_code();
            let ended = match section {
                Section::Allergies => {
                    let (system, code, title) = RecordList::EndedAllergies.code();
                    format!(" and, with includeResolvedAllergies, \"{title}\" ({system}|{code})")
                }
                _ => String::new(),
            };
            format!(
                "{}: List \"{title}\" ({system}|{code}){ended}",
                section.parameter_name()
            )
        })
        .collect();
    format!(
        "patientNHSNumber and any of: {}. Every entry has a fullUrl; a List from which \
         anything was withheld carries the confidential-items warning.",
        lists.join("; ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_section_parameter_and_list_code() {
        let statement =
            capability_statement("https://mig.example/fhir", "The Surgery", "2026-12-06");
        let text = statement["rest"][0]["resource"][0]["operation"][0]["documentation"]
            .as_str()
            .unwrap();
        for section in Section::ALL {
            assert!(text.contains(section.parameter_name()), "{section}");
            assert!(text.contains(section.list_code().1), "{section}");
        }
        assert!(text.contains("1103671000000101"));
    }
}
