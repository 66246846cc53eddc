//! FHIR R4 vocabulary shared by ingest, policy and the API: record sections, NHS numbers, and
//! the facts about each resource that access decisions need, extracted once at write time.

mod facts;
mod nhs_number;
mod section;
mod serving;

pub use facts::{
    extract_facts, is_valid_id, parse_fhir_date_time, split_reference, Coding, ConsentFacts,
    FactsError, ItemFacts, PatientRef, PATIENT_SCOPED_TYPES, SHARED_TYPES,
};
pub use nhs_number::{is_valid_nhs_number, NHS_NUMBER_SYSTEM};
pub use section::{file_item, file_items, RecordList, Section, Tier};
pub use serving::{patient_demographics, serving_body};

/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// HL7 v3 confidentiality codes used in `meta.security`.
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// The same code system under its FHIR DSTU2/STU3 address, still sent by older systems.
pub const CONFIDENTIALITY_SYSTEM_V3: &str = "http://hl7.org/fhir/v3/Confidentiality";
/// The same code system by its HL7 OID.
pub const CONFIDENTIALITY_SYSTEM_OID: &str = "urn:oid:2.16.840.1.113883.5.25";
/// The MIG code system for a patient's sharing tier (`dissent`, `core`, `core-and-additional`).
pub const SHARING_PREFERENCE_SYSTEM: &str = "urn:mig:sharing-preference";
/// ODS organisation codes.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
