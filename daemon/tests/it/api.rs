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
use mig::replica::{ReaderPool, Replica};
use mig_policy::fhir::Section;
use mig_policy::{Agreement, Basis, PartnerType, RoleSet, SensitiveCodes};
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
            "medicationReference": {"reference": "Medication/atorvastatin"}, "effectivePeriod": {"start": "2015-05-01", "end": "2015-06-01"}}),
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
        attested_permission: false,
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    api: Api,
    audit: Arc<RecordingAudit>,
}

fn harness() -> Harness {
    harness_with(Vec::new())
}

/// The practice and `extra` resources after it.
fn harness_with(extra: Vec<Value>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut replica = Replica::create(&path, &KEY).unwrap();
    let ndjson: String = practice()
        .iter()
        .chain(&extra)
        .map(|r| format!("{r}\n"))
        .collect();
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
        health: Arc::new(|| Ok(())),
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
    assert!(!event.permitted());
    assert_eq!(event.certificate_sha256, "cd".repeat(32));
}

/// `Ssp-From` (the caller's ASID) reaches the audit record of a permitted request and of a
/// refused one; a malformed value is not recorded as if it were an ASID.
#[tokio::test]
async fn ssp_from_is_recorded_in_the_audit_even_on_refusals() {
    let h = harness();
    let body = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    send(&h, &ambulance(), post_record(body.clone(), &token(|_| {}))).await;
    assert_eq!(last_event(&h).from_asid.as_deref(), Some("200000000999"));
    let (status, _, _) = send(&h, &ambulance(), post_record(body.clone(), "not-a-jwt")).await;
    assert_ne!(status, 200);
    let refused = last_event(&h);
    assert!(!refused.permitted());
    assert_eq!(refused.from_asid.as_deref(), Some("200000000999"));
    let mut bad = post_record(body, &token(|_| {}));
    bad.headers_mut()
        .insert("Ssp-From", "2000000009991".parse().unwrap());
    send(&h, &ambulance(), bad).await;
    assert_eq!(last_event(&h).from_asid, None);
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
        assert_eq!(last_event(&h).error_code().map(|c| c.code()), Some(code));
    }
}

