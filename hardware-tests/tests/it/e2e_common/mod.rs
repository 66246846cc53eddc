//! Shared by the end-to-end tests (e2e_api, e2e_tls, e2e_upstream): a running appliance, GP
//! Connect requests over real mTLS, certificates issued from the demo CAs, and the independent
//! FHIR validator (daemon/tests/fhir_validate.py).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use hardware_tests::appliance::TestAppliance;
use hardware_tests::load::{client_config_with_alpn, send_once, ClientTls, OneShot};
use mig_synthetic::DemoKind;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{json, Value};

pub const RECORD: &str =
    "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1";
pub const SEARCH: &str = "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";
pub const TRACE: &str = "7d3c1e2a-4b5f-4a6e-9c8d-0e1f2a3b4c5d";
pub const FROM_ASID: &str = "200000000999";
pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const WARNING_EXTENSION: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-ListWarningCode-1";

/// Enough patients for every demo kind (18), still a small practice.
pub const PATIENTS: usize = 18;

pub const ALL_SECTIONS: [&str; 12] = [
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

/// Provisions and starts an appliance off the async runtime.
pub async fn appliance(patients: usize) -> TestAppliance {
    tokio::task::spawn_blocking(move || TestAppliance::start(patients))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("appliance did not start: {e}"))
}

pub fn nhs(kind: DemoKind) -> String {
    mig_synthetic::demo_patients()
        .into_iter()
        .find(|p| p.kind == kind)
        .unwrap()
        .nhs_number
}

pub fn patient_id(kind: DemoKind) -> String {
    mig_synthetic::demo_patients()
        .into_iter()
        .find(|p| p.kind == kind)
        .unwrap()
        .patient_id
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A valid GP Connect token for this appliance, edited by `edit`.
pub fn token(app: &TestAppliance, ods: &str, role: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = mig::api::jwt::example_claims(
        app.app.config.appliance.fhir_base.as_str(),
        ods,
        role,
        now(),
    );
    edit(&mut claims);
    mig::api::jwt::encode_unsigned(&claims)
}

pub fn record_body(nhs: &str, sections: &[&str]) -> String {
    let mut parameters = vec![json!({"name": "patientNHSNumber",
        "valueIdentifier": {"system": NHS_SYSTEM, "value": nhs}})];
    for s in sections {
        parameters.push(match *s {
            "includeAllergies" => json!({"name": s, "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]}),
            _ => json!({"name": s}),
        });
    }
    json!({"resourceType": "Parameters", "parameter": parameters}).to_string()
}

pub fn record_request(app: &TestAppliance, body: String, jwt: &str) -> http::Request<Bytes> {
    http::Request::post("/fhir/Patient/$gpc.getstructuredrecord")
        .header("Ssp-TraceID", TRACE)
        .header("Ssp-From", FROM_ASID)
        .header("Ssp-To", app.app.config.appliance.asid.as_str())
        .header("Ssp-InteractionID", RECORD)
        .header("Authorization", format!("Bearer {jwt}"))
        .header("Content-Type", "application/fhir+json")
        .body(Bytes::from(body))
        .unwrap()
}

pub fn search_request(app: &TestAppliance, identifier: &str, jwt: &str) -> http::Request<Bytes> {
    http::Request::get(format!("/fhir/Patient?identifier={identifier}"))
        .header("Ssp-TraceID", TRACE)
        .header("Ssp-From", FROM_ASID)
        .header("Ssp-To", app.app.config.appliance.asid.as_str())
        .header("Ssp-InteractionID", SEARCH)
        .header("Authorization", format!("Bearer {jwt}"))
        .body(Bytes::new())
        .unwrap()
}

/// Sends one request on the partner port as `tls`, over HTTP/1.1.
pub async fn send_as(
    app: &TestAppliance,
    tls: &ClientTls,
    request: http::Request<Bytes>,
) -> Result<OneShot, String> {
    let config = client_config_with_alpn(tls, &[b"http/1.1"]).unwrap();
    send_once(app.address(), config, &tls.server_name, request).await
}

/// As `send_as`, but a transport failure fails the test (with migd's log).
pub async fn send(app: &TestAppliance, tls: &ClientTls, request: http::Request<Bytes>) -> OneShot {
    send_as(app, tls, request)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}\n--- migd.log ---\n{}", app.log()))
}

pub fn body_json(response: &OneShot) -> Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&response.body)
        )
    })
}

