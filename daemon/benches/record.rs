//! The structured-record handler without the network: what one request costs in migd's own
//! code (headers, token, replica read, decision, Bundle), on one core.
//! `cargo bench -p mig --bench record` (MIG_BENCH_PATIENTS, default 2,000).
//!
//! Two runs: the same typical patient over and over (as the end-to-end load test does), and a
//! round of every typical patient in the practice (cold pages, as a real day would be).
//! MIG_BENCH_PACK=0 leaves the records unpacked (read from the rows, in import order).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mig::api::{jwt, AccessEvent, Api, Appliance, AuditSink, AuditUnavailable, Caller};
use mig::replica::{ReaderPool, Replica};
use mig_policy::fhir::Section;
use mig_policy::{Agreement, PartnerType, RoleSet, SensitiveCodes};

// As in migd.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BASE: &str = "https://mig.a81001.example.nhs.uk/fhir";
const ASID: &str = "200000000123";

/// Audit is measured by its own bench; here it only has to accept.
struct Accept;

impl AuditSink for Accept {
    fn record(
        &self,
        _event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send>> {
        Box::pin(async { Ok(()) })
    }
}

fn request(nhs: &str, token: &str, html: bool) -> Result<http::Request<Bytes>, http::Error> {
    let mut parameters = vec![serde_json::json!({"name": "patientNHSNumber",
        "valueIdentifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}})];
    parameters.extend(Section::ALL.iter().map(|s| match s {
        Section::Allergies => serde_json::json!({"name": s.parameter_name(),
            "part": [{"name": "includeResolvedAllergies", "valueBoolean": true}]}),
        _ => serde_json::json!({"name": s.parameter_name()}),
    }));
    http::Request::post("/fhir/Patient/$gpc.getstructuredrecord")
        .header("Ssp-TraceID", "6f1c2a9e-5b7d-4c1e-9f3a-2d8b7e6a1c40")
        .header("Ssp-From", "200000000999")
        .header("Ssp-To", ASID)
        .header(
            "Ssp-InteractionID",
            "urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1",
        )
        .header("Authorization", format!("Bearer {token}"))
        .header(
            "Accept",
            if html {
                "text/html"
            } else {
                "application/fhir+json"
            },
        )
        .body(Bytes::from(
            serde_json::json!({"resourceType": "Parameters", "parameter": parameters}).to_string(),
        ))
}

/// This process's anonymous resident memory (heap), KiB.
fn anonymous_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mig::system::disable_huge_pages()?;
    let patients: u64 = std::env::var("MIG_BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let rounds: usize = std::env::var("MIG_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("ndjson");
    mig_synthetic::write_practice(&data, patients, 1)?;
    let files = mig::replica::ndjson_import_order(&data)?;
    let key = [42u8; 32];
    let path = dir.path().join("replica.db");
    let mut replica = Replica::create(&path, &key)?;
    for file in &files {
        replica.import_ndjson(std::io::BufReader::new(std::fs::File::open(file)?))?;
    }
    // As migd does once an import has settled (`replica::spawn_packer`); MIG_BENCH_PACK=0
    // reads every record from the rows, to compare.
    if std::env::var("MIG_BENCH_PACK").as_deref() != Ok("0") {
        let started = Instant::now();
        let mut packed = 0;
        loop {
            match replica.pack_some(256)? {
                0 => break,
                n => packed += n,
            }
        }
        println!(
            "{packed} patient records packed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("records left unpacked (MIG_BENCH_PACK=0)");
    }

    let typical_sizes = mig_synthetic::Practice::new(1).typical_patients(patients, 300)?;
    if let Some((_, first_size)) = typical_sizes.first() {
        let mean =
            typical_sizes.iter().map(|(_, n)| n).sum::<usize>() as f64 / typical_sizes.len() as f64;
        println!(
            "typical patient: {first_size} resources (the {} typical patients: mean {mean:.1})",
            typical_sizes.len()
        );
    }
    let typical: Vec<String> = typical_sizes.into_iter().map(|(nhs, _)| nhs).collect();
    let first = typical.first().ok_or("no typical patient")?.clone();

    let mut api = Api {
        appliance: Appliance {
            ods: "A81001".into(),
            name: "The Surgery".into(),
            asid: ASID.into(),
            fhir_base: BASE.into(),
        },
        replica: Arc::new(ReaderPool::new(path, zeroize::Zeroizing::new(key))?),
        records: Default::default(),
        audit: Arc::new(Accept),
        sensitive: Arc::new(SensitiveCodes::shipped()?),
        health: Arc::new(|| Ok(())),
    };
    let caller = Caller {
        agreement: Some(Arc::new(Agreement {
            ods: "DEMAMB".into(),
            name: "Ambulance".into(),
            partner_type: PartnerType::Ambulance,
            sites: BTreeSet::new(),
            sections: Section::ALL.into_iter().collect(),
            roles: RoleSet::Only(["R8000".to_owned()].into()),
            override_roles: RoleSet::Only(["R8000".to_owned()].into()),
            override_sections: None,
            expires: None,
            attested_permission: false,
        })),
        certificate_sha256: "ab".repeat(32),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = jwt::encode_unsigned(&jwt::example_claims(BASE, "DEMAMB", "R8000", now));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let measure = |api: &Api,
                   label: &str,
                   nhs_numbers: &[String],
                   html: bool|
     -> Result<f64, Box<dyn std::error::Error>> {
        let mut bytes = 0;
        let started = Instant::now();
        for nhs in nhs_numbers {
            let response = runtime.block_on(api.handle(&caller, request(nhs, &token, html)?));
            if !response.status().is_success() {
                return Err(format!("{nhs}: HTTP {}", response.status()).into());
            }
            bytes += response.body().len();
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{label}: {} records in {seconds:.2} s, {:.0} µs/record ({:.0} records/s on one core), {:.1} KB/record, {} MiB anonymous memory",
            nhs_numbers.len(),
            seconds * 1e6 / nhs_numbers.len() as f64,
            nhs_numbers.len() as f64 / seconds,
            bytes as f64 / nhs_numbers.len() as f64 / 1e3,
            anonymous_kib() / 1024
        );
        Ok(seconds / nhs_numbers.len() as f64)
    };
    measure(&api, "warm-up", &vec![first.clone(); 200], false)?;
    let same = vec![first; 2_000 * rounds];
    let json = measure(&api, "same typical patient", &same, false)?;
    let html = measure(&api, "same typical patient, care-record page", &same, true)?;
    println!("care-record page / Bundle CPU: {:.2}", html / json);
    let mut round = Vec::new();
    for _ in 0..rounds {
        round.extend(typical.iter().cloned());
    }
    measure(
        &api,
        &format!("every typical patient ({}), {rounds} rounds", typical.len()),
        &round,
        false,
    )?;
    api.records = Arc::new(mig::api::records::RecordCache::new(0));
    measure(
        &api,
        &format!("every typical patient ({}), no record cache", typical.len()),
        &round,
        false,
    )?;
    Ok(())
}