#[tokio::test]
async fn requested_record_must_name_the_patient_asked_for() {
    let h = harness();
    let naming = |nhs: &str| {
        let nhs = nhs.to_owned();
        token(move |c| {
            c["requested_record"] = json!({"resourceType": "Patient",
                "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]})
        })
    };
    let body = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    let (status, _, _) = send(
        &h,
        &ambulance(),
        post_record(body.clone(), &naming(CORE_AND_ADDITIONAL)),
    )
    .await;
    assert_eq!(status, 200);

    let query = format!("https://fhir.nhs.uk/Id/nhs-number|{CORE_AND_ADDITIONAL}");
    let other_query = format!("https://fhir.nhs.uk/Id/nhs-number|{CORE_ONLY}");
    let refused = [
        post_record(body, &naming(CORE_ONLY)),
        search(&query, &naming(CORE_ONLY)),
        search(&other_query, &naming(CORE_AND_ADDITIONAL)),
    ];
    for request in refused {
        let (status, body, _) = send(&h, &ambulance(), request).await;
        assert_eq!((status, error_code(&body)), (400, "BAD_REQUEST"));
        let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains("requested_record"), "{diagnostics}");
        assert!(!diagnostics.contains(CORE_ONLY) && !diagnostics.contains(CORE_AND_ADDITIONAL));
        let event = last_event(&h);
        assert!(!event.permitted());
        assert!(event.refusal_reason().unwrap().contains("requested_record"));
    }
    let (status, _, _) = send(
        &h,
        &ambulance(),
        search(&query, &naming(CORE_AND_ADDITIONAL)),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_token_with_a_repeated_key_or_unprintable_claim_is_refused_naming_it() {
    use base64::Engine;
    let h = harness();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = jwt::example_claims(BASE, PARTNER, "R8000", now()).to_string();
    // Policy would read the last organisation; the audit or a proxy might keep the first.
    let repeated = claims.replacen(
        r#""requesting_organization":"#,
        r#""requesting_organization":{"resourceType":"Organization","identifier":[{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"RYY"}]},"requesting_organization":"#,
        1,
    );
    let repeated = format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        engine.encode(repeated)
    );
    let forged_line = token(|c| {
        c["requesting_practitioner"]["identifier"][0]["value"] =
            json!("111222333444\n2026-01-01T00:00:00Z permitted RYY")
    });
    let overlong_role = token(|c| {
        c["requesting_practitioner"]["practitionerRole"][0]["role"]["coding"][0]["code"] =
            json!("R".repeat(300))
    });
    let cases = [
        (repeated, r#"repeated key \"requesting_organization\""#),
        (forged_line, "sds-user-id is not printable text"),
        (overlong_role, "job role code is longer than 256 characters"),
    ];
    for (jwt, expected) in cases {
        let request = post_record(record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS), &jwt);
        let (status, body, _) = send(&h, &ambulance(), request).await;
        assert_eq!((status, error_code(&body)), (400, "BAD_REQUEST"));
        let diagnostics = body["issue"][0]["diagnostics"].to_string();
        assert!(
            diagnostics.contains(expected),
            "{diagnostics} should say {expected}"
        );
        let event = last_event(&h);
        assert!(
            event.claims.is_none(),
            "nothing of a refused token is recorded"
        );
    }

    let mut parameters = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    parameters = parameters.replacen(
        r#""valueIdentifier":"#,
        r#""valueIdentifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9990000026"},"valueIdentifier":"#,
        1,
    );
    let (status, body, _) = send(&h, &ambulance(), post_record(parameters, &token(|_| {}))).await;
    assert_eq!((status, error_code(&body)), (400, "BAD_REQUEST"));
    assert!(last_event(&h)
        .refusal_reason()
        .unwrap()
        .contains("repeated key \"valueIdentifier\""));
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
    assert!(last_event(&h).refusal_reason().unwrap().contains("expired"));
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
    assert_eq!(
        last_event(&h).basis().map(Basis::name),
        Some("standing-consent")
    );
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
        last_event(&h).sections(),
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
    assert!(event.alert() && event.permitted());
    assert_eq!(event.basis().map(Basis::name), Some("override"));
    let record = mig::audit::AuditRecord::from(&event);
    assert_eq!(record.override_reason.as_deref(), Some("emergency"));
    assert_eq!(
        record.override_justification.as_deref(),
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
    assert!(!last_event(&h).alert());
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
            {"name": "includeMedication", "part": [{"name": "medicationSearchFromDate", "valueDate": "2024-01-01"}]}]})
        .to_string()
    };
    let (status, bundle, _) = send(&h, &ambulance(), post_record(body(true), &token(|_| {}))).await;
    assert_eq!(status, 200);
    let ids = resource_ids(&bundle);
    // Started before the search date and still running: active on or after it.
    assert!(ids.contains("MedicationStatement/p-full-statin"));
    assert!(
        !ids.contains("MedicationStatement/p-full-old-med"),
        "ended in 2015"
    );
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
    let refused = last_event(&h);
    assert!(!refused.permitted());
    assert_eq!(
        refused.http_refusal(),
        Some(mig::api::outcome::HttpRefusal::UnknownRoute)
    );
    let (status, body, _) = send(
        &h,
        &ambulance(),
        Request::delete("/fhir/Patient").body(Bytes::new()).unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(error_code(&body), "NOT_IMPLEMENTED");
    assert_eq!(
        last_event(&h).http_refusal(),
        Some(mig::api::outcome::HttpRefusal::MethodNotAllowed)
    );
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

/// A Bundle with what differs between two renderings of one release taken out: the Bundle's
/// and Lists' fresh ids and the times.
fn without_per_request_fields(mut bundle: Value) -> Value {
    bundle["id"] = Value::Null;
    bundle["meta"] = Value::Null;
    for entry in bundle["entry"].as_array_mut().unwrap() {
        if entry["resource"]["resourceType"] == "List" {
            entry["fullUrl"] = Value::Null;
            entry["resource"]["id"] = Value::Null;
            entry["resource"]["date"] = Value::Null;
        }
    }
    bundle
}

#[tokio::test]
async fn requests_decided_differently_never_share_written_bytes() {
    // One API keeps the patient's record and the entries it wrote for earlier requests; the
    // other keeps nothing, so it writes every Bundle from scratch. Requests whose decisions
    // differ (granted, override, another partner's agreement, fewer sections) alternate.
    let cached = harness();
    let mut fresh = harness();
    fresh.api.records = Arc::new(mig::api::records::RecordCache::new(0));
    let granted = token(|_| {});
    let override_token = token(|c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!("Patient unconscious at scene");
    });
    let mut medicines_only = agreement(PARTNER, PartnerType::Ambulance);
    medicines_only.sections = [Section::Medications].into_iter().collect();
    let requests = [
        (ambulance(), &ALL_SECTIONS[..], &granted),
        (ambulance(), &ALL_SECTIONS[..], &override_token),
        (partner(medicines_only), &ALL_SECTIONS[..], &granted),
        (ambulance(), &["includeMedication"][..], &granted),
        (ambulance(), &ALL_SECTIONS[..], &granted),
        (ambulance(), &ALL_SECTIONS[..], &override_token),
    ];
    let mut seen = Vec::new();
    for (n, (caller, sections, jwt)) in requests.iter().enumerate() {
        let request = || post_record(record_body(CORE_AND_ADDITIONAL, sections), jwt);
        let (status, from_cache, _) = send(&cached, caller, request()).await;
        let (fresh_status, from_scratch, _) = send(&fresh, caller, request()).await;
        assert_eq!((status, fresh_status), (200, 200), "request {n}");
        assert_eq!(
            without_per_request_fields(from_cache.clone()),
            without_per_request_fields(from_scratch),
            "request {n} differs from a Bundle written from scratch"
        );
        let mut ids = resource_ids(&from_cache);
        ids.retain(|id| !id.starts_with("List/"));
        seen.push(ids);
    }
    // The decisions did differ, each way round.
    assert!(seen[0].contains("Condition/p-full-asthma"));
    assert!(!seen[1].iter().any(|id| id.starts_with("Condition/")));
    assert!(!seen[2].iter().any(|id| id.starts_with("Condition/")));
    assert!(!seen[3].iter().any(|id| id.starts_with("Condition/")));
    assert_eq!(seen[4], seen[0]);
    assert_eq!(seen[5], seen[1]);
    assert_ne!(seen[1], seen[2]);
}

