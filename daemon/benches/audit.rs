//! Audited appends per second: group commit (many records per fsync) against one commit and
//! one fsync per record, with 32 concurrent appenders, on a real SQLCipher file.
//! `cargo bench -p mig --bench audit` (MIG_BENCH_RECORDS, MIG_BENCH_DIR to change the defaults).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mig::audit::{AuditLog, AuditOptions, AuditRecord, Decision, PermissionBasis, RecordKind};
use mig::keys::{InMemorySigner, Signer};

const APPENDERS: u64 = 32;

fn record(n: u64) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::PartnerRequest, Decision::Permit);
    r.partner_ods = Some("RX9".into());
    r.partner_cert_sha256 = Some("ab".repeat(32));
    r.sds_user_id = Some(format!("{:012}", n));
    r.sds_role_profile_id = Some("555021935107".into());
    r.job_role = Some("R8000".into());
    r.requesting_org_ods = Some("RX9".into());
    r.nhs_number = Some("9000000009".into());
    r.interaction_id =
        Some("urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1".into());
    r.trace_id = Some(format!("3f2a1b4c-0000-4000-8000-{:012}", n));
    r.basis = PermissionBasis::Granted;
    r.sections = vec!["allergies".into(), "medications".into(), "problems".into()];
    r
}

struct Result {
    records: u64,
    elapsed: Duration,
    commits: u64,
    p50: Duration,
    p99: Duration,
}

fn run(runtime: &tokio::runtime::Runtime, group_commit: bool, records: u64) -> Result {
    let base = std::env::var_os("MIG_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match base {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
    };
    let signer: Arc<dyn Signer> = InMemorySigner::generate().unwrap();
    let options = AuditOptions {
        group_commit,
        ..AuditOptions::default()
    };
    let counter = Arc::new(mig::audit::InMemoryCounter::new(0));
    let log = Arc::new(
        AuditLog::create(
            &dir.path().join("audit.db"),
            &[9u8; 32],
            signer,
            counter,
            options,
        )
        .unwrap(),
    );
    let per_task = records / APPENDERS;
    let start = Instant::now();
    let latencies = runtime.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..APPENDERS {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task as usize);
                for i in 0..per_task {
                    let began = Instant::now();
                    log.append(record(t * per_task + i)).await.unwrap();
                    latencies.push(began.elapsed());
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let elapsed = start.elapsed();
    let commits = log.stats().commits;
    log.shutdown_blocking().unwrap();
    let mut latencies = latencies;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Result {
        records: per_task * APPENDERS,
        elapsed,
        commits,
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn report(name: &str, r: &Result) {
    println!(
        "{name:<28} {:>7} records in {:>7.2} s = {:>8.0} appends/s, {:>6} commits ({:.1} records/commit), latency p50 {:.2} ms p99 {:.2} ms",
        r.records,
        r.elapsed.as_secs_f64(),
        r.records as f64 / r.elapsed.as_secs_f64(),
        r.commits,
        r.records as f64 / r.commits.max(1) as f64,
        r.p50.as_secs_f64() * 1000.0,
        r.p99.as_secs_f64() * 1000.0,
    );
}

fn main() {
    let records: u64 = std::env::var("MIG_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "audit appends, {APPENDERS} concurrent appenders, synchronous=FULL (fsync per commit)"
    );
    let group = run(&runtime, true, records);
    report("group commit", &group);
    // One fsync per record is far slower: fewer records keep the run short.
    let single = run(&runtime, false, (records / 8).max(APPENDERS));
    report("one commit per record", &single);
    let group_rate = group.records as f64 / group.elapsed.as_secs_f64();
    let single_rate = single.records as f64 / single.elapsed.as_secs_f64();
    println!(
        "group commit is {:.1}x one-commit-per-record",
        group_rate / single_rate
    );
}