pub fn error_code(body: &Value) -> &str {
    body["issue"][0]["details"]["coding"][0]["code"]
        .as_str()
        .unwrap_or("")
}

/// Asserts a GP Connect refusal: status, code, a valid OperationOutcome, the trace id echoed.
pub fn assert_refused(response: &OneShot, status: u16, code: &str) {
    let body = body_json(response);
    assert_eq!(
        (response.status.as_u16(), error_code(&body)),
        (status, code),
        "{body}"
    );
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(
        body["issue"][0]["details"]["coding"][0]["system"],
        "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1"
    );
    assert_eq!(
        response.headers.get("ssp-traceid").map(|v| v.as_bytes()),
        Some(TRACE.as_bytes()),
        "Ssp-TraceID not echoed"
    );
    assert_fhir_json(response);
    assert_valid_fhir(&response.body);
}

/// Asserts 200, FHIR JSON, trace id echoed, valid FHIR; returns the body.
pub fn assert_ok(response: &OneShot) -> Value {
    let body = body_json(response);
    assert_eq!(response.status.as_u16(), 200, "{body}");
    assert_eq!(
        response.headers.get("ssp-traceid").map(|v| v.as_bytes()),
        Some(TRACE.as_bytes()),
        "Ssp-TraceID not echoed"
    );
    assert_fhir_json(response);
    assert_valid_fhir(&response.body);
    body
}

pub fn assert_fhir_json(response: &OneShot) {
    assert_eq!(
        response.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/fhir+json; charset=utf-8"[..])
    );
}

/// Validates JSON or NDJSON with daemon/tests/fhir_validate.py. Without the Python package the
/// check is skipped (loudly) unless MIG_REQUIRE_FHIR_VALIDATOR is set.
pub fn assert_valid_fhir(text: &[u8]) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tests/fhir_validate.py");
    let required = std::env::var_os("MIG_REQUIRE_FHIR_VALIDATOR").is_some();
    let child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if !required => {
            eprintln!("SKIPPING FHIR validation: cannot run python3 ({e})");
            return;
        }
        Err(e) => panic!("cannot run python3 for FHIR validation: {e}"),
    };
    child.stdin.take().unwrap().write_all(text).unwrap();
    let output = child.wait_with_output().unwrap();
    match output.status.code() {
        Some(0) => {}
        Some(2) if !required => eprintln!(
            "SKIPPING FHIR validation: {} (pip install 'fhir.resources>=8,<9'; set \
             MIG_REQUIRE_FHIR_VALIDATOR=1 to make this a failure)",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        _ => panic!(
            "not valid FHIR: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// `Type/id` of every entry of a Bundle.
pub fn resource_ids(bundle: &Value) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The List with this code.
pub fn list<'a>(bundle: &'a Value, code: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "List" && r["code"]["coding"][0]["code"] == code)
        .unwrap_or_else(|| panic!("no List {code} in {bundle}"))
}

pub fn has_warning(list: &Value) -> bool {
    list["extension"].as_array().is_some_and(|x| {
        x.iter()
            .any(|e| e["url"] == WARNING_EXTENSION && e["valueCode"] == "confidential-items")
    })
}

/// The List code a fed resource belongs in (SPEC §4, docs/integration.md), worked out here from
/// the resource itself, its patient's other resources (`fed`) and the shipped code lists, read
/// independently of migd; `None` for what no List holds.
pub fn list_code(resource: &Value, fed: &BTreeMap<String, Value>) -> Option<&'static str> {
    let codes = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .flat_map(|k| match &resource[*k] {
                Value::Array(concepts) => concepts.clone(),
                concept => vec![concept.clone()],
            })
            .flat_map(|concept| concept["coding"].as_array().cloned().unwrap_or_default())
            .filter(|c| c["system"] == "http://snomed.info/sct")
            .filter_map(|c| c["code"].as_str().map(str::to_owned))
            .collect()
    };
    let shipped = |file: &str| -> BTreeSet<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policy/data/sections")
            .join(file);
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| {
                l.split('#')
                    .next()?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    };
    let reference = format!(
        "Observation/{}",
        resource["id"].as_str().unwrap_or_default()
    );
    Some(match resource["resourceType"].as_str()? {
        "AllergyIntolerance" => match resource["clinicalStatus"]["coding"][0]["code"].as_str() {
            Some("resolved" | "inactive") => "1103671000000101",
            _ => "886921000000105",
        },
        "MedicationStatement" | "MedicationRequest" => "933361000000108",
        "Condition" => "717711000000103",
        "Immunization" => "1102181000000102",
        "Encounter" => "1149501000000101",
        "DiagnosticReport" => "887191000000108",
        "Observation" => {
            let result_category = resource["category"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["coding"].as_array().into_iter().flatten().any(|c| {
                        c["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
                            && (c["code"] == "laboratory" || c["code"] == "imaging")
                    })
                });
            let in_a_report = fed.values().any(|r| {
                r["resourceType"] == "DiagnosticReport"
                    && r["result"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x["reference"] == reference.as_str())
            });
            if result_category || in_a_report {
                "887191000000108"
            } else {
                "826501000000100"
            }
        }
        "ServiceRequest" => "792931000000107",
        "Procedure" => "procedures",
        "CarePlan" => {
            let list = shipped("end-of-life.txt");
            if codes(&["category", "code"])
                .iter()
                .any(|c| list.contains(c))
            {
                "end-of-life"
            } else {
                return None;
            }
        }
        "Flag" => {
            let list = shipped("communication-flags.txt");
            if codes(&["category", "code"])
                .iter()
                .any(|c| list.contains(c))
            {
                "communication-preferences"
            } else {
                "risks-and-warnings"
            }
        }
        _ => return None,
    })
}