fn html_request(body: String, jwt: &str) -> Request<Bytes> {
    let mut request = post_record(body, jwt);
    request.headers_mut().insert(
        "accept",
        "text/html,application/xhtml+xml,*/*;q=0.8".parse().unwrap(),
    );
    request
}

fn page_text(response: &Response<Bytes>) -> String {
    String::from_utf8(response.body().to_vec()).unwrap()
}

#[tokio::test]
async fn html_view_is_the_same_release_decided_and_audited_once() {
    let h = harness();
    let body = record_body(CORE_AND_ADDITIONAL, &ALL_SECTIONS);
    let (status, bundle, _) =
        send(&h, &ambulance(), post_record(body.clone(), &token(|_| {}))).await;
    assert_eq!(status, 200);
    let response = h
        .api
        .handle(&ambulance(), html_request(body, &token(|_| {})))
        .await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(headers["ssp-traceid"], TRACE);

    let events = h.audit.events.lock().unwrap();
    assert_eq!(events.len(), 2, "one audit record per request");
    let (json_event, html_event) = (&events[0], &events[1]);
    assert_eq!(html_event.interaction, mig::api::HTML_VIEW_INTERACTION);
    assert!(html_event.permitted());
    assert_eq!(html_event.sections(), json_event.sections());
    assert_eq!(html_event.basis(), json_event.basis());

    let page = page_text(&response);
    assert!(!page.to_lowercase().contains("<script"), "no script");
    for (code, title) in [
        ("886921000000105", "Allergies and adverse reactions"),
        ("933361000000108", "Medications and medical devices"),
        ("717711000000103", "Problems"),
    ] {
        assert!(page.contains(&format!(">{title}</h2>")), "{title}");
        // The List that carries the warning in JSON carries it on the page.
        let warned = list(&bundle, code)["note"].is_array();
        let section = page.split(&format!(">{title}</h2>")).nth(1).unwrap();
        let section = section.split("</section>").next().unwrap();
        assert_eq!(
            section.contains(mig::api::bundle::WITHHELD_NOTE),
            warned,
            "{title}"
        );
    }
    assert!(page.contains("999 000 0018"), "NHS number as 3-3-4");
    assert!(page.contains("TEST, p-full"), "patient name");
    // The withheld Condition's code and the confidential one appear nowhere.
    for withheld in [
        "105629000",
        "35489007",
        "p-full-chlamydia",
        "p-full-confidential",
    ] {
        assert!(!page.contains(withheld), "{withheld} leaked into the page");
    }
}

