//! SPEC §12 speed: a year's fit-note extract (`migctl extract fit-notes`, end to end through
//! the admin socket: read, count, audit, TPM signature, files written) of a synthetic practice
//! (default 10,000 patients) on swtpm, while partners fetch structured records over mTLS.
//!
//! `cargo build --release --bins && cargo bench -p hardware-tests --bench extract`
//! (MIG_BENCH_PATIENTS, MIG_BENCH_RUNS).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{run, RequestTemplate};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn record_request(nhs: &str, token: &str) -> RequestTemplate {
    let parameters = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "patientNHSNumber", "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        {"name": "includeAllergies", "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]},
        {"name": "includeMedication"}, {"name": "includeProblems"}, {"name": "includeConsultations"},
        {"name": "includeInvestigations"}]});
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
        body: Bytes::from(parameters.to_string()),
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

fn main() -> Result<(), String> {
    let patients: u64 = env_or("MIG_BENCH_PATIENTS", 10_000);
    let runs: usize = env_or("MIG_BENCH_RUNS", 5);
    let started = Instant::now();
    let appliance = TestAppliance::start(patients as usize)?;
    println!(
        "appliance with {patients} patients ready in {:.0} s (provision, start, import)",
        started.elapsed().as_secs_f64()
    );
    let typical = mig_synthetic::Practice::new(1)
        .typical_patients(patients, 1)
        .map_err(|e| e.to_string())?;
    let (nhs, _) = typical.first().ok_or("no typical patient")?.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fhir_base = appliance.app.config.appliance.fhir_base.as_str().to_owned();
    let token = mig::api::jwt::encode_unsigned(&mig::api::jwt::example_claims(
        &fhir_base, "DEMAMB", "R8000", now,
    ));
    let request = record_request(&nhs, &token);
    let tls = appliance.partner_tls(AMBULANCE);
    let address = appliance.address();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let out = appliance.app.dir.join("fit-notes.csv");
    let args = [
        "extract",
        "fit-notes",
        "--from",
        "2025-11-01",
        "--to",
        "2026-10-31",
        "--out",
        out.to_str().ok_or("path")?,
    ];
    let time_runs = |label: &str| -> Result<(), String> {
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let output = appliance.migctl(&args);
            times.push(t.elapsed());
            if !output.status.success() {
                return Err(String::from_utf8_lossy(&output.stderr).into_owned());
            }
        }
        times.sort();
        let rows = std::fs::read_to_string(&out)
            .map(|c| c.lines().count() - 1)
            .unwrap_or(0);
        println!(
            "extract of a year, {label}: min {:.3} s, median {:.3} s, max {:.3} s over {runs} runs ({rows} rows); loadavg {}",
            times[0].as_secs_f64(),
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64(),
            uptime().trim()
        );
        Ok(())
    };

    time_runs("migd idle")?;
    // Partners keep fetching records (8 keep-alive mTLS connections) throughout the runs.
    let load_seconds = 3 + runs as u64 * 3;
    let load = std::thread::spawn({
        let tls = tls.clone();
        let request = request.clone();
        move || {
            runtime.block_on(run(
                address,
                &tls,
                &request,
                8,
                Duration::from_secs(load_seconds),
            ))
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    time_runs("while partners fetch records")?;
    let report = load.join().map_err(|_| "load thread panicked")??;
    println!("partner load during the runs: {report}");
    Ok(())
}
