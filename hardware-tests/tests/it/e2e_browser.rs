//! The care-record view in a real browser: headless Chromium (Debian's), driven by playwright-core
//! with the ambulance partner's client certificate, loads pages from a running appliance and
//! checks them (hardware-tests/browser/check.mjs): no console error, no request beyond the page,
//! no horizontal scroll at 360 and 1280 px, every section heading, no WCAG 2.1 AA violation
//! (axe-core), printable to PDF, hostile record text shown as text.
//!
//! Needs `chromium` and `npm ci` in hardware-tests/browser (scripts/install-deps does both);
//! without them the test says so and passes, unless MIG_REQUIRE_BROWSER=1 (scripts/test sets it).
//! MIG_SCREENSHOT_DIR=DIR keeps the screenshots and PDFs (docs/images was made this way).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_common;

use std::path::{Path, PathBuf};

use e2e_common::*;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use mig_synthetic::DemoKind;
use serde_json::{json, Value};

const AMB: &str = "DEMAMB";
const CHROMIUM: &str = "/usr/bin/chromium";
const HOSTILE_NHS: &str = "9876543210";
const HOSTILE: [&str; 2] = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
];

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Whether Chromium and the npm packages are here; fails instead when they are required.
fn browser_available() -> bool {
    let ready = Path::new(CHROMIUM).exists()
        && browser_dir().join("node_modules/playwright-core").exists()
        && browser_dir().join("node_modules/axe-core").exists();
    if !ready {
        assert!(
            std::env::var_os("MIG_REQUIRE_BROWSER").is_none(),
            "MIG_REQUIRE_BROWSER is set but {CHROMIUM} or hardware-tests/browser/node_modules is \
             missing: run scripts/install-deps"
        );
        eprintln!("skipped: Chromium or the browser test packages are not installed");
    }
    ready
}

/// A patient whose every free-text field is markup an attacker would like to run.
fn import_hostile_patient(app: &TestAppliance) {
    let text = |n: usize| json!(HOSTILE[n % 2]);
    let subject = json!({"reference": "Patient/hostile"});
    let resources = [
        json!({"resourceType": "Patient", "id": "hostile",
            "identifier": [{"system": NHS_SYSTEM, "value": HOSTILE_NHS}],
            "name": [{"use": "official", "family": text(0), "given": [text(1)], "prefix": [text(0)]}],
            "gender": "male", "birthDate": "1961-04-12",
            "address": [{"use": "home", "line": [text(0), text(1)], "city": text(1), "postalCode": text(0)}]}),
        json!({"resourceType": "Consent", "id": "hostile-pref", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "urn:mig:sharing-preference", "code": "core-and-additional"}]}],
            "patient": subject, "dateTime": "2024-01-01T09:00:00Z", "provision": {"type": "permit"}}),
        json!({"resourceType": "MedicationStatement", "id": "hostile-med", "subject": subject, "status": "active",
            "medicationCodeableConcept": {"text": text(0)}, "dosage": [{"text": text(1)}],
            "effectivePeriod": {"start": "2020-01-01"}}),
        json!({"resourceType": "AllergyIntolerance", "id": "hostile-allergy", "patient": subject,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005", "display": text(1)}]},
            "reaction": [{"manifestation": [{"text": text(0)}], "severity": text(1)}]}),
        json!({"resourceType": "Condition", "id": "hostile-problem", "subject": subject, "code": {"text": text(1)}}),
        json!({"resourceType": "Observation", "id": "hostile-result", "subject": subject, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"text": text(0)}, "valueString": text(1), "referenceRange": [{"text": text(0)}]}),
    ];
    let path = app.app.dir.join("hostile.ndjson");
    let ndjson: String = resources.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&path, ndjson).unwrap();
    migctl_ok(app, &["import", path.to_str().unwrap()]);
}

fn page(app: &TestAppliance, name: &str, nhs: &str, jwt: &str, expect: Value) -> Value {
    let request = record_request(app, record_body(nhs, &ALL_SECTIONS), jwt);
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .chain([("accept".to_owned(), json!("text/html"))])
        .collect();
    let mut page = json!({
        "name": name,
        "url": format!("https://localhost:{}/fhir/Patient/$gpc.getstructuredrecord", app.address().port()),
        "headers": headers,
        "body": String::from_utf8(request.body().to_vec()).unwrap(),
        "sections": mig_policy::fhir::Section::ALL.iter().map(|s| s.list_code().2).collect::<Vec<_>>(),
    });
    page.as_object_mut()
        .unwrap()
        .extend(expect.as_object().unwrap().clone());
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn care_record_pages_pass_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let app = appliance_with(&[
        DemoKind::CoreAndAdditional,
        DemoKind::SensitiveWithoutConsent,
    ])
    .await;
    import_hostile_patient(&app);
    let granted = token(&app, AMB, "R8000", |_| {});
    let override_token = token(&app, AMB, "R8000", |c| {
        c["permission_to_view"] = json!("override");
        c["override_reason"] = json!("emergency");
        c["override_justification"] = json!("Unconscious patient at scene, allergies needed");
    });
    let pages = vec![
        page(
            &app,
            "care-record-typical",
            &nhs(DemoKind::CoreAndAdditional),
            &granted,
            json!({}),
        ),
        page(
            &app,
            "care-record-withheld",
            &nhs(DemoKind::SensitiveWithoutConsent),
            &granted,
            json!({"withheld": true}),
        ),
        page(
            &app,
            "care-record-override",
            &nhs(DemoKind::CoreAndAdditional),
            &override_token,
            // An override releases the override sections only.
            json!({"override": true, "sections": ["Allergies and adverse reactions", "Medications and medical devices"]}),
        ),
        page(
            &app,
            "care-record-hostile",
            HOSTILE_NHS,
            &granted,
            json!({"shown": HOSTILE}),
        ),
    ];
    let screenshots = std::env::var("MIG_SCREENSHOT_DIR").ok();
    let job = json!({
        "chromium": CHROMIUM,
        "origin": format!("https://localhost:{}", app.address().port()),
        "cert": app.app.pki.join(format!("{AMBULANCE}.crt")),
        "key": app.app.pki.join(format!("{AMBULANCE}.key")),
        "screenshots": screenshots,
        "pages": pages,
    });
    let job_path = app.app.dir.join("browser-job.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(browser_dir().join("check.mjs"))
            .arg(&job_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "browser checks failed:\n{}{}\n--- migd.log ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        app.log()
    );
    // Four pages at two widths, each audited once as the HTML view.
    let audit = migctl_ok(&app, &["audit", "patient", HOSTILE_NHS]);
    assert!(!audit.trim().is_empty(), "{audit}");
}