#[tokio::test]
async fn html_view_of_an_override_says_it_was_reported() {
    let h = harness();
    let jwt = token(|c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!("Unconscious patient, allergy status needed");
    });
    let response = h
        .api
        .handle(
            &ambulance(),
            html_request(
                record_body(CORE_AND_ADDITIONAL, &["includeAllergies"]),
                &jwt,
            ),
        )
        .await;
    assert_eq!(response.status(), 200);
    let page = page_text(&response);
    assert!(page.contains("role=\"alert\""));
    assert!(page.contains("reported to the practice's privacy officer"));
    let events = h.audit.events.lock().unwrap();
    assert!(events[0].alert(), "the override alert is raised once");
}

#[tokio::test]
async fn html_view_renders_hostile_record_text_as_text() {
    let h = harness();
    let hostile = [
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
    ];
    let mut writer = Replica::open(&h._dir.path().join("replica.db"), &KEY).unwrap();
    let text = |n: usize| json!(hostile[n % 2]);
    let resources = [
        json!({"resourceType": "Patient", "id": "p-hostile",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000077"}],
            "name": [{"family": text(0), "given": [text(1)], "prefix": [text(0)]}],
            "gender": "female", "birthDate": "1970-01-01",
            "address": [{"line": [text(0), text(1)], "city": text(1), "postalCode": text(0)}]}),
        tier("p-hostile-pref", "p-hostile", "core-and-additional"),
        json!({"resourceType": "MedicationStatement", "id": "p-hostile-med", "subject": {"reference": "Patient/p-hostile"},
            "status": "active", "medicationCodeableConcept": {"text": text(0)},
            "dosage": [{"text": text(1)}], "effectivePeriod": {"start": "2020-01-01"}}),
        json!({"resourceType": "AllergyIntolerance", "id": "p-hostile-allergy", "patient": {"reference": "Patient/p-hostile"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005", "display": text(1)}]},
            "reaction": [{"manifestation": [{"text": text(0)}], "severity": text(1)}]}),
        json!({"resourceType": "Condition", "id": "p-hostile-problem", "subject": {"reference": "Patient/p-hostile"},
            "code": {"text": text(1)}, "note": [{"text": text(0)}],
            "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance", "valueCode": text(0)}]}),
        json!({"resourceType": "Observation", "id": "p-hostile-obs", "subject": {"reference": "Patient/p-hostile"},
            "status": "final", "code": {"text": text(0)}, "valueString": text(1),
            "referenceRange": [{"text": text(0)}]}),
    ];
    let ndjson: String = resources.iter().map(|r| format!("{r}\n")).collect();
    writer.import_ndjson(ndjson.as_bytes()).unwrap();
    let response = h
        .api
        .handle(
            &ambulance(),
            html_request(record_body("9990000077", &ALL_SECTIONS), &token(|_| {})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let page = page_text(&response);
    assert!(
        !page.contains("<script>alert"),
        "script tag rendered as markup"
    );
    assert!(!page.contains("<img"), "img tag rendered as markup");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.contains("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
}

#[tokio::test]
async fn refusals_stay_operation_outcomes_for_the_html_view() {
    let h = harness();
    let (status, body, _) = send(
        &h,
        &ambulance(),
        html_request(record_body(DISSENT, &["includeAllergies"]), &token(|_| {})),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "NO_PATIENT_CONSENT"));
    let events = h.audit.events.lock().unwrap();
    assert_eq!(events[0].interaction, mig::api::HTML_VIEW_INTERACTION);
}

// ------------------------------------------------ item filtering: items judged whole (issue 13)

const CONTAINED: &str = "9990000107";
const DECEASED: &str = "9990000115";
const ENDED: &str = "9990000123";
const RESTRICTED: &str = "9990000131";
const VERY_RESTRICTED_OLD_SYSTEM: &str = "9990000158";
const PROJECTED: &str = "9990000166";

const STD_CONCEPT: &str = "8098009";
const STD_REFSET: &str = "999004381000000103";
const OLD_CONFIDENTIALITY: &str = "http://hl7.org/fhir/v3/Confidentiality";
const MEDICATIONS_LIST: &str = "933361000000108";

fn patient_resource(id: &str, nhs: &str, extra: Value) -> Value {
    let mut patient = json!({"resourceType": "Patient", "id": id,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"family": "Test", "given": [id]}], "gender": "male", "birthDate": "1960-05-05"});
    patient
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    patient
}

