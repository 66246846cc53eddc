//! The partner API end to end below TLS: real replica (SQLCipher), real policy, the handler
//! as hyper calls it, and an audit sink that records what it is given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use mig::api::{jwt, AccessEvent, Api, Appliance, AuditSink, AuditUnavailable, Caller};
use mig::fhir::Section;
use mig::policy::{Agreement, PartnerType, RoleSet, SensitiveCodes};
use mig::replica::{ReaderPool, Replica};
use serde_json::{json, Value};

const KEY: [u8; 32] = [9; 32];
const ASID: &str = "200000000123";
const BASE: &str = "https://mig.a81001.example.nhs.uk/fhir";
const PARTNER: &str = "RX8";
const CARER_ORG: &str = "8JK42";
const RECORD: &str = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
const SEARCH: &str = "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";
const TRACE: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

// Test NHS numbers (999 range, Modulus 11 valid).
const CORE_AND_ADDITIONAL: &str = "9990000018";
const CORE_ONLY: &str = "9990000026";
const DISSENT: &str = "9990000034";
const STI_CONSENT: &str = "9990000042";
const STANDING: &str = "9990000050";
const NOT_REGISTERED: &str = "9990000069";

#[derive(Default)]
struct RecordingAudit {
    events: Mutex<Vec<AccessEvent>>,
    broken: AtomicBool,
}

impl AuditSink for RecordingAudit {
    fn record(
        &self,
        event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send>> {
        let result = if self.broken.load(Ordering::SeqCst) {
            Err(AuditUnavailable)
        } else {
            self.events.lock().unwrap().push(event);
            Ok(())
        };
        Box::pin(async move { result })
    }
}

fn consent(id: &str, patient: &str, date: &str, category: (&str, &str), provision: Value) -> Value {
    json!({"resourceType": "Consent", "id": id, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": category.0, "code": category.1}]}],
        "patient": {"reference": format!("Patient/{patient}")}, "dateTime": date, "provision": provision})
}

fn tier(id: &str, patient: &str, code: &str) -> Value {
    consent(
        id,
        patient,
        "2024-01-01T09:00:00Z",
        ("urn:mig:sharing-preference", code),
        json!({"type": "permit"}),
    )
}

const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn clinical(patient: &str) -> Vec<Value> {
    let subject = json!({"reference": format!("Patient/{patient}")});
    let sct = |code: &str| json!({"coding": [{"system": "http://snomed.info/sct", "code": code}]});
    vec![
        json!({"resourceType": "AllergyIntolerance", "id": format!("{patient}-allergy"), "patient": subject, "code": sct("91936005"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}}),
        json!({"resourceType": "AllergyIntolerance", "id": format!("{patient}-old-allergy"), "patient": subject, "code": sct("300913006"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "resolved"}]}}),
        json!({"resourceType": "MedicationStatement", "id": format!("{patient}-statin"), "subject": subject, "status": "active",
            "medicationReference": {"reference": "Medication/atorvastatin"}, "effectivePeriod": {"start": "2023-05-01"}}),
        json!({"resourceType": "MedicationStatement", "id": format!("{patient}-old-med"), "subject": subject, "status": "completed",
            "medicationReference": {"reference": "Medication/atorvastatin"}, "effectivePeriod": {"start": "2015-05-01"}}),
        json!({"resourceType": "Condition", "id": format!("{patient}-asthma"), "subject": subject, "code": sct("195967001")}),
        json!({"resourceType": "Condition", "id": format!("{patient}-chlamydia"), "subject": subject, "code": sct("105629000")}),
        json!({"resourceType": "MedicationRequest", "id": format!("{patient}-azithromycin"), "subject": subject, "status": "completed",
            "intent": "order", "medicationReference": {"reference": "Medication/azithromycin"},
            "reasonReference": [{"reference": format!("Condition/{patient}-chlamydia")}], "authoredOn": "2024-02-01"}),
        json!({"resourceType": "Procedure", "id": format!("{patient}-top"), "subject": subject, "status": "completed", "code": sct("71388002"),
            "meta": {"security": [{"system": "http://snomed.info/sct", "code": "999004361000000107"}]}}),
        json!({"resourceType": "Condition", "id": format!("{patient}-confidential"), "subject": subject, "code": sct("35489007"),
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}),
        json!({"resourceType": "Immunization", "id": format!("{patient}-flu"), "patient": subject, "status": "completed",
            "vaccineCode": sct("1181000221105"), "occurrenceDateTime": "2024-10-01"}),
        json!({"resourceType": "Encounter", "id": format!("{patient}-visit"), "subject": subject, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}),
        json!({"resourceType": "Observation", "id": format!("{patient}-bp"), "subject": subject, "status": "final", "code": sct("75367002"),
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]}]}),
        json!({"resourceType": "Observation", "id": format!("{patient}-smoking"), "subject": subject, "status": "final", "code": sct("8517006"),
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "social-history"}]}]}),
        json!({"resourceType": "Observation", "id": format!("{patient}-fit-note"), "subject": subject, "status": "final", "code": sct("1331000000103")}),
        json!({"resourceType": "Observation", "id": format!("{patient}-hba1c"), "subject": subject, "status": "final", "code": sct("1049301000000100"),
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}]}),
        json!({"resourceType": "Observation", "id": format!("{patient}-hb"), "subject": subject, "status": "final", "code": sct("1022431000000105")}),
        json!({"resourceType": "DiagnosticReport", "id": format!("{patient}-fbc"), "subject": subject, "status": "final", "code": sct("26604007"),
            "result": [{"reference": format!("Observation/{patient}-hb")}]}),
        json!({"resourceType": "ServiceRequest", "id": format!("{patient}-referral"), "subject": subject, "status": "active", "intent": "order"}),
        json!({"resourceType": "CarePlan", "id": format!("{patient}-eol"), "subject": subject, "status": "active", "intent": "plan",
            "category": [sct("736373009")]}),
        json!({"resourceType": "CarePlan", "id": format!("{patient}-asthma-plan"), "subject": subject, "status": "active", "intent": "plan",
            "category": [sct("734163000")]}),
        json!({"resourceType": "Flag", "id": format!("{patient}-bsl"), "subject": subject, "status": "active", "code": sct("204331000000107")}),
        json!({"resourceType": "Flag", "id": format!("{patient}-risk"), "subject": subject, "status": "active",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "behavioral"}]}],
            "code": {"text": "Risk to staff: verbal aggression"}}),
    ]
}

