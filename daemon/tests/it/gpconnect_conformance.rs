//! A GP Connect 1.6 consumer, unchanged: tokens and `$gpc.getstructuredrecord` bodies built
//! field for field like the published 1.6 examples (the specification's JWT example and request
//! bodies) and the provider assurance suite's builders (its JwtHelper and default Practitioner,
//! Organization and Device), each answered as the specification says; and the refusals.
//! Real replica (SQLCipher), real policy, the handler as hyper calls it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use mig::api::{jwt, AccessEvent, Api, Appliance, AuditSink, AuditUnavailable, Caller};
use mig::replica::{ReaderPool, Replica};
use mig_policy::fhir::Section;
use mig_policy::{Agreement, Basis, PartnerType, RoleSet, SensitiveCodes};
use serde_json::{json, Value};

const KEY: [u8; 32] = [7; 32];
const ASID: &str = "200000000116";
const BASE: &str = "https://providersupplier.thirdparty.nhs.uk/GP0001/STU3/1";
const NHS: &str = "9990000018";
/// The organisation of the specification's JWT example, registered as a partner.
const SPEC_ODS: &str = "A1001";
/// The assurance suite's default organisation.
const ASSURANCE_ODS: &str = "GPCA0001";
const RECORD: &str = "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const SIGNIFICANCE: &str =
    "https://fhir.hl7.org.uk/STU3/StructureDefinition/Extension-CareConnect-ProblemSignificance-1";

#[derive(Default)]
struct RecordingAudit {
    events: Mutex<Vec<AccessEvent>>,
}

impl AuditSink for RecordingAudit {
    fn record(
        &self,
        event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send>> {
        self.events.lock().unwrap().push(event);
        Box::pin(async { Ok(()) })
    }
}

/// One patient, shared for the whole record, with what 1.6's filters act on.
fn practice() -> Vec<Value> {
    let subject = json!({"reference": "Patient/p"});
    let statement = |id: &str, plan: &str, period: Value| {
        json!({"resourceType": "MedicationStatement", "id": id, "status": "active", "subject": subject,
            "basedOn": [{"reference": format!("MedicationRequest/{plan}")}],
            "medicationReference": {"reference": "Medication/amlodipine"}, "effectivePeriod": period})
    };
    let request = |id: &str, intent: &str, plan: Option<&str>, authored: &str| {
        let mut r = json!({"resourceType": "MedicationRequest", "id": id, "status": "active",
            "intent": intent, "subject": subject, "authoredOn": authored,
            "medicationReference": {"reference": "Medication/amlodipine"}});
        if let Some(plan) = plan {
            r["basedOn"] = json!([{"reference": format!("MedicationRequest/{plan}")}]);
        }
        r
    };
    let problem = |id: &str, status: &str, significance: &str| {
        json!({"resourceType": "Condition", "id": id, "subject": subject,
            "extension": [{"url": SIGNIFICANCE, "valueCode": significance}],
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]}})
    };
    let encounter = |id: &str, start: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished", "subject": subject,
            "period": {"start": start}})
    };
    vec![
        json!({"resourceType": "Medication", "id": "amlodipine",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "319283006"}]}}),
        json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": NHS_SYSTEM, "value": NHS}],
            "name": [{"family": "Example", "given": ["Pat"]}], "gender": "female", "birthDate": "1950-02-01"}),
        json!({"resourceType": "Consent", "id": "p-pref", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "urn:mig:sharing-preference", "code": "core-and-additional"}]}],
            "patient": {"reference": "Patient/p"}, "dateTime": "2024-01-01T09:00:00Z", "provision": {"type": "permit"}}),
        json!({"resourceType": "AllergyIntolerance", "id": "penicillin", "patient": subject,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]}}),
        // A repeat started years ago and still running, with an old and a recent issue.
        statement("repeat-s", "repeat-p", json!({"start": "2015-03-01"})),
        request("repeat-p", "plan", None, "2015-03-01"),
        request("repeat-i1", "order", Some("repeat-p"), "2015-03-01"),
        request("repeat-i2", "order", Some("repeat-p"), "2024-06-01"),
        // An acute course that ended in 2019.
        statement(
            "acute-s",
            "acute-p",
            json!({"start": "2019-01-01", "end": "2019-01-14"}),
        ),
        request("acute-p", "plan", None, "2019-01-01"),
        request("acute-i", "order", Some("acute-p"), "2019-01-01"),
        problem("hypertension", "active", "major"),
        problem("fracture", "resolved", "minor"),
        problem("eczema", "active", "minor"),
        encounter("e2019", "2019-04-01"),
        encounter("e2022", "2022-04-01"),
        encounter("e2024", "2024-04-01"),
        json!({"resourceType": "Immunization", "id": "flu", "status": "completed", "patient": subject,
            "occurrenceDateTime": "2024-10-01",
            "vaccineCode": {"coding": [{"system": "http://snomed.info/sct", "code": "1181000221105"}]}}),
        json!({"resourceType": "Immunization", "id": "mmr-not-given", "status": "not-done", "patient": subject,
            "occurrenceDateTime": "2024-10-01",
            "vaccineCode": {"coding": [{"system": "http://snomed.info/sct", "code": "1181000221105"}]}}),
    ]
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
            ods: "GP0001".into(),
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