/// A patient sharing everything, with the items of the issue 13 review.
fn reviewed_patient() -> Vec<Value> {
    let subject = json!({"reference": "Patient/p-review"});
    let std = json!({"system": "http://snomed.info/sct", "code": STD_CONCEPT});
    vec![
        patient_resource("p-review", CONTAINED, json!({})),
        tier("p-review-pref", "p-review", "core-and-additional"),
        json!({"resourceType": "Observation", "id": "rv-naat", "subject": subject, "status": "final",
            "code": {"text": "NAAT"},
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}),
        // The review's example: a contained STD-labelled Condition naming the withheld Observation.
        json!({"resourceType": "MedicationRequest", "id": "rv-doxy", "subject": subject, "status": "active", "intent": "order",
            "contained": [{"resourceType": "Condition", "id": "why",
                "meta": {"security": [{"system": "http://snomed.info/sct", "code": STD_REFSET}]},
                "subject": subject, "code": {"text": "Chlamydia trachomatis infection"},
                "evidence": [{"detail": [{"reference": "Observation/rv-naat", "display": "Chlamydia NAAT positive"}]}]}],
            "reasonReference": [{"reference": "#why"}]}),
        // Bare codings: in an extension, as Encounter.class, in an Observation component.
        json!({"resourceType": "Condition", "id": "rv-ext", "subject": subject, "code": {"text": "Clinic attendance"},
            "extension": [{"url": "urn:local:reason", "valueCoding": std}]}),
        json!({"resourceType": "Encounter", "id": "rv-class", "subject": subject, "status": "finished", "class": std}),
        json!({"resourceType": "Observation", "id": "rv-component", "subject": subject, "status": "final",
            "code": {"text": "Screen"}, "component": [{"code": {"text": "result"}, "valueCodeableConcept": {"coding": [std]}}]}),
        // Confidentiality in the older system, and in a system of the practice's own.
        json!({"resourceType": "Condition", "id": "rv-old-r", "subject": subject, "code": {"text": "Old system R"},
            "meta": {"security": [{"system": OLD_CONFIDENTIALITY, "code": "R"}]}}),
        json!({"resourceType": "Condition", "id": "rv-local-label", "subject": subject, "code": {"text": "Local label"},
            "meta": {"security": [{"system": "https://gp-system.example/CodeSystem/Confidentiality", "code": "N"}]}}),
        // Released, but without its narrative, and without the other patient it names.
        json!({"resourceType": "Condition", "id": "rv-released", "subject": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001"}], "text": "Asthma"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Asthma; also seen at the GUM clinic</div>"},
            "contained": [{"resourceType": "Observation", "id": "peak", "status": "final", "code": {"text": "Peak flow"},
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">narrative</div>"},
                "focus": [{"reference": "Patient/p-full", "display": "Test p-full (contained)"}]}],
            "evidence": [{"detail": [{"reference": "#peak"}]}],
            "extension": [{"url": "urn:local:related-person", "valueReference": {"reference": "Patient/p-core", "display": "Test p-core"}}]}),
        json!({"resourceType": "Observation", "id": "rv-focus", "subject": subject, "status": "final",
            "code": {"text": "Family history"},
            "focus": [{"reference": "Patient/p-full", "display": "Test p-full"}]}),
        // Another patient by NHS number only, and as a contained Patient.
        json!({"resourceType": "Observation", "id": "rv-ident", "subject": subject, "status": "final",
            "code": {"text": "Household contact"},
            "focus": [{"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": CORE_ONLY},
                "display": "Other by NHS number"}],
            "performer": [{"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": CONTAINED}}],
            "contained": [{"resourceType": "Patient", "id": "mum", "name": [{"family": "Contained-mother"}]}],
            "hasMember": [{"reference": "#mum", "display": "Mother"}]}),
    ]
}

