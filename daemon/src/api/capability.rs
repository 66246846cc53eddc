//! The CapabilityStatement served at `GET /fhir/metadata`.

use serde_json::{json, Value};

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
                    "definition": "https://fhir.nhs.uk/STU3/OperationDefinition/GPConnect-GetStructuredRecord-Operation-1"}]
            }]
        }]
    })
}
