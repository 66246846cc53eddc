//! The partner API end to end over real mTLS against a running migd on a software TPM: every
//! SPEC §5 refusal with its status and OperationOutcome, every kind of patient preference, the
//! override alert and the audit trail. Every body is checked by the independent FHIR validator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_common;

use std::collections::BTreeSet;

use e2e_common::*;
use hardware_tests::appliance::{AMBULANCE, OUT_OF_HOURS, SOCIAL_CARE};
use mig_synthetic::DemoKind;
use serde_json::json;

const AMB: &str = "DEMAMB";

async fn record_as(
    app: &hardware_tests::appliance::TestAppliance,
    who: &str,
    ods: &str,
    role: &str,
    kind: DemoKind,
    edit: impl FnOnce(&mut serde_json::Value),
) -> hardware_tests::load::OneShot {
    let jwt = token(app, ods, role, edit);
    send(
        app,
        &app.partner_tls(who),
        record_request(app, record_body(&nhs(kind), &ALL_SECTIONS), &jwt),
    )
    .await
}

// ---- SPEC §5 refusals ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_certificate_from_a_trusted_ca_is_access_denied() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let (cert, key) = issue_client(&partner_ca(&app), "Not registered", 9001, -1, 30);
    let jwt = token(&app, AMB, "R8000", |_| {});
    let request = record_request(
        &app,
        record_body(&nhs(DemoKind::CoreAndAdditional), &ALL_SECTIONS),
        &jwt,
    );
    let response = send(&app, &tls_for(&app, cert, key), request).await;
    assert_refused(&response, 403, "ACCESS_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requesting_organisation_other_than_the_partners_is_access_denied() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    // The out-of-hours service's certificate claiming to ask for the ambulance service.
    let response = record_as(
        &app,
        OUT_OF_HOURS,
        AMB,
        "R8000",
        DemoKind::CoreAndAdditional,
        |_| {},
    )
    .await;
    assert_refused(&response, 403, "ACCESS_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_role_not_in_the_agreement_is_access_denied() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    // Social care allows R8003 only.
    let response = record_as(
        &app,
        SOCIAL_CARE,
        "8KL21",
        "R8000",
        DemoKind::CoreAndAdditional,
        |_| {},
    )
    .await;
    assert_refused(&response, 403, "ACCESS_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssp_to_other_than_this_appliance_is_access_denied() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let jwt = token(&app, AMB, "R8000", |_| {});
    let mut request = record_request(
        &app,
        record_body(&nhs(DemoKind::CoreAndAdditional), &ALL_SECTIONS),
        &jwt,
    );
    request
        .headers_mut()
        .insert("Ssp-To", "200000000777".parse().unwrap());
    let response = send(&app, &app.partner_tls(AMBULANCE), request).await;
    assert_refused(&response, 403, "ACCESS_DENIED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_by_a_role_not_allowed_to_override_is_access_denied() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    // R8003 may read for the ambulance service but only R8000 may override.
    let response = record_as(
        &app,
        AMBULANCE,
        AMB,
        "R8003",
        DemoKind::CoreAndAdditional,
        |c| {
            c["permission_to_view"] = json!("override");
            c["override_reason"] = json!("emergency");
            c["override_justification"] = json!("Unconscious patient at scene, allergies needed");
        },
    )
    .await;
    assert_refused(&response, 403, "ACCESS_DENIED");
    let alerts = migctl_ok(&app, &["alerts", "list"]);
    assert!(alerts.contains("no unacknowledged alerts"), "{alerts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_token_and_body_are_bad_request() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let tls = app.partner_tls(AMBULANCE);
    let good = || record_body(&nhs(DemoKind::CoreAndAdditional), &ALL_SECTIONS);
    let fresh = || token(&app, AMB, "R8000", |_| {});
    let stale = token(&app, AMB, "R8000", |c| {
        let now = c["iat"].as_i64().unwrap();
        c["iat"] = json!(now - 1000);
        c["exp"] = json!(now - 800);
    });
    let wrong_audience = token(&app, AMB, "R8000", |c| {
        c["aud"] = json!("https://other/fhir")
    });
    type Edit<'a> = Box<dyn Fn(&mut http::Request<bytes::Bytes>) + 'a>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "short Ssp-From",
            Box::new(|r| {
                r.headers_mut().insert("Ssp-From", "12".parse().unwrap());
            }),
        ),
        (
            "interaction of another route",
            Box::new(|r| {
                r.headers_mut()
                    .insert("Ssp-InteractionID", SEARCH.parse().unwrap());
            }),
        ),
        (
            "no Authorization",
            Box::new(|r| {
                r.headers_mut().remove("Authorization");
            }),
        ),
        (
            "stale token",
            Box::new(|r| {
                r.headers_mut()
                    .insert("Authorization", format!("Bearer {stale}").parse().unwrap());
            }),
        ),
        (
            "wrong audience",
            Box::new(|r| {
                r.headers_mut().insert(
                    "Authorization",
                    format!("Bearer {wrong_audience}").parse().unwrap(),
                );
            }),
        ),
        (
            "body not JSON",
            Box::new(|r| *r.body_mut() = bytes::Bytes::from_static(b"<Parameters/>")),
        ),
    ];
    for (what, edit) in cases {
        let mut request = record_request(&app, good(), &fresh());
        edit(&mut request);
        let response = send(&app, &tls, request).await;
        eprintln!("case: {what}");
        assert_refused(&response, 400, "BAD_REQUEST");
    }
    // Without a trace id there is nothing to echo, but the refusal is the same.
    let mut request = record_request(&app, good(), &fresh());
    request.headers_mut().remove("Ssp-TraceID");
    let response = send(&app, &tls, request).await;
    let body = body_json(&response);
    assert_eq!(
        (response.status.as_u16(), error_code(&body)),
        (400, "BAD_REQUEST")
    );
    assert!(response.headers.get("ssp-traceid").is_none());
    assert_valid_fhir(&response.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifier_not_an_nhs_number_is_invalid_identifier_system() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let jwt = token(&app, AMB, "R8000", |_| {});
    let body = record_body(&nhs(DemoKind::CoreAndAdditional), &ALL_SECTIONS)
        .replace(NHS_SYSTEM, "urn:example:mrn");
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        record_request(&app, body, &jwt),
    )
    .await;
    assert_refused(&response, 400, "INVALID_IDENTIFIER_SYSTEM");
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        search_request(&app, "urn:example:mrn%7C123", &jwt),
    )
    .await;
    assert_refused(&response, 400, "INVALID_IDENTIFIER_SYSTEM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhs_number_failing_modulus_11_is_invalid_nhs_number() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let jwt = token(&app, AMB, "R8000", |_| {});
    let good = nhs(DemoKind::CoreAndAdditional);
    let last = good.as_bytes()[9] - b'0';
    let bad = format!("{}{}", &good[..9], (last + 1) % 10);
    for number in [bad.as_str(), "12345", "99900000aa"] {
        let response = send(
            &app,
            &app.partner_tls(AMBULANCE),
            record_request(&app, record_body(number, &["includeAllergies"]), &jwt),
        )
        .await;
        assert_refused(&response, 400, "INVALID_NHS_NUMBER");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_parameter_part_is_invalid_parameter() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let jwt = token(&app, AMB, "R8000", |_| {});
    let body = record_body(&nhs(DemoKind::CoreAndAdditional), &["includeEverything"]);
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        record_request(&app, body, &jwt),
    )
    .await;
    assert_refused(&response, 422, "INVALID_PARAMETER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_not_in_the_replica_is_not_found_and_an_empty_searchset() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    // Index 40 is beyond this small practice.
    let absent = mig_synthetic::nhs_number(40).unwrap();
    let jwt = token(&app, AMB, "R8000", |_| {});
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        record_request(&app, record_body(&absent, &ALL_SECTIONS), &jwt),
    )
    .await;
    assert_refused(&response, 404, "PATIENT_NOT_FOUND");
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        search_request(&app, &format!("{NHS_SYSTEM}%7C{absent}"), &jwt),
    )
    .await;
    let bundle = assert_ok(&response);
    assert_eq!(
        (bundle["type"].as_str(), bundle["total"].as_u64()),
        (Some("searchset"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_search_returns_demographics_only() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    let jwt = token(&app, AMB, "R8000", |_| {});
    let response = send(
        &app,
        &app.partner_tls(AMBULANCE),
        search_request(
            &app,
            &format!("{NHS_SYSTEM}|{}", nhs(DemoKind::CoreAndAdditional)),
            &jwt,
        ),
    )
    .await;
    let bundle = assert_ok(&response);
    assert_eq!(bundle["total"], 1);
    let ids = resource_ids(&bundle);
    assert_eq!(
        ids,
        BTreeSet::from([format!(
            "Patient/{}",
            patient_id(DemoKind::CoreAndAdditional)
        )])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_a_valid_capability_statement() {
    let app = appliance(0).await;
    let request = http::Request::get("/fhir/metadata")
        .body(bytes::Bytes::new())
        .unwrap();
    let response = send(&app, &app.partner_tls(AMBULANCE), request).await;
    assert_eq!(response.status, 200);
    assert_fhir_json(&response);
    assert_eq!(body_json(&response)["resourceType"], "CapabilityStatement");
    assert_valid_fhir(&response.body);
}

// ---- sharing preferences ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dissent_in_every_form_is_no_patient_consent() {
    let app = appliance_with(&[
        DemoKind::Dissent,
        DemoKind::DissentGpCoded,
        DemoKind::NewerDissent,
    ])
    .await;
    for kind in [
        DemoKind::Dissent,
        DemoKind::DissentGpCoded,
        DemoKind::NewerDissent,
    ] {
        let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
        eprintln!("kind {kind:?}");
        assert_refused(&response, 403, "NO_PATIENT_CONSENT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_does_not_beat_dissent() {
    let app = appliance_with(&[DemoKind::Dissent]).await;
    let response = record_as(&app, AMBULANCE, AMB, "R8000", DemoKind::Dissent, |c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!("Unconscious patient at scene, allergies needed");
    })
    .await;
    assert_refused(&response, 403, "NO_PATIENT_CONSENT");
}

const CORE: [&str; 3] = ["886921000000105", "1103671000000101", "933361000000108"];
const OVERRIDE_OR_CARER: [&str; 6] = [
    "886921000000105",
    "1103671000000101",
    "933361000000108",
    "end-of-life",
    "communication-preferences",
    "risks-and-warnings",
];
const EVERY: [&str; 13] = [
    "886921000000105",
    "1103671000000101",
    "933361000000108",
    "717711000000103",
    "1102181000000102",
    "1149501000000101",
    "887191000000108",
    "826501000000100",
    "792931000000107",
    "procedures",
    "end-of-life",
    "communication-preferences",
    "risks-and-warnings",
];

/// Against what the practice fed: every item of an `allowed` section that is not `withheld`
/// is in the Bundle, nothing of any other section is, and the other Lists say `withheld`.
fn assert_release(
    app: &hardware_tests::appliance::TestAppliance,
    kind: DemoKind,
    bundle: &serde_json::Value,
    allowed: &[&str],
) {
    let ids = resource_ids(bundle);
    let fed = fed_resources(app, &patient_id(kind));
    let withheld = sensitive_or_confidential(app, kind);
    let mut released = 0;
    for (key, value) in &fed {
        let Some(code) = list_code(value, &fed) else {
            if value["resourceType"] != "Patient" {
                assert!(
                    !ids.contains(key),
                    "{kind:?}: {key} is in no List but was served"
                );
            }
            continue;
        };
        if allowed.contains(&code) && !withheld.contains(key) {
            assert!(ids.contains(key), "{kind:?}: {key} not released");
            released += 1;
        } else {
            assert!(!ids.contains(key), "{kind:?}: {key} released");
        }
    }
    assert!(
        released > 0,
        "{kind:?}: nothing to release in the test data"
    );
    for code in EVERY {
        let l = list(bundle, code);
        if !allowed.contains(&code) {
            assert_eq!(l["emptyReason"]["coding"][0]["code"], "withheld", "{l}");
            assert!(has_warning(l), "{l}");
        }
    }
}

/// What policy must withhold whatever the tier: sensitive items (no specific consent in these
/// cases), practice-confidential items, and whatever cites them.
fn sensitive_or_confidential(
    app: &hardware_tests::appliance::TestAppliance,
    kind: DemoKind,
) -> BTreeSet<String> {
    let fed = fed_resources(app, &patient_id(kind));
    with_dependants(
        &fed,
        fed.iter()
            .filter(|(_, v)| !categories(v).is_empty() || practice_confidential(v))
            .map(|(k, _)| k.clone())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_preference_releases_only_core_sections() {
    let app = appliance_with(&[DemoKind::CoreGpCoded, DemoKind::CoreOnly]).await;
    for kind in [DemoKind::CoreOnly, DemoKind::CoreGpCoded] {
        let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
        assert_release(&app, kind, &assert_ok(&response), &CORE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_recorded_preference_is_treated_as_core() {
    let app = appliance_with(&[DemoKind::NoPreference]).await;
    let kind = DemoKind::NoPreference;
    let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
    assert_release(&app, kind, &assert_ok(&response), &CORE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_and_additional_releases_every_section() {
    let app = appliance_with(&[DemoKind::CoreAndAdditional, DemoKind::DissentWithdrawn]).await;
    for kind in [DemoKind::CoreAndAdditional, DemoKind::DissentWithdrawn] {
        let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
        let bundle = assert_ok(&response);
        assert_release(&app, kind, &bundle, &EVERY);
    }
}

/// SPEC §4 for the demo patients whose records hold every kind of item: each released item is in
/// exactly the List its type and codes say (worked out in the test from what was fed), every
/// List holds only those, a care plan that is not end-of-life care is not served, and every
/// entry has an absolute fullUrl naming its resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_lands_in_the_list_its_type_and_codes_say() {
    let kinds = [
        DemoKind::CoreAndAdditional,
        DemoKind::EndOfLife,
        DemoKind::CommunicationNeeds,
        DemoKind::FitNotes,
    ];
    let app = appliance_with(&kinds).await;
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut unserved_care_plans = 0;
    for kind in kinds {
        let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
        let bundle = assert_ok(&response);
        let fed = fed_resources(&app, &patient_id(kind));
        let withheld = sensitive_or_confidential(&app, kind);
        for code in EVERY {
            let expected: BTreeSet<String> = fed
                .iter()
                .filter(|(key, value)| {
                    list_code(value, &fed) == Some(code) && !withheld.contains(*key)
                })
                .map(|(key, _)| key.clone())
                .collect();
            let found: BTreeSet<String> = list(&bundle, code)["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["item"]["reference"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(found, expected, "{kind:?}: List {code}");
            if !found.is_empty() {
                seen.insert(code);
            }
        }
        for (key, value) in &fed {
            if value["resourceType"] == "CarePlan" && list_code(value, &fed).is_none() {
                unserved_care_plans += 1;
                assert!(!resource_ids(&bundle).contains(key), "{key} served");
            }
        }
        for entry in bundle["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            let url = entry["fullUrl"]
                .as_str()
                .unwrap_or_else(|| panic!("no fullUrl: {entry}"));
            let tail = format!(
                "/{}/{}",
                resource["resourceType"].as_str().unwrap(),
                resource["id"].as_str().unwrap()
            );
            assert!(url.starts_with("https://") && url.ends_with(&tail), "{url}");
        }
    }
    // Between them the demo patients fill every List assigned by code, and hold a care plan no
    // List takes.
    for code in [
        "1103671000000101",
        "887191000000108",
        "826501000000100",
        "end-of-life",
        "communication-preferences",
        "risks-and-warnings",
    ] {
        assert!(seen.contains(code), "no demo patient filled List {code}");
    }
    assert!(unserved_care_plans > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_items_never_leave_without_specific_consent() {
    let app = appliance_with(&[DemoKind::SensitiveWithoutConsent]).await;
    let kind = DemoKind::SensitiveWithoutConsent;
    let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
    let bundle = assert_ok(&response);
    let fed = fed_resources(&app, &patient_id(kind));
    let sensitive: BTreeSet<String> = fed
        .iter()
        .filter(|(_, v)| !categories(v).is_empty())
        .map(|(k, _)| k.clone())
        .collect();
    let found: BTreeSet<&str> = fed.values().flat_map(categories).collect();
    assert_eq!(
        found.len(),
        4,
        "the demo patient should hold all four categories: {found:?}"
    );
    let withheld = with_dependants(&fed, sensitive.clone());
    assert_absent(&response.body, &withheld);
    // Each section that lost a sensitive item says so, without a count.
    for key in &sensitive {
        let code = list_code(&fed[key], &fed).unwrap();
        assert!(
            has_warning(list(&bundle, code)),
            "List {code} has no warning"
        );
    }
    assert!(!String::from_utf8_lossy(&response.body).contains("\"total\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specific_consent_releases_only_its_category() {
    let app = appliance_with(&[DemoKind::SpecificConsentSti]).await;
    let kind = DemoKind::SpecificConsentSti;
    let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
    let bundle = assert_ok(&response);
    let ids = resource_ids(&bundle);
    let fed = fed_resources(&app, &patient_id(kind));
    let sti: Vec<&String> = fed
        .iter()
        .filter(|(_, v)| categories(v) == BTreeSet::from(["sti"]) && !practice_confidential(v))
        .map(|(k, _)| k)
        .collect();
    assert!(!sti.is_empty());
    for key in &sti {
        assert!(
            ids.contains(*key),
            "STI item {key} withheld despite consent"
        );
    }
    let others = with_dependants(
        &fed,
        fed.iter()
            .filter(|(_, v)| categories(v).iter().any(|c| *c != "sti"))
            .map(|(k, _)| k.clone())
            .collect(),
    );
    assert!(!others.is_empty());
    assert_absent(&response.body, &others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn practice_confidential_items_are_withheld() {
    let app = appliance_with(&[DemoKind::PracticeConfidential]).await;
    let kind = DemoKind::PracticeConfidential;
    let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
    let bundle = assert_ok(&response);
    let fed = fed_resources(&app, &patient_id(kind));
    let confidential: BTreeSet<String> = fed
        .iter()
        .filter(|(_, v)| practice_confidential(v))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!confidential.is_empty());
    let withheld = with_dependants(&fed, confidential.clone());
    assert!(
        withheld.len() > confidential.len(),
        "the demo has a prescription citing an R condition"
    );
    assert_absent(&response.body, &withheld);
    for key in &confidential {
        let code = list_code(&fed[key], &fed).unwrap();
        assert!(
            has_warning(list(&bundle, code)),
            "List {code} has no warning"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standing_consent_admits_the_named_carer_organisation_without_permission() {
    let app = appliance_with(&[
        DemoKind::CoreAndAdditional,
        DemoKind::StandingThirdPartyConsent,
    ])
    .await;
    let response = record_as(
        &app,
        SOCIAL_CARE,
        "8KL21",
        "R8003",
        DemoKind::StandingThirdPartyConsent,
        |c| {
            c.as_object_mut().unwrap().remove("permission_to_view");
        },
    )
    .await;
    let bundle = assert_ok(&response);
    // The social-care agreement allows allergies, medications, end-of-life, communication and
    // risks and warnings.
    assert_release(
        &app,
        DemoKind::StandingThirdPartyConsent,
        &bundle,
        &OVERRIDE_OR_CARER,
    );
    let audit = migctl_ok(
        &app,
        &[
            "audit",
            "patient",
            &nhs(DemoKind::StandingThirdPartyConsent),
        ],
    );
    assert!(audit.contains("standing-consent"), "{audit}");
    // Without permission, a patient with no standing consent for 8KL21 is refused.
    let response = record_as(
        &app,
        SOCIAL_CARE,
        "8KL21",
        "R8003",
        DemoKind::CoreAndAdditional,
        |c| {
            c.as_object_mut().unwrap().remove("permission_to_view");
        },
    )
    .await;
    assert_refused(&response, 403, "NO_PATIENT_CONSENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapsed_standing_consent_is_refused() {
    let app = appliance_with(&[DemoKind::LapsedThirdPartyConsent]).await;
    // The organisation the lapsed consent names, registered for this test.
    let lapsed_ods = DemoKind::LapsedThirdPartyConsent.third_party_ods().unwrap();
    let tls = add_partner(&app, lapsed_ods, "social-care", "all", "R8003", 7001);
    let nhs_number = nhs(DemoKind::LapsedThirdPartyConsent);
    let mut last = None;
    // `partner add` reaches a running migd within a second.
    for _ in 0..30 {
        let jwt = token(&app, lapsed_ods, "R8003", |c| {
            c.as_object_mut().unwrap().remove("permission_to_view");
        });
        let response = send(
            &app,
            &tls,
            record_request(&app, record_body(&nhs_number, &ALL_SECTIONS), &jwt),
        )
        .await;
        if error_code(&body_json(&response)) != "ACCESS_DENIED" {
            last = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let response = last.expect("the new partner was never recognised");
    assert_refused(&response, 403, "NO_PATIENT_CONSENT");
    // With the patient's agreement at the point of care the same partner is served.
    let jwt = token(&app, lapsed_ods, "R8003", |_| {});
    let response = send(
        &app,
        &tls,
        record_request(&app, record_body(&nhs_number, &ALL_SECTIONS), &jwt),
    )
    .await;
    assert_ok(&response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_is_served_alerted_and_audited() {
    let app = appliance_with(&[DemoKind::SensitiveWithoutConsent]).await;
    let kind = DemoKind::SensitiveWithoutConsent;
    let justification = "Unconscious patient at scene, allergy status needed";
    let response = record_as(&app, AMBULANCE, AMB, "R8000", kind, |c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!(justification);
    })
    .await;
    let bundle = assert_ok(&response);
    // Override sections by default: core, end-of-life, communication preferences, risks and
    // warnings.
    assert_release(&app, kind, &bundle, &OVERRIDE_OR_CARER);
    let fed = fed_resources(&app, &patient_id(kind));
    let sensitive = fed
        .iter()
        .filter(|(_, v)| !categories(v).is_empty())
        .map(|(k, _)| k.clone())
        .collect();
    assert_absent(&response.body, &with_dependants(&fed, sensitive));

    let number = nhs(kind);
    let alerts = migctl_ok(&app, &["alerts", "list"]);
    let alert = alerts
        .lines()
        .find(|l| l.contains(&number))
        .unwrap_or_else(|| panic!("no alert for {number}: {alerts}"));
    assert!(
        alert.contains("DEMAMB") && alert.contains("emergency") && alert.contains(justification),
        "{alert}"
    );
    let audit = migctl_ok(&app, &["audit", "patient", &number]);
    let access = audit
        .lines()
        .find(|l| l.contains("basis override"))
        .unwrap_or_else(|| panic!("no override access: {audit}"));
    assert!(
        access.contains("partner DEMAMB") && access.contains("(emergency)"),
        "{access}"
    );
}

// ---- the audit trail ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_verifies_and_exports_as_fhir_audit_events() {
    let app = appliance_with(&[
        DemoKind::CoreAndAdditional,
        DemoKind::CoreOnly,
        DemoKind::Dissent,
        DemoKind::SensitiveWithoutConsent,
    ])
    .await;
    let kinds = [
        DemoKind::CoreAndAdditional,
        DemoKind::Dissent,
        DemoKind::CoreOnly,
        DemoKind::SensitiveWithoutConsent,
    ];
    for kind in kinds {
        record_as(&app, AMBULANCE, AMB, "R8000", kind, |_| {}).await;
    }
    record_as(
        &app,
        SOCIAL_CARE,
        "8KL21",
        "R8000",
        DemoKind::CoreAndAdditional,
        |_| {},
    )
    .await;
    record_as(
        &app,
        AMBULANCE,
        AMB,
        "R8000",
        DemoKind::SensitiveWithoutConsent,
        |c| {
            c["permission_to_view"] = json!("override");
            c["override_reason"] = json!("unable-to-consent");
            c["override_justification"] = json!("Patient confused, no relative present");
        },
    )
    .await;
    let verify = app.migctl(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = migctl_ok(&app, &["audit", "export"]);
    let events: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() >= 6, "{} events", events.len());
    assert!(events.iter().all(|e| e["resourceType"] == "AuditEvent"));
    assert!(export.contains(TRACE), "trace id not in the audit export");
    assert_valid_fhir(export.as_bytes());
}