fn everything(nhs: &str) -> String {
    record_body(nhs, &ALL_SECTIONS)
}

fn find<'a>(bundle: &'a Value, reference: &str) -> Option<&'a Value> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            ) == reference
        })
}

#[tokio::test]
async fn contained_resources_codings_and_labels_withhold_their_item() {
    let h = harness_with(reviewed_patient());
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(everything(CONTAINED), &token(|_| {})),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let ids = resource_ids(&bundle);
    for withheld in [
        "MedicationRequest/rv-doxy",
        "Observation/rv-naat",
        "Condition/rv-ext",
        "Encounter/rv-class",
        "Observation/rv-component",
        "Condition/rv-old-r",
        "Condition/rv-local-label",
    ] {
        assert!(!ids.contains(withheld), "{withheld} released");
    }
    assert!(ids.contains("Condition/rv-released"));
    let text = bundle.to_string();
    for secret in ["Chlamydia", "rv-naat", STD_CONCEPT, STD_REFSET] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert_eq!(
        list(&bundle, MEDICATIONS_LIST)["note"][0]["text"],
        "Items excluded due to confidentiality and/or patient preferences."
    );
}

#[tokio::test]
async fn released_items_lose_their_narrative_and_other_patients() {
    let h = harness_with(reviewed_patient());
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(everything(CONTAINED), &token(|_| {})),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let condition = find(&bundle, "Condition/rv-released").unwrap();
    assert!(condition.get("text").is_none(), "narrative: {condition}");
    assert!(
        condition["contained"][0].get("text").is_none(),
        "contained narrative"
    );
    assert_eq!(
        condition["code"]["text"], "Asthma",
        "CodeableConcept.text is not narrative"
    );
    let focus = find(&bundle, "Observation/rv-focus").unwrap();
    assert!(focus.get("focus").is_none(), "{focus}");
    let text = bundle.to_string();
    for other in [
        "Patient/p-full",
        "Test p-full",
        "Patient/p-core",
        "Test p-core",
        "GUM clinic",
    ] {
        assert!(!text.contains(other), "{other} leaked");
    }
    // The contained resource itself stays, and the item's own patient reference too.
    assert_eq!(condition["contained"][0]["id"], "peak");
    assert_eq!(condition["subject"]["reference"], "Patient/p-review");
}