/// A patient's resources as the practice fed them (the NDJSON `load_practice` wrote), by
/// `Type/id`. The test's own ground truth, read independently of migd.
pub fn fed_resources(app: &TestAppliance, patient_id: &str) -> BTreeMap<String, Value> {
    let subject = format!("\"Patient/{patient_id}\"");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(app.app.dir.join("practice")).unwrap() {
        let path = entry.unwrap().path();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let value: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let mine = value["resourceType"] == "Patient" && value["id"] == patient_id
                || ["subject", "patient"]
                    .iter()
                    .any(|k| value[k].to_string().contains(&subject));
            if mine {
                let key = format!(
                    "{}/{}",
                    value["resourceType"].as_str().unwrap(),
                    value["id"].as_str().unwrap()
                );
                out.insert(key, value);
            }
        }
    }
    out
}

/// The four sensitive refsets (SPEC §6).
pub const REFSETS: [(&str, &str); 4] = [
    ("gender", "999004351000000109"),
    ("assisted-fertilisation", "999004371000000100"),
    ("termination-of-pregnancy", "999004361000000107"),
    ("sti", "999004381000000103"),
];

/// The sensitive categories of a fed resource: a refset label, or a concept of the category
/// anywhere in its codes (the synthetic vocabulary's lists).
pub fn categories(resource: &Value) -> BTreeSet<&'static str> {
    let text = resource.to_string();
    let mut out = BTreeSet::new();
    for (name, refset) in REFSETS {
        if resource["meta"]["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|c| c["code"] == refset))
        {
            out.insert(name);
        }
    }
    for category in mig_synthetic::vocab::SENSITIVE_CATEGORIES {
        if category
            .concepts
            .iter()
            .any(|(code, _)| text.contains(&format!("\"code\":\"{code}\"")))
        {
            let name = REFSETS
                .iter()
                .find(|(_, r)| *r == category.refset_id)
                .map(|(n, _)| *n)
                .unwrap();
            out.insert(name);
        }
    }
    out
}

