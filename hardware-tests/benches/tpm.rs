//! TPM keystore latencies on swtpm (or `MIG_TEST_TCTI`): sign with the TLS key (kept loaded),
//! sign with the audit key (loaded per use), unseal, connect+load (part of migd's start), and a
//! checkpoint's TPM share (audit-key signature + counter read + increment + read).
//! Run: `cargo bench -p hardware-tests --bench tpm` (SIGNS / UNSEALS env vars change counts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use hardware_tests::Swtpm;
use mig::tpm::{KeyRole, Tpm};

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn measure(n: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        f(i);
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn report(name: &str, samples: &[Duration]) {
    let pick =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    let total: Duration = samples.iter().sum();
    println!(
        "| {name} | {} | {} | {} | {} | {:.0}/s |",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(samples[samples.len() - 1]),
        samples.len() as f64 / total.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let signs = count("SIGNS", 500);
    let unseals = count("UNSEALS", 100);
    let swtpm = Swtpm::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let settings = swtpm.settings(&[7]);
    println!("TPM: {}", swtpm.tcti());

    let provision = measure(1, |_| {
        Tpm::connect(&settings)
            .unwrap()
            .provision(state.path())
            .unwrap()
    });
    let startup = measure(20, |_| {
        let tpm = Tpm::connect(&settings).unwrap();
        tpm.load(state.path()).unwrap();
        tpm.unseal_replica_key().unwrap();
    });

    let tpm = Tpm::connect(&settings).unwrap();
    tpm.load(state.path()).unwrap();
    let tls = tpm.signer(KeyRole::Tls).unwrap();
    let audit = tpm.signer(KeyRole::Audit).unwrap();
    let message = [0x5au8; 256];
    // Warm-up: first calls pay for lazy set-up in tpm2-tss.
    for _ in 0..10 {
        tls.sign(&message).unwrap();
    }
    let tls_sign = measure(signs, |_| {
        tls.sign(&message).unwrap();
    });
    let audit_sign = measure(unseals, |_| {
        audit.sign(&message).unwrap();
    });
    let unseal = measure(unseals, |_| {
        tpm.unseal_replica_key().unwrap();
    });
    let checkpoint = measure(unseals, |_| {
        tpm.counter_read().unwrap();
        audit.sign(&message).unwrap();
        tpm.counter_increment().unwrap();
    });

    // Throughput with 8 threads asking at once: the TPM thread serves one at a time.
    let threads = 8;
    let per_thread = signs / threads;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tls = tls.clone();
            scope.spawn(move || {
                for _ in 0..per_thread {
                    tls.sign(&message).unwrap();
                }
            });
        }
    });
    let concurrent = (threads * per_thread) as f64 / start.elapsed().as_secs_f64();

    println!();
    println!("| operation | n | median ms | p99 ms | max ms | rate |");
    println!("|---|---|---|---|---|---|");
    report("sign, TLS key (loaded)", &tls_sign);
    report("sign, audit key (loaded per use)", &audit_sign);
    report("unseal replica key (salted policy session)", &unseal);
    report(
        "audit checkpoint: counter read, sign, increment",
        &checkpoint,
    );
    report("connect + load + unseal (start-up share)", &startup);
    report("provision (3 keys, once)", &provision);
    println!();
    println!("TLS signs/s with {threads} threads at once: {concurrent:.0}");
}
