//! SPEC §11 in one run: structured records per second and latency at 32 keep-alive mTLS
//! connections against migd on a synthetic practice (default 10,000 patients), the same bytes
//! served by nginx over mTLS for comparison, full and resumed handshakes with the TPM-held key,
//! and migd's resident memory.
//!
//! `cargo build --release --bins && cargo bench -p hardware-tests --bench api`
//! (MIG_BENCH_PATIENTS, MIG_BENCH_SECONDS; needs nginx: `apt-get install -y nginx`).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{handshakes, run, run_mix, ClientTls, RequestTemplate};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record_request(nhs: &str, token: &str) -> RequestTemplate {
    let sections = [
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
    let mut parameters = vec![
        serde_json::json!({"name": "patientNHSNumber", "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}}),
        serde_json::json!({"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]}),
    ];
    parameters.extend(sections.iter().map(|s| serde_json::json!({"name": s})));
    RequestTemplate {
        method: http::Method::POST,
        path: "/fhir/Patient/$gpc.getstructuredrecord".into(),
        headers: vec![
            (
                "ssp-traceid".into(),
                "6f1c2a9e-5b7d-4c1e-9f3a-2d8b7e6a1c40".into(),
            ),
            ("ssp-from".into(), "200000000999".into()),
            ("ssp-to".into(), "200000000123".into()),
            (
                "ssp-interactionid".into(),
                "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1".into(),
            ),
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/fhir+json".into()),
        ],
        body: Bytes::from(
            serde_json::json!({"resourceType": "Parameters", "parameter": parameters}).to_string(),
        ),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// nginx serving `body` at /record.json with the same TLS 1.3 mTLS set-up; returns its port.
fn start_nginx(
    dir: &std::path::Path,
    appliance: &TestAppliance,
    body: &[u8],
) -> Result<(std::process::Child, u16), String> {
    use rcgen::{CertificateParams, KeyPair};
    let pki = &appliance.app.pki;
    let read =
        |name: &str| std::fs::read_to_string(pki.join(name)).map_err(|e| format!("{name}: {e}"));
    let ca_key = KeyPair::from_pem(&read("appliance-ca.key")?).map_err(|e| e.to_string())?;
    let ca_params = CertificateParams::from_ca_cert_pem(&read("appliance-ca.pem")?)
        .map_err(|e| e.to_string())?;
    let ca = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = CertificateParams::new(vec!["localhost".into()])
        .and_then(|p| p.signed_by(&key, &ca, &ca_key))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("server.pem"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("www")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("www/record.json"), body).map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let conf = format!(
        "worker_processes 2; pid {d}/nginx.pid; error_log {d}/error.log; daemon off;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; keepalive_requests 1000000; client_body_temp_path {d}/tmp;\n\
           proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{ listen 127.0.0.1:{port} ssl; ssl_protocols TLSv1.3;\n\
             ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n\
             ssl_client_certificate {pki}/partner-ca.pem; ssl_verify_client on;\n\
             root {d}/www; default_type application/fhir+json; }} }}\n",
        d = dir.display(),
        pki = pki.display()
    );
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let child = std::process::Command::new("nginx")
        .args(["-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-p"])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (apt-get install -y nginx)"))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((child, port))
}

fn main() -> Result<(), String> {
    let patients: u64 = env_or("MIG_BENCH_PATIENTS", 10_000);
    let seconds: u64 = env_or("MIG_BENCH_SECONDS", 15);
    let started = Instant::now();
    let appliance = TestAppliance::start(patients as usize)?;
    println!(
        "appliance with {patients} patients ready in {:.0} s (provision, start, import)",
        started.elapsed().as_secs_f64()
    );
    let typical = mig_synthetic::Practice::new(1)
        .typical_patients(patients, 300)
        .map_err(|e| e.to_string())?;
    let (nhs, resources) = typical.first().ok_or("no typical patient")?.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fhir_base = appliance.app.config.appliance.fhir_base.as_str().to_owned();
    let token = mig::api::jwt::encode_unsigned(&mig::api::jwt::example_claims(
        &fhir_base, "DEMAMB", "R8000", now,
    ));
    let request = record_request(&nhs, &token);
    let tls: ClientTls = appliance.partner_tls(AMBULANCE);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pid = appliance.pid().unwrap_or(0);

    runtime.block_on(run(
        appliance.address(),
        &tls,
        &request,
        32,
        Duration::from_secs(2),
    ))?;
    let migd = runtime.block_on(run(
        appliance.address(),
        &tls,
        &request,
        32,
        Duration::from_secs(seconds),
    ))?;
    println!("migd, structured record of a {resources}-resource patient, 32 connections: {migd}");
    println!(
        "migd resident memory: {} MiB now, {} MiB peak",
        rss_kib(pid, "VmRSS:") / 1024,
        rss_kib(pid, "VmHWM:") / 1024
    );
    // The same load spread over many patients: far more than the record cache holds, so
    // nearly every request reads and decodes its patient from the encrypted replica.
    // (Only those whose record the ambulance service may see: a later dissent refuses some.)
    let mut spread = Vec::new();
    for (nhs, _) in &typical {
        let request = record_request(nhs, &token);
        if runtime
            .block_on(hardware_tests::load::fetch(
                appliance.address(),
                &tls,
                &request,
            ))
            .is_ok()
        {
            spread.push(request);
        }
    }
    let spread_report = runtime.block_on(run_mix(
        appliance.address(),
        &tls,
        &spread,
        32,
        Duration::from_secs(seconds),
    ))?;
    println!(
        "migd, structured records of {} typical patients in turn, 32 connections: {spread_report}",
        spread.len()
    );
    println!(
        "migd resident memory: {} MiB now",
        rss_kib(pid, "VmRSS:") / 1024
    );

    // The same bytes from nginx, in the same run.
    let one = runtime.block_on(hardware_tests::load::fetch(
        appliance.address(),
        &tls,
        &request,
    ))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut nginx, port) = start_nginx(dir.path(), &appliance, &one)?;
    let static_request = RequestTemplate {
        method: http::Method::GET,
        path: "/record.json".into(),
        headers: vec![],
        body: Bytes::new(),
    };
    let nginx_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    runtime.block_on(run(
        nginx_addr,
        &tls,
        &static_request,
        32,
        Duration::from_secs(2),
    ))?;
    let static_report = runtime.block_on(run(
        nginx_addr,
        &tls,
        &static_request,
        32,
        Duration::from_secs(seconds),
    ));
    // A graceful stop, so the master takes its workers with it (SIGKILL would orphan them).
    let _ = std::process::Command::new("kill")
        .args(["-QUIT", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
    let static_report = static_report?;
    println!(
        "nginx, the same {} bytes as a static file over mTLS, 32 connections: {static_report}",
        one.len()
    );
    println!(
        "ratio migd/nginx: {:.2}",
        migd.rate() / static_report.rate().max(1.0)
    );

    let metadata = "/fhir/metadata";
    let (full, full_failed, full_s) = runtime.block_on(handshakes(
        appliance.address(),
        &tls,
        metadata,
        8,
        Duration::from_secs(5),
        false,
    ))?;
    let (resumed, resumed_failed, resumed_s) = runtime.block_on(handshakes(
        appliance.address(),
        &tls,
        metadata,
        8,
        Duration::from_secs(5),
        true,
    ))?;
    println!(
        "full handshakes (TPM-signed), 8 clients: {:.0}/s ({full_failed} failed)",
        full as f64 / full_s
    );
    println!(
        "resumed handshakes, 8 clients: {:.0}/s ({resumed_failed} failed)",
        resumed as f64 / resumed_s
    );
    println!(
        "migd resident memory after all: {} MiB peak",
        rss_kib(pid, "VmHWM:") / 1024
    );
    Ok(())
}
