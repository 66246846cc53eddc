//! The upstream feed end to end: the practice's clinical system posts transaction Bundles to
//! `POST /upstream` on its own mTLS port of a running migd, and partners see the result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_common;

use e2e_common::*;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{client_config_with_alpn, send_once, OneShot};
use mig_synthetic::DemoKind;
use serde_json::{json, Value};

const CLINICAL_SYSTEM: &str = "clinical-system";

fn upstream_address(app: &TestAppliance) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], app.app.upstream_port))
}

async fn post_upstream_as(
    app: &TestAppliance,
    who: &str,
    bundle: &Value,
) -> Result<OneShot, String> {
    post_upstream_text(app, who, bundle.to_string()).await
}

/// Posts a body as written (a `Value` cannot hold a repeated key).
async fn post_upstream_text(
    app: &TestAppliance,
    who: &str,
    body: String,
) -> Result<OneShot, String> {
    let tls = app.partner_tls(who);
    let request = http::Request::post("/upstream")
        .header("Content-Type", "application/fhir+json")
        .body(bytes::Bytes::from(body))
        .unwrap();
    send_once(
        upstream_address(app),
        client_config_with_alpn(&tls, &[b"http/1.1"]).unwrap(),
        &tls.server_name,
        request,
    )
    .await
}

async fn post_upstream(app: &TestAppliance, bundle: &Value) -> OneShot {
    post_upstream_as(app, CLINICAL_SYSTEM, bundle)
        .await
        .unwrap_or_else(|e| panic!("upstream POST failed: {e}\n{}", app.log()))
}

fn condition(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Condition", "id": id,
        "subject": {"reference": format!("Patient/{patient}")},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001", "display": "Asthma"}]},
        "recordedDate": "2026-11-20"})
}

fn put(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    json!({"fullUrl": format!("urn:uuid:{}", uuid_like(&url)), "resource": resource,
        "request": {"method": "PUT", "url": url}})
}