fn practice() -> Vec<Value> {
    let mut resources = vec![
        json!({"resourceType": "Medication", "id": "atorvastatin", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "320000009"}]}}),
        json!({"resourceType": "Medication", "id": "azithromycin", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "324252006"}]}}),
    ];
    let kinds: [(&str, &str, Vec<Value>); 5] = [
        (
            CORE_AND_ADDITIONAL,
            "p-full",
            vec![tier("p-full-pref", "p-full", "core-and-additional")],
        ),
        (
            CORE_ONLY,
            "p-core",
            vec![tier("p-core-pref", "p-core", "core")],
        ),
        (
            DISSENT,
            "p-dissent",
            vec![
                tier("p-dissent-old", "p-dissent", "core-and-additional"),
                consent(
                    "p-dissent-new",
                    "p-dissent",
                    "2025-03-01T09:00:00Z",
                    ("http://snomed.info/sct", "416409005"),
                    json!({"type": "deny"}),
                ),
            ],
        ),
        (
            STI_CONSENT,
            "p-sti",
            vec![
                tier("p-sti-pref", "p-sti", "core-and-additional"),
                consent(
                    "p-sti-consent",
                    "p-sti",
                    "2024-02-01T09:00:00Z",
                    ("http://loinc.org", "59284-0"),
                    json!({"type": "permit", "securityLabel": [{"system": "http://snomed.info/sct", "code": "999004381000000103"}]}),
                ),
            ],
        ),
        (
            STANDING,
            "p-standing",
            vec![
                tier("p-standing-pref", "p-standing", "core-and-additional"),
                consent(
                    "p-standing-carer",
                    "p-standing",
                    "2024-02-01T09:00:00Z",
                    ("http://snomed.info/sct", "319951000000105"),
                    json!({"type": "permit", "period": {"start": "2024-01-01", "end": "2099-01-01"},
                    "actor": [{"reference": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": CARER_ORG}}}]}),
                ),
            ],
        ),
    ];
    for (nhs, id, consents) in kinds {
        resources.push(json!({"resourceType": "Patient", "id": id,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Test", "given": [id]}], "gender": "female", "birthDate": "1970-01-01",
            "generalPractitioner": [{"reference": "Practitioner/not-in-replica"}]}));
        resources.extend(consents);
        resources.extend(clinical(id));
    }
    resources
}

fn agreement(ods: &str, partner_type: PartnerType) -> Agreement {
    Agreement {
        ods: ods.into(),
        name: "Partner".into(),
        partner_type,
        sites: BTreeSet::new(),
        sections: Section::ALL.into_iter().collect(),
        roles: RoleSet::Only(["R8000".to_string(), "R0260".to_string()].into()),
        override_roles: RoleSet::Only(["R8000".to_string()].into()),
        override_sections: None,
        expires: None,
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    api: Api,
    audit: Arc<RecordingAudit>,
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut replica = Replica::create(&path, &KEY).unwrap();
    let ndjson: String = practice().iter().map(|r| format!("{r}\n")).collect();
    replica.import_ndjson(ndjson.as_bytes()).unwrap();
    let audit = Arc::new(RecordingAudit::default());
    let api = Api {
        appliance: Appliance {
            ods: "A81001".into(),
            name: "The Surgery".into(),
            asid: ASID.into(),
            fhir_base: BASE.into(),
        },
        replica: Arc::new(ReaderPool::new(path, zeroize::Zeroizing::new(KEY)).unwrap()),
        records: Default::default(),
        audit: audit.clone(),
        sensitive: Arc::new(SensitiveCodes::shipped().unwrap()),
        health: Arc::new(|| true),
    };
    Harness {
        _dir: dir,
        api,
        audit,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn token(edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = jwt::example_claims(BASE, PARTNER, "R8000", now());
    edit(&mut claims);
    jwt::encode_unsigned(&claims)
}

fn record_body(nhs: &str, sections: &[&str]) -> String {
    let mut parameters = vec![json!({"name": "patientNHSNumber",
        "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}})];
    for s in sections {
        parameters.push(match *s {
            "includeAllergies" => json!({"name": s, "part": [{"name": "includeResolvedAllergies", "valueBoolean": false}]}),
            _ => json!({"name": s}),
        });
    }
    json!({"resourceType": "Parameters", "parameter": parameters}).to_string()
}

const ALL_SECTIONS: [&str; 12] = [
    "includeAllergies",
    "includeMedication",
    "includeProblems",
    "includeImmunisations",
    "includeConsultations",
    "includeInvestigations",
    "includeUncategorisedData",
    "includeReferrals",
    "includeProcedures",
    "includeEndOfLife",
    "includeCommunicationPreferences",
    "includeRisksAndWarnings",
];

fn post_record(body: String, jwt: &str) -> Request<Bytes> {
    Request::post("/fhir/Patient/$gpc.getstructuredrecord")
        .header("Ssp-TraceID", TRACE)
        .header("Ssp-From", "200000000999")
        .header("Ssp-To", ASID)
        .header("Ssp-InteractionID", RECORD)
        .header("Authorization", format!("Bearer {jwt}"))
        .body(Bytes::from(body))
        .unwrap()
}

fn search(nhs_query: &str, jwt: &str) -> Request<Bytes> {
    Request::get(format!("/fhir/Patient?identifier={nhs_query}"))
        .header("Ssp-TraceID", TRACE)
        .header("Ssp-From", "200000000999")
        .header("Ssp-To", ASID)
        .header("Ssp-InteractionID", SEARCH)
        .header("Authorization", format!("Bearer {jwt}"))
        .body(Bytes::new())
        .unwrap()
}

fn partner(agreement: Agreement) -> Caller {
    Caller {
        agreement: Some(Arc::new(agreement)),
        certificate_sha256: "ab".repeat(32),
    }
}

fn ambulance() -> Caller {
    partner(agreement(PARTNER, PartnerType::Ambulance))
}

async fn send(
    h: &Harness,
    caller: &Caller,
    request: Request<Bytes>,
) -> (u16, Value, Response<Bytes>) {
    let response = h.api.handle(caller, request).await;
    let body: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), body, response)
}

fn error_code(body: &Value) -> &str {
    body["issue"][0]["details"]["coding"][0]["code"]
        .as_str()
        .unwrap_or("")
}

fn resource_ids(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn list<'a>(bundle: &'a Value, code: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "List" && r["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no List {code}"))
}

fn lists(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "List")
        .collect()
}

fn list_items(list: &Value) -> Vec<&str> {
    list["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["item"]["reference"].as_str().unwrap())
        .collect()
}

fn last_event(h: &Harness) -> AccessEvent {
    h.audit.events.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test]
async fn unregistered_certificate_is_refused_and_audited() {
    let h = harness();
    let caller = Caller {
        agreement: None,
        certificate_sha256: "cd".repeat(32),
    };
    let (status, body, _) = send(
        &h,
        &caller,
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &token(|_| {}),
        ),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "ACCESS_DENIED"));
    let event = last_event(&h);
    assert!(!event.permitted);
    assert_eq!(event.certificate_sha256, "cd".repeat(32));
}

#[tokio::test]
async fn metadata_needs_no_token_but_a_registered_partner() {
    let h = harness();
    let request = || Request::get("/fhir/metadata").body(Bytes::new()).unwrap();
    let (status, body, response) = send(&h, &ambulance(), request()).await;
    assert_eq!(status, 200);
    assert_eq!(body["resourceType"], "CapabilityStatement");
    assert_eq!(
        response.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    let (status, _, _) = send(
        &h,
        &Caller {
            agreement: None,
            certificate_sha256: String::new(),
        },
        request(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn malformed_requests_get_their_codes() {
    let h = harness();
    let good = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    type Edit = Box<dyn Fn(&mut Request<Bytes>)>;
    let cases: Vec<(Edit, u16, &str)> = vec![
        (
            Box::new(|r| {
                r.headers_mut().remove("Ssp-TraceID");
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| {
                r.headers_mut().insert("Ssp-From", "12".parse().unwrap());
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| {
                r.headers_mut()
                    .insert("Ssp-To", "200000000999".parse().unwrap());
            }),
            403,
            "ACCESS_DENIED",
        ),
        (
            Box::new(|r| {
                r.headers_mut()
                    .insert("Ssp-InteractionID", SEARCH.parse().unwrap());
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| {
                r.headers_mut().remove("Authorization");
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| {
                r.headers_mut().insert(
                    "Authorization",
                    format!(
                        "Bearer {}",
                        token(|c| c["aud"] = json!("https://other/fhir"))
                    )
                    .parse()
                    .unwrap(),
                );
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| {
                r.headers_mut().insert(
                    "Authorization",
                    format!(
                        "Bearer {}",
                        token(|c| {
                            c["iat"] = json!(now() - 1000);
                            c["exp"] = json!(now() - 800);
                        })
                    )
                    .parse()
                    .unwrap(),
                );
            }),
            400,
            "BAD_REQUEST",
        ),
        (
            Box::new(|r| *r.body_mut() = Bytes::from(record_body("9990000019", &[]))),
            400,
            "INVALID_NHS_NUMBER",
        ),
        (
            Box::new(|r| {
                *r.body_mut() = Bytes::from(
                    record_body(CORE_AND_ADDITIONAL, &[])
                        .replace("https://fhir.nhs.uk/Id/nhs-number", "urn:example:mrn"),
                )
            }),
            400,
            "INVALID_IDENTIFIER_SYSTEM",
        ),
        (
            Box::new(|r| {
                *r.body_mut() =
                    Bytes::from(record_body(CORE_AND_ADDITIONAL, &["includeEverything"]))
            }),
            422,
            "INVALID_PARAMETER",
        ),
        (
            Box::new(|r| *r.body_mut() = Bytes::from_static(b"<Parameters/>")),
            400,
            "BAD_REQUEST",
        ),
    ];
    for (index, (edit, status, code)) in cases.into_iter().enumerate() {
        let mut request = post_record(good.clone(), &token(|_| {}));
        edit(&mut request);
        let (got, body, response) = send(&h, &ambulance(), request).await;
        assert_eq!((got, error_code(&body)), (status, code), "case {index}");
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert!(
            !body.to_string().contains("JWT:"),
            "internal detail leaked in case {index}"
        );
        if index > 0 {
            assert_eq!(response.headers()["ssp-traceid"], TRACE, "case {index}");
        }
        assert_eq!(last_event(&h).error_code.map(|c| c.code()), Some(code));
    }
}

#[tokio::test]
async fn organisation_role_and_expiry_are_checked_against_the_agreement() {
    let h = harness();
    let body = || record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    let (status, b, _) = send(
        &h,
        &ambulance(),
        post_record(
            body(),
            &token(|c| c["requesting_organization"]["identifier"][0]["value"] = json!("RYZ")),
        ),
    )
    .await;
    assert_eq!((status, error_code(&b)), (403, "ACCESS_DENIED"));
    let (status, b, _) = send(
        &h,
        &ambulance(),
        post_record(
            body(),
            &token(|c| {
                c["requesting_practitioner"]["practitionerRole"][0]["role"]["coding"][0]["code"] =
                    json!("R9999")
            }),
        ),
    )
    .await;
    assert_eq!((status, error_code(&b)), (403, "ACCESS_DENIED"));
    let mut expired = agreement(PARTNER, PartnerType::Ambulance);
    expired.expires = Some(time::macros::date!(2020 - 01 - 01));
    let (status, b, _) = send(&h, &partner(expired), post_record(body(), &token(|_| {}))).await;
    assert_eq!((status, error_code(&b)), (403, "ACCESS_DENIED"));
    assert!(last_event(&h).refusal_reason.unwrap().contains("expired"));
}

#[tokio::test]
async fn unknown_patient_is_not_found_but_an_empty_search() {
    let h = harness();
    let (status, body, _) = send(
        &h,
        &ambulance(),
        post_record(record_body(NOT_REGISTERED, &ALL_SECTIONS), &token(|_| {})),
    )
    .await;
    assert_eq!((status, error_code(&body)), (404, "PATIENT_NOT_FOUND"));
    let query = format!("https://fhir.nhs.uk/Id/nhs-number%7C{NOT_REGISTERED}");
    let (status, body, _) = send(&h, &ambulance(), search(&query, &token(|_| {}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["type"].as_str(), body["total"].as_u64()),
        (Some("searchset"), Some(0))
    );
}

#[tokio::test]
async fn patient_search_returns_demographics_only() {
    let h = harness();
    let query = format!("https://fhir.nhs.uk/Id/nhs-number|{CORE_AND_ADDITIONAL}");
    let (status, body, _) = send(&h, &ambulance(), search(&query, &token(|_| {}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 1);
    let patient = &body["entry"][0]["resource"];
    assert_eq!(patient["resourceType"], "Patient");
    assert!(
        patient.get("generalPractitioner").is_none(),
        "dangling reference kept"
    );
    let (status, body, _) = send(
        &h,
        &ambulance(),
        search("urn:example:mrn|123", &token(|_| {})),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (400, "INVALID_IDENTIFIER_SYSTEM")
    );
    let (status, body, _) = send(
        &h,
        &ambulance(),
        search(
            &format!("https://fhir.nhs.uk/Id/nhs-number|{DISSENT}"),
            &token(|_| {}),
        ),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "NO_PATIENT_CONSENT"));
}

#[tokio::test]
async fn dissent_beats_every_permission_including_override() {
    let h = harness();
    for permission in [json!("granted"), json!("override"), Value::Null] {
        let jwt = token(|c| {
            c["permission_to_view"] = permission.clone();
            c["override_reason"] = json!("emergency");
            c["override_justification"] = json!("Unconscious patient, allergy status needed");
        });
        let (status, body, _) = send(
            &h,
            &ambulance(),
            post_record(record_body(DISSENT, &ALL_SECTIONS), &jwt),
        )
        .await;
        assert_eq!(
            (status, error_code(&body)),
            (403, "NO_PATIENT_CONSENT"),
            "{permission}"
        );
    }
}

#[tokio::test]
async fn without_permission_only_a_standing_consent_admits() {
    let h = harness();
    let jwt = |ods: &'static str| {
        token(move |c| {
            c.as_object_mut().unwrap().remove("permission_to_view");
            c["requesting_organization"]["identifier"][0]["value"] = json!(ods);
        })
    };
    let (status, body, _) = send(
        &h,
        &ambulance(),
        post_record(record_body(STANDING, &["includeMedication"]), &jwt(PARTNER)),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "NO_PATIENT_CONSENT"));

    let carer = partner(agreement(CARER_ORG, PartnerType::SocialCare));
    let (status, body, _) = send(
        &h,
        &carer,
        post_record(
            record_body(STANDING, &["includeMedication"]),
            &jwt(CARER_ORG),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(last_event(&h).basis.as_deref(), Some("standing-consent"));
    let (status, _, _) = send(
        &h,
        &carer,
        post_record(
            record_body(CORE_AND_ADDITIONAL, &["includeMedication"]),
            &jwt(CARER_ORG),
        ),
    )
    .await;
    assert_eq!(
        status, 403,
        "a standing consent is for its own patient only"
    );
}

#[tokio::test]
async fn core_tier_releases_only_core_sections() {
    let h = harness();
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(record_body(CORE_ONLY, &ALL_SECTIONS), &token(|_| {})),
    )
    .await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    assert!(ids.contains("AllergyIntolerance/p-core-allergy"));
    assert!(ids.contains("MedicationStatement/p-core-statin"));
    assert!(ids.contains("Medication/atorvastatin"));
    assert!(!ids
        .iter()
        .any(|id| id.starts_with("Condition/") || id.starts_with("Immunization/")));
    let problems = list(&bundle, "717711000000103");
    assert_eq!(problems["emptyReason"]["coding"][0]["code"], "withheld");
    assert_eq!(problems["extension"][0]["valueCode"], "confidential-items");
    assert_eq!(
        problems["note"][0]["text"],
        "Items excluded due to confidentiality and/or patient preferences."
    );
    assert_eq!(
        last_event(&h).sections,
        [Section::Allergies, Section::Medications]
    );
}

#[tokio::test]
async fn sensitive_and_confidential_items_never_leave_without_consent() {
    let h = harness();
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &token(|_| {}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    assert!(ids.contains("Condition/p-full-asthma"));
    assert!(ids.contains("CarePlan/p-full-eol") && ids.contains("Flag/p-full-bsl"));
    let text = bundle.to_string();
    for withheld in [
        "p-full-chlamydia",
        "p-full-azithromycin",
        "p-full-top",
        "p-full-confidential",
        "azithromycin",
        "Consent",
    ] {
        assert!(!text.contains(withheld), "{withheld} leaked");
    }
    assert_eq!(
        list(&bundle, "717711000000103")["extension"][0]["valueCode"],
        "confidential-items"
    );
    assert!(list(&bundle, "717711000000103")
        .get("emptyReason")
        .is_none());
    assert!(
        list(&bundle, "1102181000000102").get("extension").is_none(),
        "immunisations lost nothing"
    );
    assert!(!text.contains("\"total\""));
    // Request filters: resolved allergies and old medication are left out when not asked for.
    assert!(!ids.contains("AllergyIntolerance/p-full-old-allergy"));
}

#[tokio::test]
async fn specific_consent_releases_its_category_only() {
    let h = harness();
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(record_body(STI_CONSENT, &ALL_SECTIONS), &token(|_| {})),
    )
    .await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    assert!(ids.contains("Condition/p-sti-chlamydia"));
    assert!(ids.contains("MedicationRequest/p-sti-azithromycin"));
    assert!(!ids.contains("Procedure/p-sti-top"));
    assert!(!ids.contains("Condition/p-sti-confidential"));
}

#[tokio::test]
async fn override_is_limited_audited_and_alerts() {
    let h = harness();
    let jwt = |role: &'static str, justification: &'static str| {
        token(move |c| {
            c["permission_to_view"] = json!("override");
            c["override_reason"] = json!("emergency");
            c["override_justification"] = json!(justification);
            c["requesting_practitioner"]["practitionerRole"][0]["role"]["coding"][0]["code"] =
                json!(role);
        })
    };
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &jwt("R8000", "Patient unconscious at scene"),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    assert!(
        ids.contains("MedicationStatement/p-full-statin") && ids.contains("CarePlan/p-full-eol")
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("Condition/")),
        "problems are not override sections"
    );
    let event = last_event(&h);
    assert!(event.alert && event.permitted);
    assert_eq!(event.basis.as_deref(), Some("override"));
    assert_eq!(event.override_reason.as_deref(), Some("emergency"));
    assert_eq!(
        event.override_justification.as_deref(),
        Some("Patient unconscious at scene")
    );

    let (status, body, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &jwt("R0260", "Patient unconscious at scene"),
        ),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "ACCESS_DENIED"),
        "role may not override"
    );
    let (status, body, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &jwt("R8000", "urgent"),
        ),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "ACCESS_DENIED"),
        "justification too short"
    );
    assert!(!last_event(&h).alert);
}

#[tokio::test]
async fn nothing_is_released_when_the_audit_cannot_be_written() {
    let h = harness();
    h.audit.broken.store(true, Ordering::SeqCst);
    let (status, body, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS),
            &token(|_| {}),
        ),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        !body.to_string().contains("p-full"),
        "record data released without audit"
    );
}

#[tokio::test]
async fn medication_search_date_filters_and_ended_allergies_have_their_own_list() {
    let h = harness();
    let body = |resolved: bool| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "patientNHSNumber", "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": CORE_AND_ADDITIONAL}},
            {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": resolved}]},
            {"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2020-01-01"}]}]})
        .to_string()
    };
    let (status, bundle, _) = send(&h, &ambulance(), post_record(body(true), &token(|_| {}))).await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    assert!(ids.contains("MedicationStatement/p-full-statin"));
    assert!(!ids.contains("MedicationStatement/p-full-old-med"));
    assert_eq!(
        list_items(list(&bundle, "886921000000105")),
        ["AllergyIntolerance/p-full-allergy"]
    );
    let ended = list(&bundle, "1103671000000101");
    assert_eq!(ended["title"], "Ended allergies");
    assert_eq!(list_items(ended), ["AllergyIntolerance/p-full-old-allergy"]);
    // Right after the active allergies, as GP Connect orders them.
    let titles: Vec<&str> = lists(&bundle)
        .iter()
        .map(|l| l["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "Allergies and adverse reactions",
            "Ended allergies",
            "Medications and medical devices"
        ]
    );

    let (status, bundle, _) =
        send(&h, &ambulance(), post_record(body(false), &token(|_| {}))).await;
    assert_eq!(status, 200);
    assert!(!resource_ids(&bundle).contains("AllergyIntolerance/p-full-old-allergy"));
    assert_eq!(
        lists(&bundle).len(),
        2,
        "no Ended allergies List unless asked for"
    );
}

