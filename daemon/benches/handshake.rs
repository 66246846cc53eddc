//! Full and resumed TLS handshakes per second against the real partner listener.
//! Run: `cargo bench -p mig --bench handshake` (release build). Each connection is one
//! handshake with client-certificate verification plus one small HTTP/1.1 request
//! (`Connection: close`), from a rustls client on the same machine (it shares the CPU).
//! The server key is an in-memory P-256 key; set `MIG_BENCH_SIGN_DELAY_MS` to add a fixed
//! delay per signature (≈3.5 ms imitates swtpm, tens of ms a hardware TPM).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![forbid(unsafe_code)]

#[path = "../tests/it/tls_support/mod.rs"]
mod tls_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_support::*;

const CONCURRENCY: usize = 8;
const RUN: Duration = Duration::from_secs(5);

async fn run(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> (f64, u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (config, done, resumed) = (config.clone(), done.clone(), resumed.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN {
                let exchange = get(addr, config.clone(), "/healthz").await.unwrap();
                assert_eq!(exchange.status, 200);
                done.fetch_add(1, Ordering::Relaxed);
                if exchange.resumed {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        n,
        resumed.load(Ordering::Relaxed),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ca = Issuer::root("Partner CA");
        let who = ca.client("ambulance");
        let delay_ms: u64 = std::env::var("MIG_BENCH_SIGN_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let options = Options {
            sign_delay: (delay_ms > 0).then(|| Duration::from_millis(delay_ms)),
            // Capacity, not the per-source limits, is measured: every client here is 127.0.0.1.
            limits: mig::listener::ListenerLimits {
                handshake_rate_per_source: 1_000_000,
                handshake_burst_per_source: 1_000_000,
                max_connections_per_source: 1_000_000,
                max_connections_per_partner: 1_000_000,
                ..Default::default()
            },
            ..Default::default()
        };
        let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;

        let mut no_resumption = (*app.client_config(Some(&who))).clone();
        no_resumption.resumption = rustls::client::Resumption::disabled();
        let (full_rate, full_n, full_resumed) = run(app.addr, Arc::new(no_resumption)).await;
        assert_eq!(full_resumed, 0);

        let resuming = app.client_config(Some(&who));
        get(app.addr, resuming.clone(), "/").await.unwrap(); // obtain tickets
        let (resumed_rate, resumed_n, resumed_count) = run(app.addr, resuming).await;

        println!("handshake benchmark: {CONCURRENCY} concurrent clients, {}s each, sign delay {delay_ms} ms", RUN.as_secs());
        println!("full handshakes/s:    {full_rate:8.0}  ({full_n} connections)");
        println!(
            "resumed handshakes/s: {resumed_rate:8.0}  ({resumed_n} connections, {resumed_count} resumed)"
        );
    });
}