fn uuid_like(seed: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The patient's problems as an ambulance crew sees them (or the refusal).
async fn problems(app: &TestAppliance, nhs_number: &str) -> OneShot {
    let jwt = token(app, "DEMAMB", "R8000", |_| {});
    send(
        app,
        &app.partner_tls(AMBULANCE),
        record_request(app, record_body(nhs_number, &["includeProblems"]), &jwt),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserted_condition_appears_in_the_structured_record() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let kind = DemoKind::CoreAndAdditional;
    let before = assert_ok(&problems(&app, &nhs(kind)).await);
    assert!(!resource_ids(&before).contains("Condition/e2e-new-asthma"));

    let response = post_upstream(
        &app,
        &transaction(vec![put(condition("e2e-new-asthma", &patient_id(kind)))]),
    )
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let answer = body_json(&response);
    assert_eq!(answer["type"], "transaction-response");
    assert_valid_fhir(&response.body);

    let after = assert_ok(&problems(&app, &nhs(kind)).await);
    assert!(resource_ids(&after).contains("Condition/e2e-new-asthma"));
    let listed = list(&after, "717711000000103")["entry"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["item"]["reference"] == "Condition/e2e-new-asthma");
    assert!(listed, "the new Condition is not in the problems List");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_patient_purges_the_record() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional, DemoKind::DissentWithdrawn]).await;
    let kind = DemoKind::CoreAndAdditional;
    assert_ok(&problems(&app, &nhs(kind)).await);
    let delete = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Patient/{}", patient_id(kind))}}]});
    let response = post_upstream(&app, &delete).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_valid_fhir(&response.body);

    assert_refused(&problems(&app, &nhs(kind)).await, 404, "PATIENT_NOT_FOUND");
    let jwt = token(&app, "DEMAMB", "R8000", |_| {});
    let search = send(
        &app,
        &app.partner_tls(AMBULANCE),
        search_request(&app, &format!("{NHS_SYSTEM}%7C{}", nhs(kind)), &jwt),
    )
    .await;
    assert_eq!(assert_ok(&search)["total"], 0);
    // Other patients are untouched.
    assert_ok(&problems(&app, &nhs(DemoKind::DissentWithdrawn)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entry_rejects_the_whole_bundle_naming_it() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let kind = DemoKind::CoreAndAdditional;
    let bundle = transaction(vec![
        put(condition("e2e-never-stored", &patient_id(kind))),
        json!({"resource": {"resourceType": "Condition", "subject": {"reference": format!("Patient/{}", patient_id(kind))}},
            "request": {"method": "PUT", "url": "Condition/"}}),
    ]);
    let response = post_upstream(&app, &bundle).await;
    assert_eq!(response.status, 400);
    let outcome = body_json(&response);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("");
    assert!(diagnostics.contains("entry 2"), "{diagnostics}");
    assert_valid_fhir(&response.body);

    let record = assert_ok(&problems(&app, &nhs(kind)).await);
    assert!(
        !resource_ids(&record).contains("Condition/e2e-never-stored"),
        "entry 1 of a rejected Bundle was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_certificate_is_refused_on_the_upstream_port() {
    let app = appliance(0).await;
    let bundle = transaction(vec![put(condition("e2e-intruder", "p4"))]);
    match post_upstream_as(&app, AMBULANCE, &bundle).await {
        Ok(response) => panic!(
            "a partner was answered on the upstream port: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ),
        Err(e) => assert!(e.contains("received fatal alert"), "{e}"),
    }
    // The clinical system itself is served on the same port.
    let ok = post_upstream(&app, &transaction(vec![])).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
}

fn sharing_preference(
    id: &str,
    patient: &str,
    code: &str,
    date_time: &str,
    provision: &str,
) -> Value {
    json!({"resourceType": "Consent", "id": id, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "urn:mig:sharing-preference", "code": code}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": date_time, "provision": {"type": provision}})
}

fn rfc3339(offset_seconds: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_seconds);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// SPEC §6: ingest fails closed. Each attack is refused naming its entry, nothing of its
/// Bundle is applied, and partners keep getting the record policy allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_repeated_keys_orphans_and_ambiguous_consents() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let kind = DemoKind::CoreAndAdditional;
    let patient = patient_id(kind);

    // Classified by the last "code" (asthma), stored and sent with both: a reader keeping the
    // first would see chlamydia.
    let twice = put(condition("e2e-two-codes", &patient))
        .to_string()
        .replacen(
            r#""code":"195967001""#,
            r#""code":"105629000","code":"195967001""#,
            1,
        );
    assert!(twice.contains("105629000"));
    let body = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{},{twice}]}}"#,
        put(condition("e2e-never-stored", &patient))
    );
    let response = post_upstream_text(&app, CLINICAL_SYSTEM, body)
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    let diagnostics = body_json(&response)["issue"][0]["diagnostics"].to_string();
    assert!(
        diagnostics.contains(r#"entry 2: not valid JSON: repeated key \"code\""#),
        "{diagnostics}"
    );

    let cases = [
        (
            vec![
                put(sharing_preference("e2e-orphan", "e2e-later", "dissent", &rfc3339(-60), "deny")),
                put(json!({"resourceType": "Patient", "id": "e2e-later",
                    "identifier": [{"system": NHS_SYSTEM, "value": "9990000018"}]})),
            ],
            "entry 1: Consent/e2e-orphan names Patient/e2e-later, which is neither in the replica nor earlier in this batch",
        ),
        (
            vec![put(sharing_preference("e2e-deny-all", &patient, "core-and-additional", &rfc3339(-60), "deny"))],
            "entry 1: Consent/e2e-deny-all: a core-and-additional Consent with provision.type deny is ambiguous",
        ),
        (
            vec![put(sharing_preference("e2e-miscased", &patient, "Dissent", &rfc3339(-60), "deny"))],
            r#"entry 1: Consent/e2e-miscased: category code \"Dissent\""#,
        ),
    ];
    for (entries, expected) in cases {
        let response = post_upstream(&app, &transaction(entries)).await;
        assert_eq!(response.status, 400);
        let diagnostics = body_json(&response)["issue"][0]["diagnostics"].to_string();
        assert!(
            diagnostics.contains(expected),
            "{diagnostics} should say {expected}"
        );
    }
    let record = assert_ok(&problems(&app, &nhs(kind)).await);
    let ids = resource_ids(&record);
    assert!(
        !ids.contains("Condition/e2e-never-stored") && !ids.contains("Condition/e2e-two-codes")
    );

    // A dissent dated tomorrow is stored but not yet in force; one dated now is.
    let tomorrow = transaction(vec![put(sharing_preference(
        "e2e-dissent-tomorrow",
        &patient,
        "dissent",
        &rfc3339(86_400),
        "deny",
    ))]);
    assert_eq!(post_upstream(&app, &tomorrow).await.status, 200);
    assert_ok(&problems(&app, &nhs(kind)).await);
    let now = transaction(vec![put(sharing_preference(
        "e2e-dissent-now",
        &patient,
        "dissent",
        &rfc3339(-1),
        "deny",
    ))]);
    assert_eq!(post_upstream(&app, &now).await.status, 200);
    assert_refused(&problems(&app, &nhs(kind)).await, 403, "NO_PATIENT_CONSENT");
}
