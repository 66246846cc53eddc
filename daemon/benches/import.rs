//! NDJSON import into the encrypted replica (SPEC §11: ≥ 50,000 resources/s).
//! `cargo bench -p mig --bench import` (MIG_BENCH_PATIENTS, default 10,000).
#![forbid(unsafe_code)]

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let patients: u64 = std::env::var("MIG_BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("ndjson");
    let started = Instant::now();
    let summary = mig_synthetic::write_practice(&data, patients, 1)?;
    println!(
        "generated {} patients, {} resources in {:.1} s",
        summary.patients,
        summary.resources,
        started.elapsed().as_secs_f64()
    );

    let files = mig::replica::ndjson_import_order(&data)?;
    let key = [42u8; 32];
    let mut replica = mig::replica::Replica::create(&dir.path().join("replica.db"), &key)?;
    let started = Instant::now();
    let mut resources = 0;
    for file in &files {
        let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(file)?);
        resources += replica.import_ndjson(input)?.upserted;
    }
    let seconds = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(dir.path().join("replica.db"))?.len();
    println!(
        "imported {resources} resources in {} batches in {seconds:.1} s: {:.0} resources/s; replica {:.0} MB",
        files.len(),
        resources as f64 / seconds,
        size as f64 / 1e6
    );
    Ok(())
}