#[tokio::test]
async fn each_item_is_filed_in_the_list_its_type_and_codes_say() {
    let h = harness();
    let body = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS)
        .replace(r#""valueBoolean":false"#, r#""valueBoolean":true"#);
    let (status, bundle, _) = send(&h, &ambulance(), post_record(body, &token(|_| {}))).await;
    assert_eq!(status, 200);
    let expected: [(&str, &[&str]); 12] = [
        ("886921000000105", &["AllergyIntolerance/p-full-allergy"]),
        (
            "1103671000000101",
            &["AllergyIntolerance/p-full-old-allergy"],
        ),
        (
            "933361000000108",
            &[
                "MedicationStatement/p-full-old-med",
                "MedicationStatement/p-full-statin",
            ],
        ),
        ("717711000000103", &["Condition/p-full-asthma"]),
        ("1102181000000102", &["Immunization/p-full-flu"]),
        ("1149501000000101", &["Encounter/p-full-visit"]),
        (
            "887191000000108",
            &[
                "DiagnosticReport/p-full-fbc",
                "Observation/p-full-hb",
                "Observation/p-full-hba1c",
            ],
        ),
        (
            "826501000000100",
            &[
                "Observation/p-full-bp",
                "Observation/p-full-fit-note",
                "Observation/p-full-smoking",
            ],
        ),
        ("792931000000107", &["ServiceRequest/p-full-referral"]),
        ("end-of-life", &["CarePlan/p-full-eol"]),
        ("communication-preferences", &["Flag/p-full-bsl"]),
        ("risks-and-warnings", &["Flag/p-full-risk"]),
    ];
    for (code, items) in expected {
        let mut found = list_items(list(&bundle, code));
        found.sort();
        assert_eq!(found, items, "List {code}");
    }
    // A care plan that is not end-of-life care is not served at all, and withholds nothing.
    assert!(!resource_ids(&bundle).contains("CarePlan/p-full-asthma-plan"));
    assert!(list(&bundle, "end-of-life").get("extension").is_none());
    // One List per requested section, plus Ended allergies; each entry with a fullUrl.
    assert_eq!(lists(&bundle).len(), ALL_SECTIONS.len() + 1);
    for entry in bundle["entry"].as_array().unwrap() {
        let resource = &entry["resource"];
        assert_eq!(
            entry["fullUrl"],
            format!(
                "{BASE}/{}/{}",
                resource["resourceType"].as_str().unwrap(),
                resource["id"].as_str().unwrap()
            )
            .as_str()
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused() {
    let h = harness();
    let (status, _, _) = send(
        &h,
        &ambulance(),
        Request::get("/fhir/Observation")
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        &h,
        &ambulance(),
        Request::delete("/fhir/Patient").body(Bytes::new()).unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _, response) = send(
        &h,
        &ambulance(),
        Request::get("/healthz").body(Bytes::new()).unwrap(),
    )
    .await;
    assert_eq!((status, &response.body()[..]), (200, &b"ok"[..]));
}

#[tokio::test]
async fn writes_after_a_read_are_served_at_once() {
    // Reads are cached per patient: an upsert or a purge must still show in the next response.
    let h = harness();
    let request = || {
        post_record(
            record_body(CORE_AND_ADDITIONAL, &["includeProblems"]),
            &token(|_| {}),
        )
    };
    let (status, first, _) = send(&h, &ambulance(), request()).await;
    assert_eq!(status, 200);
    assert!(!resource_ids(&first).contains("Condition/p-full-diabetes"));

    let mut writer = Replica::open(&h._dir.path().join("replica.db"), &KEY).unwrap();
    let diabetes = json!({"resourceType": "Condition", "id": "p-full-diabetes",
        "subject": {"reference": "Patient/p-full"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}});
    writer
        .import_ndjson(format!("{diabetes}\n").as_bytes())
        .unwrap();
    let (_, second, _) = send(&h, &ambulance(), request()).await;
    assert!(resource_ids(&second).contains("Condition/p-full-diabetes"));

    let purge = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient/p-full"}}]});
    writer.apply_bundle(purge.to_string().as_bytes()).unwrap();
    let (status, body, _) = send(&h, &ambulance(), request()).await;
    assert_eq!((status, error_code(&body)), (404, "PATIENT_NOT_FOUND"));
}

/// What the public GP Connect provider assurance suite (nhsconnect/gpconnect-provider-testing,
/// 1.6) asserts of every List, for full and core-only records: status `current`, mode
/// `snapshot`, a code, a subject, the suite's title for each GP Connect List (and the Ended
/// allergies code's display "Ended allergies"), at most one warning code from the GP Connect
/// value set, and on an empty List an `emptyReason` with one coding and a note. Deliberate
/// departures (docs/integration.md): R4 `list-empty-reason` codes, and Lists with an id.
#[tokio::test]
async fn lists_meet_what_the_gp_connect_assurance_suite_asserts() {
    let titles: BTreeMap<&str, &str> = [
        ("886921000000105", "Allergies and adverse reactions"),
        ("1103671000000101", "Ended allergies"),
        ("933361000000108", "Medications and medical devices"),
        ("717711000000103", "Problems"),
        ("1102181000000102", "Immunisations"),
        ("1149501000000101", "List of consultations"),
        ("887191000000108", "Investigations and results"),
        ("826501000000100", "Uncategorised data"),
        ("792931000000107", "Outbound referral"),
    ]
    .into();
    let h = harness();
    for nhs in [CORE_AND_ADDITIONAL, CORE_ONLY] {
        let body = record_body(nhs, &ALL_SECTIONS)
            .replace(r#""valueBoolean":false"#, r#""valueBoolean":true"#);
        let (status, bundle, _) = send(&h, &ambulance(), post_record(body, &token(|_| {}))).await;
        assert_eq!(status, 200);
        let lists = lists(&bundle);
        assert_eq!(lists.len(), ALL_SECTIONS.len() + 1);
        let mut codes = BTreeSet::new();
        for list in lists {
            let code = &list["code"]["coding"][0];
            let code_value = code["code"].as_str().unwrap();
            assert!(codes.insert(code_value), "two Lists {code_value}");
            assert_eq!(list["status"], "current");
            assert_eq!(list["mode"], "snapshot");
            assert_eq!(
                list["subject"]["reference"],
                format!(
                    "Patient/{}",
                    if nhs == CORE_ONLY { "p-core" } else { "p-full" }
                )
                .as_str()
            );
            let title = list["title"].as_str().unwrap();
            assert_eq!(code["display"], title);
            if let Some(expected) = titles.get(code_value) {
                assert_eq!(title, *expected);
                assert_eq!(code["system"], "http://snomed.info/sct");
            } else {
                assert_eq!(code["system"], "urn:mig:list-code");
            }
            let warnings: Vec<&Value> = list["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["url"]
                        == "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-ListWarningCode-1"
                })
                .collect();
            assert!(warnings.len() <= 1);
            for warning in &warnings {
                assert_eq!(warning["valueCode"], "confidential-items");
                assert_eq!(
                    list["note"][0]["text"],
                    "Items excluded due to confidentiality and/or patient preferences."
                );
            }
            match list["entry"].as_array() {
                Some(entries) => {
                    assert!(!entries.is_empty());
                    assert!(list.get("emptyReason").is_none());
                    for entry in entries {
                        let reference = entry["item"]["reference"].as_str().unwrap();
                        assert!(resource_ids(&bundle).contains(reference), "{reference}");
                    }
                }
                None => {
                    let reason = &list["emptyReason"]["coding"];
                    assert_eq!(reason.as_array().unwrap().len(), 1);
                    assert_eq!(
                        reason[0]["system"],
                        "http://terminology.hl7.org/CodeSystem/list-empty-reason"
                    );
                    let expected = if warnings.is_empty() {
                        assert_eq!(list["note"][0]["text"], "Information not available");
                        "nilknown"
                    } else {
                        "withheld"
                    };
                    assert_eq!(reason[0]["code"], expected);
                }
            }
        }
        for code in titles.keys() {
            assert!(codes.contains(code), "no List {code}");
        }
    }
}