pub fn practice_confidential(resource: &Value) -> bool {
    resource["meta"]["security"].as_array().is_some_and(|s| {
        s.iter().any(|c| {
            c["system"] == "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
                && (c["code"] == "R" || c["code"] == "V")
        })
    })
}

/// `seed` plus everything that (transitively) references one of them: what must be withheld.
pub fn with_dependants(fed: &BTreeMap<String, Value>, seed: BTreeSet<String>) -> BTreeSet<String> {
    let mut withheld = seed;
    loop {
        let before = withheld.len();
        for (key, value) in fed {
            let text = value.to_string();
            if withheld
                .iter()
                .any(|w| text.contains(&format!("\"reference\":\"{w}\"")))
            {
                withheld.insert(key.clone());
            }
        }
        if withheld.len() == before {
            return withheld;
        }
    }
}

/// Asserts that nothing of `withheld` (`Type/id`) appears in the body, as an id or a reference.
pub fn assert_absent(body: &[u8], withheld: &BTreeSet<String>) {
    let text = String::from_utf8_lossy(body);
    for key in withheld {
        let id = key.split('/').nth(1).unwrap();
        assert!(
            !text.contains(&format!("\"{id}\"")) && !text.contains(&format!("/{id}\"")),
            "withheld {key} appears in the response"
        );
    }
}

/// A CA to issue test certificates from.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// The demo partner CA, from its PEM files in `pki/` (re-signed in memory with the same name
/// and key, so what it issues chains to the installed CA).
pub fn partner_ca(app: &TestAppliance) -> Ca {
    let pem = std::fs::read_to_string(app.app.pki.join("partner-ca.pem")).unwrap();
    let key_pem = std::fs::read_to_string(app.app.pki.join("partner-ca.key")).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let params = CertificateParams::from_ca_cert_pem(&pem).unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A new CA nobody trusts.
pub fn stranger_ca() -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "MIG Demo Partner CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A client certificate from `ca`, valid from `from_days` to `to_days` relative to now.
pub fn issue_client(
    ca: &Ca,
    name: &str,
    serial: u64,
    from_days: i64,
    to_days: i64,
) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(SerialNumber::from(serial));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Client TLS for a certificate issued in the test.
pub fn tls_for(app: &TestAppliance, cert_pem: String, key_pem: String) -> ClientTls {
    ClientTls {
        cert_pem,
        key_pem,
        ..app.partner_tls(hardware_tests::appliance::AMBULANCE)
    }
}

/// Writes `pem` into the appliance's pki folder and returns its path.
pub fn write_pki(app: &TestAppliance, name: &str, pem: &str) -> std::path::PathBuf {
    let path = app.app.pki.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Runs migctl and asserts success; returns stdout.
pub fn migctl_ok(app: &TestAppliance, args: &[&str]) -> String {
    let output = app.migctl(args);
    assert!(
        output.status.success(),
        "migctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Registers a partner with a certificate issued now from the partner CA; returns its TLS.
pub fn add_partner(
    app: &TestAppliance,
    ods: &str,
    kind: &str,
    sections: &str,
    roles: &str,
    serial: u64,
) -> ClientTls {
    let (cert, key) = issue_client(
        &partner_ca(app),
        &format!("Test partner {ods}"),
        serial,
        -1,
        30,
    );
    let path = write_pki(app, &format!("{ods}.crt"), &cert);
    migctl_ok(
        app,
        &[
            "partner",
            "add",
            "--ods",
            ods,
            "--name",
            &format!("Test partner {ods}"),
            "--type",
            kind,
            "--cert",
            path.to_str().unwrap(),
            "--sections",
            sections,
            "--roles",
            roles,
        ],
    );
    tls_for(app, cert, key)
}

/// An appliance whose practice is just large enough to hold these demo patients.
pub async fn appliance_with(kinds: &[DemoKind]) -> TestAppliance {
    let patients = mig_synthetic::demo_patients()
        .into_iter()
        .filter(|p| kinds.contains(&p.kind))
        .map(|p| p.index as usize + 1)
        .max()
        .unwrap_or(0);
    appliance(patients).await
}