#[tokio::test]
async fn the_patient_is_served_as_its_demographics_projection() {
    let status_url =
        "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
    let patient = patient_resource(
        "p-projected",
        PROJECTED,
        json!({
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
                "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Lives with partner, HIV positive</div>"},
            "contained": [{"resourceType": "RelatedPerson", "id": "rp"}],
            "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
                "valueCodeableConcept": {"text": "secret-ethnicity"}}],
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": PROJECTED,
                 "extension": [{"url": status_url, "valueCodeableConcept": {"coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland", "code": "01"}]}}]},
                {"system": "urn:local:mrn", "value": "secret-mrn"}],
            "maritalStatus": {"text": "secret-marital"},
            "contact": [{"name": {"text": "secret-contact"}}],
            "telecom": [{"system": "phone", "value": "01632 960001"}],
            "managingOrganization": {"reference": "Organization/A81001"},
        }),
    );
    let h = harness_with(vec![
        patient,
        tier("p-projected-pref", "p-projected", "core-and-additional"),
    ]);
    let allowed: BTreeSet<&str> = [
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
    ]
    .into();
    let check = |resource: &Value| {
        for key in resource.as_object().unwrap().keys() {
            assert!(allowed.contains(key.as_str()), "{key} served: {resource}");
        }
        assert_eq!(resource["identifier"].as_array().unwrap().len(), 1);
        assert_eq!(resource["identifier"][0]["value"], PROJECTED);
        assert_eq!(resource["identifier"][0]["extension"][0]["url"], status_url);
        assert_eq!(resource["telecom"][0]["value"], "01632 960001");
        assert!(!resource.to_string().contains("secret"), "{resource}");
    };
    let (status, bundle, _) = send(
        &h,
        &ambulance(),
        post_record(
            record_body(PROJECTED, &["includeAllergies"]),
            &token(|_| {}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let served = find(&bundle, "Patient/p-projected").unwrap();
    check(served);
    assert_eq!(
        served["managingOrganization"]["reference"],
        "Organization/A81001"
    );
    let query = format!("https://fhir.nhs.uk/Id/nhs-number%7C{PROJECTED}");
    let (status, found, _) = send(&h, &ambulance(), search(&query, &token(|_| {}))).await;
    assert_eq!(status, 200);
    assert_eq!(found["total"], 1);
    check(&found["entry"][0]["resource"]);
}

#[tokio::test]
async fn deceased_ended_and_restricted_patients_are_answered_as_unknown() {
    let mut extra = Vec::new();
    let cases = [
        (
            "p-deceased",
            DECEASED,
            json!({"deceasedDateTime": "2025-06-01T10:00:00Z"}),
        ),
        ("p-ended", ENDED, json!({"active": false})),
        (
            "p-restricted",
            RESTRICTED,
            json!({"meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]}}),
        ),
        (
            "p-very",
            VERY_RESTRICTED_OLD_SYSTEM,
            json!({"meta": {"security": [{"system": OLD_CONFIDENTIALITY, "code": "V"}]}}),
        ),
    ];
    for (id, nhs, extra_fields) in &cases {
        extra.push(patient_resource(id, nhs, extra_fields.clone()));
        extra.push(tier(&format!("{id}-pref"), id, "core-and-additional"));
        extra.extend(clinical(id));
    }
    let h = harness_with(extra);
    let unknown = |(status, body): (u16, Value)| {
        assert_eq!(status, 404, "{body}");
        assert_eq!(error_code(&body), "PATIENT_NOT_FOUND");
    };
    let (status, never_known, _) = send(
        &h,
        &ambulance(),
        post_record(record_body(NOT_REGISTERED, &ALL_SECTIONS), &token(|_| {})),
    )
    .await;
    unknown((status, never_known.clone()));
    for (_, nhs, _) in &cases {
        let (status, body, _) = send(
            &h,
            &ambulance(),
            post_record(record_body(nhs, &ALL_SECTIONS), &token(|_| {})),
        )
        .await;
        unknown((status, body.clone()));
        let strip_ids = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("id");
            v
        };
        assert_eq!(
            strip_ids(&body),
            strip_ids(&never_known),
            "exactly as an unknown patient"
        );
        // An override does not reach them either.
        let (status, body, _) = send(
            &h,
            &ambulance(),
            post_record(
                record_body(nhs, &ALL_SECTIONS),
                &token(|c| {
                    c["permission_to_view"] = json!("override");
                    c["override_reason"] = json!("emergency");
                    c["override_justification"] =
                        json!("Unconscious at scene, no relative present");
                }),
            ),
        )
        .await;
        unknown((status, body));
        let query = format!("https://fhir.nhs.uk/Id/nhs-number%7C{nhs}");
        let (status, found, _) = send(&h, &ambulance(), search(&query, &token(|_| {}))).await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["type"], "searchset");
        assert_eq!(found["total"], 0, "{found}");
    }
}

#[tokio::test]
async fn html_view_lists_what_is_active_first_then_the_most_recent() {
    let h = harness();
    // Stored after the others, so only the page's ordering can put it first.
    let ramipril = json!({"resourceType": "MedicationStatement", "id": "p-full-ramipril",
        "subject": {"reference": "Patient/p-full"}, "status": "active",
        "medicationCodeableConcept": {"text": "Ramipril 2.5mg capsules"},
        "effectivePeriod": {"start": "2025-06-01"}});
    Replica::open(&h._dir.path().join("replica.db"), &KEY)
        .unwrap()
        .import_ndjson(format!("{ramipril}\n").as_bytes())
        .unwrap();
    let response = h
        .api
        .handle(
            &ambulance(),
            html_request(
                record_body(CORE_AND_ADDITIONAL, &["includeMedication"]),
                &token(|_| {}),
            ),
        )
        .await;
    let page = page_text(&response);
    let medications = page.split("</h2>").nth(1).unwrap();
    let newest = medications.find("Ramipril").expect("the new medication");
    let older = medications.find("01-May-2023").expect("the statin");
    let completed = medications.find(">completed<").expect("the old course");
    assert!(newest < older, "the most recent active medication first");
    assert!(older < completed, "active medication before completed");
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

/// The audit record of each kind of outcome holds the values it always held: typed values
/// become the stored text once, at the audit, with the time to the second.
#[tokio::test]
async fn each_outcome_is_audited_with_the_values_the_audit_stores() {
    use mig::audit::{AuditRecord, Decision, PermissionBasis};
    let h = harness();
    let record = |h: &Harness| AuditRecord::from(&last_event(h));

    let override_token = token(|c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!("  Patient unconscious at scene ");
    });
    let body = record_body(
        CORE_AND_ADDITIONAL,
        &["includeAllergies", "includeMedication"],
    );
    let (status, _, _) = send(&h, &ambulance(), post_record(body, &override_token)).await;
    assert_eq!(status, 200);
    let permitted = record(&h);
    assert_eq!(permitted.decision, Decision::Permit);
    assert_eq!(permitted.time.map(|t| t.nanosecond()), Some(0));
    assert_eq!(permitted.time, Some(last_event(&h).time));
    assert_eq!(permitted.basis, PermissionBasis::Override);
    assert_eq!(permitted.override_reason.as_deref(), Some("emergency"));
    assert_eq!(
        permitted.override_justification.as_deref(),
        Some("Patient unconscious at scene")
    );
    assert_eq!(permitted.sections, ["allergies", "medications"]);
    assert_eq!(
        (&permitted.error_code, &permitted.action),
        (&None, &None),
        "a release has no error code and no reason"
    );
    assert_eq!(permitted.interaction_id.as_deref(), Some(RECORD));
    assert_eq!(permitted.nhs_number.as_deref(), Some(CORE_AND_ADDITIONAL));
    assert_eq!(permitted.trace_id.as_deref(), Some(TRACE));
    assert_eq!(permitted.from_asid.as_deref(), Some("200000000999"));
    assert_eq!(permitted.partner_ods.as_deref(), Some(PARTNER));
    assert_eq!(permitted.partner_cert_sha256, Some("ab".repeat(32)));
    assert_eq!(permitted.job_role.as_deref(), Some("R8000"));
    assert!(permitted.sds_user_id.is_some() && permitted.raises_alert());

    let body = record_body(DISSENT, &["includeAllergies"]);
    send(&h, &ambulance(), post_record(body, &token(|_| {}))).await;
    let dissent = record(&h);
    assert_eq!(dissent.decision, Decision::Refuse);
    assert_eq!(dissent.basis, PermissionBasis::None);
    assert_eq!(dissent.error_code.as_deref(), Some("NO_PATIENT_CONSENT"));
    assert_eq!(dissent.nhs_number.as_deref(), Some(DISSENT));
    assert!(dissent.sections.is_empty() && dissent.action.is_some());
    assert!(dissent.sds_user_id.is_some(), "the token was read");

    let body = record_body(CORE_AND_ADDITIONAL, &["includeAllergies"]);
    send(&h, &ambulance(), post_record(body, "not-a-jwt")).await;
    let token_refused = record(&h);
    assert_eq!(token_refused.error_code.as_deref(), Some("BAD_REQUEST"));
    assert!(token_refused.action.unwrap().starts_with("JWT: "));
    assert_eq!(
        (token_refused.sds_user_id, token_refused.nhs_number),
        (None, None)
    );

    let request = Request::get("/fhir/Observation")
        .body(Bytes::new())
        .unwrap();
    send(&h, &ambulance(), request).await;
    let unrouted = record(&h);
    assert_eq!(unrouted.error_code.as_deref(), Some("NOT_IMPLEMENTED"));
    assert_eq!(
        unrouted.action.as_deref(),
        Some("refused at the HTTP layer: UnknownRoute")
    );
    assert_eq!(
        unrouted.interaction_id.as_deref(),
        Some("GET /fhir/Observation")
    );
    assert_eq!(unrouted.time.map(|t| t.nanosecond()), Some(0));
}