/// A partner whose agreement admits every role (the only kind a token without a job role,
/// as every 1.6 consumer sends, gets through).
fn partner(ods: &str, attested: bool) -> Caller {
    Caller {
        agreement: Some(Arc::new(Agreement {
            ods: ods.into(),
            name: "Partner".into(),
            partner_type: PartnerType::Acute,
            sites: BTreeSet::new(),
            sections: Section::ALL.into_iter().collect(),
            roles: RoleSet::Any,
            override_roles: RoleSet::none(),
            override_sections: None,
            expires: None,
            attested_permission: attested,
        })),
        certificate_sha256: "cd".repeat(32),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The specification's JWT example (Cross-organisation audit and provenance, 1.6), with this
/// appliance as audience and the current time.
fn spec_example_claims() -> Value {
    let iat = now();
    json!({
        "iss": "https://consumersupplier.thirdparty.nhs.uk/",
        "sub": "10019",
        "aud": BASE,
        "exp": iat + 300,
        "iat": iat,
        "reason_for_request": "directcare",
        "requested_scope": "patient/*.read",
        "requesting_device": {
            "resourceType": "Device",
            "identifier": [{"system": "https://consumersupplier.com/Id/device-identifier", "value": "CONS-APP-4"}],
            "model": "Consumer product name",
            "version": "5.3.0"
        },
        "requesting_organization": {
            "resourceType": "Organization",
            "identifier": [{"system": ODS_SYSTEM, "value": SPEC_ODS}],
            "name": "Test Hospital"
        },
        "requesting_practitioner": {
            "resourceType": "Practitioner",
            "id": "10019",
            "identifier": [
                {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "111222333444"},
                {"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "444555666777"},
                {"system": "https://consumersupplier.com/Id/user-guid", "value": "98ed4f78-814d-4266-8d5b-cde742f3093c"}
            ],
            "name": [{"family": "Jones", "given": ["Claire"], "prefix": ["Dr"]}]
        }
    })
}

/// Which Practitioner the assurance suite's FhirHelper puts in the token.
#[derive(Clone, Copy)]
enum AssurancePractitioner {
    /// GetDefaultPractitioner: SDS user id, role profile id and a local GUID.
    Default,
    /// GetNoProfAndGuid: the SDS user id only.
    NoProfileAndGuid,
    /// GetUnkPractitioner: `UNK` for a user without a smartcard.
    Unk,
}

/// The assurance suite's JwtHelper defaults: created 2 s ago, expiring 5 minutes later.
fn assurance_claims(practitioner: AssurancePractitioner) -> Value {
    let guid = json!({"system": "https://consumersupplier.com/Id/user-guid", "value": "98ed4f78-814d-4266-8d5b-cde742f3093c"});
    let identifiers = match practitioner {
        AssurancePractitioner::Default => json!([
            {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "GCASDS0001"},
            {"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "112233445566"},
            guid
        ]),
        AssurancePractitioner::NoProfileAndGuid => {
            json!([{"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "GCASDS0001"}])
        }
        AssurancePractitioner::Unk => json!([
            {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "UNK"},
            {"system": "https://fhir.nhs.uk/Id/sds-role-profile-id", "value": "UNK"},
            guid
        ]),
    };
    let iat = now() - 2;
    json!({
        "iss": "https://ConsumerSystemURL",
        "sub": "1",
        "aud": BASE,
        "exp": iat + 300,
        "iat": iat,
        "reason_for_request": "directcare",
        "requesting_device": {"resourceType": "Device", "model": "v1", "version": "1.1",
            "identifier": [{"system": "GPConnectTestSystem", "value": "Client"}]},
        "requesting_organization": {"resourceType": "Organization", "name": "GP Connect Assurance",
            "identifier": [{"system": ODS_SYSTEM, "value": ASSURANCE_ODS}]},
        "requesting_practitioner": {"resourceType": "Practitioner", "id": "1",
            "name": [{"prefix": ["Mr"], "given": ["AssuranceTest"], "family": "AssurancePractitioner"}],
            "identifier": identifiers},
        "requested_scope": "patient/*.read"
    })
}

/// What a consumer adds for MIG (SPEC §3) unless its agreement is attested.
fn with_permission(mut claims: Value) -> Value {
    claims["permission_to_view"] = json!("granted");
    claims
}

fn nhs_parameter() -> Value {
    json!({"name": "patientNHSNumber", "valueIdentifier": {"system": NHS_SYSTEM, "value": NHS}})
}

fn parameters(rest: Value) -> String {
    let mut all = vec![nhs_parameter()];
    all.extend(rest.as_array().unwrap().iter().cloned());
    json!({"resourceType": "Parameters", "parameter": all}).to_string()
}

/// The request headers of the 1.6 page's example.
fn post(body: String, claims: &Value) -> Request<Bytes> {
    Request::post("/Patient/$gpc.getstructuredrecord")
        .uri("/fhir/Patient/$gpc.getstructuredrecord")
        .header("Accept", "application/fhir+json;charset=utf-8")
        .header("Content-Type", "application/fhir+json;charset=utf-8")
        .header("Ssp-TraceID", "629ea9ba-a077-4d99-b289-7a9b19fd4e03")
        .header("Ssp-From", "200000000115")
        .header("Ssp-To", ASID)
        .header("Ssp-InteractionID", RECORD)
        .header(
            "Authorization",
            format!("Bearer {}", jwt::encode_unsigned(claims)),
        )
        .body(Bytes::from(body))
        .unwrap()
}

async fn send(h: &Harness, caller: &Caller, request: Request<Bytes>) -> (u16, Value) {
    let response = h.api.handle(caller, request).await;
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), body)
}

fn ids(bundle: &Value, resource_type: &str) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == resource_type)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn error(body: &Value) -> (&str, &str) {
    let issue = &body["issue"][0];
    (
        issue["details"]["coding"][0]["code"].as_str().unwrap_or(""),
        issue["diagnostics"].as_str().unwrap_or(""),
    )
}

fn last_event(h: &Harness) -> AccessEvent {
    h.audit.events.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test]
async fn the_specification_token_and_example_requests_are_answered() {
    let h = harness();
    let caller = partner(SPEC_ODS, false);
    let token = with_permission(spec_example_claims());

    // allergies_request1: includeAllergies with includeResolvedAllergies.
    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([{"name": "includeAllergies",
                "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]}])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(ids(&bundle, "AllergyIntolerance"), set(&["penicillin"]));
    let event = last_event(&h);
    assert_eq!(event.basis().map(Basis::name), Some("granted"));
    let claims = event.claims.unwrap();
    assert_eq!(
        claims.job_role, "UNK",
        "an STU3 Practitioner has no job role"
    );
    assert_eq!(claims.sds_role_profile_id.as_deref(), Some("444555666777"));

    // meds_request: includeMedication with no parts: every authorisation and issue.
    let (status, bundle) = send(
        &h,
        &caller,
        post(parameters(json!([{"name": "includeMedication"}])), &token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&bundle, "MedicationStatement").len(), 2);
    assert_eq!(ids(&bundle, "MedicationRequest").len(), 5);

    // problems_request1: filterStatus active and filterSignificance major.
    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([{"name": "includeProblems", "part": [
                {"name": "filterStatus", "valueCode": "active"},
                {"name": "filterSignificance", "valueCode": "major"}]}])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&bundle, "Condition"), set(&["hypertension"]));

    // The same token with the optional confidentiality scope.
    let mut scoped = token.clone();
    scoped["requested_scope"] = json!("patient/*.read conf/N");
    let (status, _) = send(
        &h,
        &caller,
        post(parameters(json!([{"name": "includeMedication"}])), &scoped),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_assurance_suites_tokens_are_accepted() {
    let h = harness();
    let caller = partner(ASSURANCE_ODS, false);
    for (practitioner, profile) in [
        (AssurancePractitioner::Default, Some("112233445566")),
        (AssurancePractitioner::NoProfileAndGuid, None),
        (AssurancePractitioner::Unk, Some("UNK")),
    ] {
        let token = with_permission(assurance_claims(practitioner));
        // "Structured request with one parameter no Clinical information expected success".
        let (status, bundle) = send(&h, &caller, post(parameters(json!([])), &token)).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(ids(&bundle, "Patient"), set(&["p"]));
        let claims = last_event(&h).claims.unwrap();
        assert_eq!(claims.sds_role_profile_id.as_deref(), profile);
        assert_eq!(claims.job_role, "UNK");
    }
}

#[tokio::test]
async fn the_dstu2_era_identifier_systems_are_synonyms() {
    let h = harness();
    let mut token = with_permission(spec_example_claims());
    token["requesting_organization"]["identifier"][0]["system"] =
        json!("http://fhir.nhs.net/Id/ods-organization-code");
    token["requesting_practitioner"]["identifier"][0]["system"] =
        json!("http://fhir.nhs.net/sds-user-id");
    let (status, body) = send(
        &h,
        &partner(SPEC_ODS, false),
        post(parameters(json!([{"name": "includeMedication"}])), &token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let claims = last_event(&h).claims.unwrap();
    assert_eq!(
        (
            claims.organisation_ods.as_str(),
            claims.sds_user_id.as_str()
        ),
        (SPEC_ODS, "111222333444")
    );
}

#[tokio::test]
async fn an_attested_agreement_needs_no_mig_claim_and_is_audited_as_attested() {
    let h = harness();
    let body = || parameters(json!([{"name": "includeMedication"}]));
    let (status, refused) = send(
        &h,
        &partner(SPEC_ODS, false),
        post(body(), &spec_example_claims()),
    )
    .await;
    assert_eq!(status, 403);
    let (code, diagnostics) = error(&refused);
    assert_eq!(code, "NO_PATIENT_CONSENT");
    assert!(diagnostics.contains("permission_to_view"), "{diagnostics}");

    let (status, bundle) = send(
        &h,
        &partner(SPEC_ODS, true),
        post(body(), &spec_example_claims()),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(ids(&bundle, "MedicationStatement").len(), 2);
    let event = last_event(&h);
    assert!(event.permitted());
    assert_eq!(event.basis().map(Basis::name), Some("attested"));
}

#[tokio::test]
async fn medication_search_keeps_what_is_active_on_or_after_the_date() {
    let h = harness();
    let caller = partner(SPEC_ODS, false);
    let token = with_permission(spec_example_claims());
    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([{"name": "includeMedication", "part": [
                {"name": "medicationSearchFromDate", "valueDate": "2024-01-01"}]}])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&bundle, "MedicationStatement"), set(&["repeat-s"]));
    assert_eq!(
        ids(&bundle, "MedicationRequest"),
        set(&["repeat-p", "repeat-i1", "repeat-i2"]),
        "the long-running repeat stays with its issues; the 2019 course goes"
    );

    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([{"name": "includeMedication", "part": [
                {"name": "includePrescriptionIssues", "valueBoolean": false}]}])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&bundle, "MedicationRequest"),
        set(&["repeat-p", "acute-p"]),
        "authorisations only"
    );
}

#[tokio::test]
async fn consultations_immunisations_and_repeated_problems_filter_as_1_6_says() {
    let h = harness();
    let caller = partner(SPEC_ODS, false);
    let token = with_permission(spec_example_claims());
    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([
                {"name": "includeConsultations", "part": [{"name": "includeNumberOfMostRecent", "valuePositiveInt": 2}]},
                {"name": "includeImmunisations"}
            ])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&bundle, "Encounter"), set(&["e2022", "e2024"]));
    assert_eq!(
        ids(&bundle, "Immunization"),
        set(&["flu"]),
        "not given left out"
    );

    let (status, bundle) = send(
        &h,
        &caller,
        post(
            parameters(json!([
                {"name": "includeProblems", "part": [{"name": "filterStatus", "valueCode": "inactive"}]},
                {"name": "includeProblems", "part": [{"name": "filterSignificance", "valueCode": "major"}]}
            ])),
            &token,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        ids(&bundle, "Condition"),
        set(&["hypertension", "fracture"])
    );
}

#[tokio::test]
async fn a_1_6_parameter_not_implemented_is_a_warning_not_an_error() {
    let h = harness();
    let (status, bundle) = send(
        &h,
        &partner(SPEC_ODS, false),
        post(
            parameters(json!([
                {"name": "includeMedication"},
                {"name": "includeDiaryEntries", "part": [{"name": "diaryEntriesSearchDate", "valueDate": "2030-06-04"}]}
            ])),
            &with_permission(spec_example_claims()),
        ),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    let outcome = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "OperationOutcome")
        .expect("a warning OperationOutcome in the Bundle");
    assert_eq!(
        outcome["fullUrl"].as_str().unwrap(),
        format!(
            "{BASE}/OperationOutcome/{}",
            outcome["resource"]["id"].as_str().unwrap()
        )
    );
    let issues = outcome["resource"]["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0]["severity"], "warning");
    assert_eq!(issues[0]["code"], "not-supported");
    assert_eq!(
        issues[0]["details"]["coding"][0],
        json!({"system": "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1",
            "code": "NOT_IMPLEMENTED", "display": "Not implemented"})
    );
    assert_eq!(
        issues[0]["details"]["text"],
        "includeDiaryEntries is an unrecognised parameter"
    );
    assert_eq!(issues[0]["diagnostics"], "includeDiaryEntries");
    assert_eq!(ids(&bundle, "MedicationStatement").len(), 2);
}

#[tokio::test]
async fn refusals_name_the_parameter_or_claim_at_fault() {
    let h = harness();
    let caller = partner(SPEC_ODS, false);
    let token = with_permission(spec_example_claims());
    let tomorrow = time::OffsetDateTime::now_utc().date().next_day().unwrap();
    let cases: Vec<(String, Value, u16, &str, &str)> = vec![
        // The 1.6 page's "fully populated" example breaks its own error table: consultations
        // with problem filters and a medication date, and both consultation parts at once.
        (
            parameters(json!([
                {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]},
                {"name": "includeMedication", "part": [
                    {"name": "medicationSearchFromDate", "valueDate": "2017-06-04"},
                    {"name": "includePrescriptionIssues", "valueDate": true}]},
                {"name": "includeConsultations", "part": [
                    {"name": "consultationSearchPeriod", "valuePeriod": {"start": "2017-12-25", "end": "2018-12-25"}},
                    {"name": "includeNumberOfMostRecent", "valuePositiveInt": 3}]},
                {"name": "includeProblems", "part": [
                    {"name": "filterStatus", "valueCode": "active"},
                    {"name": "filterSignificance", "valueCode": "major"}]}
            ])),
            token.clone(),
            422,
            "INVALID_PARAMETER",
            "may not be sent with includeConsultations",
        ),
        (
            parameters(json!([{"name": "includeMedication", "part": [
                {"name": "medicationSearchFromDate", "valueDate": tomorrow.to_string()}]}])),
            token.clone(),
            422,
            "INVALID_PARAMETER",
            "includeMedication.medicationSearchFromDate is in the future",
        ),
        (
            parameters(json!([{"name": "includeEverything"}])),
            token.clone(),
            422,
            "INVALID_PARAMETER",
            "includeEverything",
        ),
        (
            parameters(
                json!([{"name": "includeMedication", "part": [{"name": "madeUpProblems", "valueBoolean": true}]}]),
            ),
            token.clone(),
            422,
            "INVALID_PARAMETER",
            "madeUpProblems",
        ),
        (
            parameters(json!([{"name": "includeAllergies"}])),
            token.clone(),
            422,
            "INVALID_PARAMETER",
            "includeResolvedAllergies",
        ),
        (
            parameters(json!([{"name": "includeMedication"}])),
            {
                let mut t = token.clone();
                t["requested_scope"] = json!("patient/*.write");
                t
            },
            400,
            "BAD_REQUEST",
            "requested_scope",
        ),
        (
            parameters(json!([{"name": "includeMedication"}])),
            {
                let mut t = token.clone();
                t["requesting_organization"]["identifier"][0]["value"] = json!("RXX");
                t
            },
            403,
            "ACCESS_DENIED",
            "requesting organisation",
        ),
    ];
    for (body, claims, status, code, named) in cases {
        let (got, outcome) = send(&h, &caller, post(body.clone(), &claims)).await;
        let (got_code, diagnostics) = error(&outcome);
        assert_eq!((got, got_code), (status, code), "{body}: {outcome}");
        assert!(
            diagnostics.contains(named),
            "{diagnostics:?} should name {named}"
        );
        assert!(
            !diagnostics.contains(NHS),
            "no record data in {diagnostics:?}"
        );
    }

    // No job role reaches only an agreement whose roles are '*'.
    let mut listed = partner(SPEC_ODS, false);
    let mut agreement = (*listed.agreement.unwrap()).clone();
    agreement.roles = RoleSet::Only(["R8000".to_string()].into());
    listed.agreement = Some(Arc::new(agreement));
    let (status, outcome) = send(
        &h,
        &listed,
        post(parameters(json!([{"name": "includeMedication"}])), &token),
    )
    .await;
    assert_eq!((status, error(&outcome).0), (403, "ACCESS_DENIED"));
    assert!(error(&outcome).1.contains("job role"), "{outcome}");

    // Unknown routes and methods: OperationOutcomes with a Spine code, audited.
    let before = h.audit.events.lock().unwrap().len();
    for (request, status) in [
        (Request::get("/fhir/Observation"), 404),
        (
            Request::delete("/fhir/Patient/$gpc.getstructuredrecord"),
            405,
        ),
    ] {
        let (got, outcome) = send(&h, &caller, request.body(Bytes::new()).unwrap()).await;
        assert_eq!(got, status);
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(!error(&outcome).0.is_empty(), "{outcome}");
    }
    assert_eq!(h.audit.events.lock().unwrap().len(), before + 2);
}
