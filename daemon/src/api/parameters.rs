//! The `$gpc.getstructuredrecord` request body: an R4 `Parameters` resource naming the patient
//! and the sections wanted. Strict: an unknown or malformed parameter or part is refused
//! (422 INVALID_PARAMETER) rather than ignored, so a client never silently gets less than it
//! asked for.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::fhir::{is_valid_nhs_number, parse_fhir_date_time, Section, NHS_NUMBER_SYSTEM};

/// Longest accepted body; a structured-record request is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the partner asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRequest {
    pub nhs_number: String,
    pub sections: BTreeSet<Section>,
    pub include_resolved_allergies: bool,
    /// `medicationSearchFromDate`, seconds since the Unix epoch.
    pub medication_from: Option<i64>,
}

/// Why the body was refused; each maps to one SPEC §5 code.
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

pub fn parse(body: &[u8]) -> Result<RecordRequest, ParametersError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ParametersError::Malformed("too large".into()));
    }
    // Strict: a repeated key (two patientNHSNumber values in one parameter) is refused.
    let value: Value = crate::json::from_slice(body)
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
    let mut request = RecordRequest {
        nhs_number: String::new(),
        sections: BTreeSet::new(),
        include_resolved_allergies: false,
        medication_from: None,
    };
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
        let Some(section) = Section::from_parameter_name(name) else {
            return parameter_error(format!("unknown parameter {name:?}"));
        };
        if !request.sections.insert(section) {
            return parameter_error(format!("{name} is repeated"));
        }
        if parameter.keys().any(|k| k != "name" && k != "part") {
            return parameter_error(format!("{name} takes only parts, not a value"));
        }
        read_parts(section, name, parameter, &mut request)?;
    }
    request.nhs_number = nhs_number
        .ok_or_else(|| ParametersError::Parameter("patientNHSNumber is missing".into()))?;
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

fn read_parts(
    section: Section,
    name: &str,
    parameter: &Map<String, Value>,
    request: &mut RecordRequest,
) -> Result<(), ParametersError> {
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
        match (section, part_name) {
            (Section::Allergies, "includeResolvedAllergies") => {
                request.include_resolved_allergies = part
                    .get("valueBoolean")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| {
                        ParametersError::Parameter(format!("{name}.{part_name} needs valueBoolean"))
                    })?;
            }
            (Section::Medications, "medicationSearchFromDate") => {
                let date = part.get("valueDate").and_then(Value::as_str);
                let parsed = date
                    .filter(|d| d.len() == 10)
                    .and_then(parse_fhir_date_time)
                    .ok_or_else(|| {
                        ParametersError::Parameter(format!(
                            "{name}.{part_name} needs valueDate as YYYY-MM-DD"
                        ))
                    })?;
                request.medication_from = Some(parsed);
            }
            _ => return parameter_error(format!("unknown part {name}.{part_name:?}")),
        }
    }
    if section == Section::Allergies && !seen.contains("includeResolvedAllergies") {
        return parameter_error("includeAllergies needs the part includeResolvedAllergies");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(parameters: Value) -> Vec<u8> {
        json!({"resourceType": "Parameters", "parameter": parameters})
            .to_string()
            .into_bytes()
    }

    fn nhs(value: &str) -> Value {
        json!({"name": "patientNHSNumber", "valueIdentifier": {"system": NHS_NUMBER_SYSTEM, "value": value}})
    }

    #[test]
    fn reads_patient_sections_and_parts() {
        let request = parse(&body(json!([
            nhs("9434765919"),
            {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]},
            {"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2024-01-31"}]},
            {"name": "includeProblems"},
            {"name": "includeEndOfLife"}
        ])))
        .unwrap();
        assert_eq!(request.nhs_number, "9434765919");
        assert!(request.include_resolved_allergies);
        assert_eq!(request.medication_from, parse_fhir_date_time("2024-01-31"));
        assert_eq!(
            request.sections.into_iter().collect::<Vec<_>>(),
            [
                Section::Allergies,
                Section::Medications,
                Section::Problems,
                Section::EndOfLife
            ]
        );
    }

    #[test]
    fn maps_each_fault_to_its_code() {
        use ParametersError::*;
        type Expectation = fn(&ParametersError) -> bool;
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
                |e| matches!(e, Parameter(r) if r.contains("missing")),
            ),
            (
                body(json!([nhs("9434765919"), {"name": "includeEverything"}])),
                |e| matches!(e, Parameter(r) if r.contains("unknown parameter")),
            ),
            (
                body(
                    json!([nhs("9434765919"), {"name": "includeProblems"}, {"name": "includeProblems"}]),
                ),
                |e| matches!(e, Parameter(r) if r.contains("repeated")),
            ),
            (
                body(json!([nhs("9434765919"), nhs("9434765919")])),
                |e| matches!(e, Parameter(r) if r.contains("repeated")),
            ),
            (
                body(json!([nhs("9434765919"), {"name": "includeAllergies"}])),
                |e| matches!(e, Parameter(r) if r.contains("includeResolvedAllergies")),
            ),
            (
                body(
                    json!([nhs("9434765919"), {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueString": "yes"}]}]),
                ),
                |e| matches!(e, Parameter(r) if r.contains("valueBoolean")),
            ),
            (
                body(
                    json!([nhs("9434765919"), {"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "31/01/2024"}]}]),
                ),
                |e| matches!(e, Parameter(r) if r.contains("YYYY-MM-DD")),
            ),
            (
                body(
                    json!([nhs("9434765919"), {"name": "includeProblems", "part": [{"name": "filterStatus", "valueCode": "active"}]}]),
                ),
                |e| matches!(e, Parameter(r) if r.contains("unknown part")),
            ),
            (
                body(json!([nhs("9434765919"), {"name": "includeProblems", "valueBoolean": true}])),
                |e| matches!(e, Parameter(r) if r.contains("only parts")),
            ),
        ];
        for (input, expected) in cases {
            let error = parse(&input).unwrap_err();
            assert!(
                expected(&error),
                "unexpected {error:?} for {}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
