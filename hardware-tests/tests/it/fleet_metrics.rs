//! Fleet observability (SPEC §14) against a running migd on a software TPM: `GET /metrics` on
//! the loopback listener, read with an independent Prometheus text parser, moves with partner
//! traffic over real mTLS; and migd's events reach a journal socket as native-protocol
//! datagrams with structured fields and their stable MESSAGE_ID.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_common;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use e2e_common::*;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use mig_synthetic::DemoKind;
use prometheus_parse::{Scrape, Value};

const AMB: &str = "DEMAMB";

/// One plain-HTTP scrape: (status line, content type, parsed exposition).
fn scrape(app: &TestAppliance) -> (String, String, Scrape) {
    let started = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.app.metrics_port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    eprintln!(
        "scrape: {} bytes in {:.1} ms",
        body.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let parsed = Scrape::parse(body.as_bytes().lines()).unwrap();
    (status, content_type, parsed)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Counter(_) => "counter",
        Value::Gauge(_) => "gauge",
        Value::Histogram(_) => "histogram",
        Value::Summary(_) => "summary",
        Value::Untyped(_) => "untyped",
    }
}

fn number(value: &Value) -> f64 {
    match value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        _ => panic!("not a number: {value:?}"),
    }
}

/// The value of the series `name` whose labels include all of `labels` (0 when absent).
fn series(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| number(&s.value))
        .sum()
}

fn has(scrape: &Scrape, name: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == name)
}

/// Total observations in the histogram `name` whose labels include `labels`.
fn observations(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .filter_map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count),
            _ => None,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_parses_and_counters_move_with_partner_traffic() {
    let mut app = appliance_with(&[DemoKind::CoreAndAdditional]).await;
    // Checkpoint every second rather than every minute, so the test sees one.
    app.stop();
    let config = std::fs::read_to_string(app.config_path()).unwrap();
    assert!(config.contains("checkpoint_every_seconds = 60"), "{config}");
    let config = config.replace(
        "checkpoint_every_seconds = 60",
        "checkpoint_every_seconds = 1",
    );
    std::fs::write(app.config_path(), config).unwrap();
    app.start_migd(&[]).unwrap();
    let (status, content_type, before) = scrape(&app);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );

    let types: HashMap<&str, &str> = before
        .samples
        .iter()
        .map(|s| (s.metric.as_str(), kind(&s.value)))
        .collect();
    for (name, expected) in [
        ("mig_request_duration_seconds", "histogram"),
        ("mig_tpm_operation_duration_seconds", "histogram"),
        ("mig_audit_queue_depth", "gauge"),
        ("mig_audit_uncovered_seconds", "gauge"),
        ("mig_audit_alerts_unacknowledged", "gauge"),
        ("mig_certificate_expiry_seconds", "gauge"),
        ("mig_crl_expiry_seconds", "gauge"),
        ("mig_registry_files_not_applied", "gauge"),
        ("mig_replica_size_bytes", "gauge"),
        ("mig_replica_patients", "gauge"),
        ("mig_replica_resources", "gauge"),
        ("mig_replica_last_import_timestamp_seconds", "gauge"),
        ("mig_health_status", "gauge"),
        ("mig_ready", "gauge"),
        ("mig_build_info", "gauge"),
    ] {
        assert_eq!(types.get(name).copied(), Some(expected), "{name}");
        assert!(before.docs.contains_key(name), "no HELP for {name}");
    }
    // The demo certificate is valid for a year, its CRL for 30 days.
    let cert = series(&before, "mig_certificate_expiry_seconds", &[]);
    assert!(
        cert > 300.0 * 86_400.0 && cert <= 366.0 * 86_400.0,
        "{cert}"
    );
    let crl = series(&before, "mig_crl_expiry_seconds", &[]);
    assert!(crl > 29.0 * 86_400.0 && crl <= 30.0 * 86_400.0, "{crl}");
    assert!(series(&before, "mig_replica_patients", &[]) >= 1.0);
    assert!(series(&before, "mig_replica_size_bytes", &[]) > 0.0);
    assert_eq!(series(&before, "mig_health_status", &[]), 1.0);
    let info = before
        .samples
        .iter()
        .find(|s| s.metric == "mig_build_info")
        .unwrap();
    assert!(info.labels.get("slot").is_some() && info.labels.get("version").is_some());
    // Unsealing at start-up went through the TPM worker.
    assert!(
        observations(
            &before,
            "mig_tpm_operation_duration_seconds",
            &[("operation", "unseal")]
        ) >= 1.0
    );

    // Traffic: two records released, one refused (a role the agreement lacks), one unknown path.
    let record = [("interaction", "structured_record")];
    let released = [("status", "200"), ("outcome", "released")];
    let refused = [("status", "403"), ("outcome", "refused")];
    let count = |s: &Scrape, extra: &[(&str, &str)]| {
        let labels: Vec<_> = record.iter().chain(extra).copied().collect();
        series(s, "mig_requests_total", &labels)
    };
    let nhs_number = nhs(DemoKind::CoreAndAdditional);
    for role in ["R8000", "R8000", "R9999"] {
        let jwt = token(&app, AMB, role, |_| {});
        let request = record_request(&app, record_body(&nhs_number, &ALL_SECTIONS), &jwt);
        send(&app, &app.partner_tls(AMBULANCE), request).await;
    }
    let stray = http::Request::get("/not-a-route")
        .body(bytes::Bytes::new())
        .unwrap();
    send(&app, &app.partner_tls(AMBULANCE), stray).await;

    let (_, _, after) = scrape(&app);
    assert_eq!(count(&after, &released) - count(&before, &released), 2.0);
    assert_eq!(count(&after, &refused) - count(&before, &refused), 1.0);
    assert_eq!(
        series(&after, "mig_requests_total", &[("interaction", "other")])
            - series(&before, "mig_requests_total", &[("interaction", "other")]),
        1.0
    );
    assert_eq!(
        observations(&after, "mig_request_duration_seconds", &record)
            - observations(&before, "mig_request_duration_seconds", &record),
        3.0
    );
    // Every request was audited and the writer signs (TPM sign) a checkpoint within a second.
    let mut checkpointed = after;
    for _ in 0..50 {
        if has(&checkpointed, "mig_audit_last_checkpoint_timestamp_seconds") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        checkpointed = scrape(&app).2;
    }
    assert!(has(&checkpointed, "mig_audit_last_checkpoint_age_seconds"));
    assert!(series(&checkpointed, "mig_audit_last_checkpoint_age_seconds", &[]) < 30.0);
    assert!(
        observations(
            &checkpointed,
            "mig_tpm_operation_duration_seconds",
            &[("operation", "nv_increment")]
        ) >= 1.0
    );
    // Nothing a partner sent becomes a label value.
    for sample in &checkpointed.samples {
        for value in [
            sample.labels.get("interaction"),
            sample.labels.get("status"),
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                !value.contains("not-a-route") && !value.contains(AMB),
                "{value}"
            );
        }
    }
}

#[test]
fn events_reach_the_journal_socket_with_fields_and_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.socket");
    let journal = UnixDatagram::bind(&path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let socket = path.to_str().unwrap().to_owned();
    // Read while migd runs, as journald would (a full socket sends migd's lines to stderr).
    let reader = std::thread::spawn(move || {
        let mut events = Vec::new();
        let mut buffer = vec![0u8; 256 * 1024];
        while let Ok(n) = journal.recv(&mut buffer) {
            let fields: HashMap<String, String> = String::from_utf8_lossy(&buffer[..n])
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let stopped = fields.get("MESSAGE_ID").map(String::as_str)
                == Some(mig::system::journal::ids::STOPPED);
            events.push(fields);
            if stopped {
                break;
            }
        }
        events
    });
    let mut app =
        TestAppliance::start_with_env(0, &[(mig::system::journal::SOCKET_ENV, socket.as_str())])
            .unwrap_or_else(|e| panic!("appliance did not start: {e}"));
    let status = app.stop().unwrap();
    assert!(status.success(), "{status:?}\n{}", app.log());
    let events = reader.join().unwrap();
    let by_id = |id: &str| {
        events
            .iter()
            .find(|e| e.get("MESSAGE_ID").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no event {id} among {events:#?}"))
    };
    use mig::system::journal::ids;
    let started = by_id(ids::STARTED);
    assert_eq!(started["SYSLOG_IDENTIFIER"], "migd");
    assert_eq!(started["PRIORITY"], "6");
    assert!(started.contains_key("VERSION"));
    let ready = by_id(ids::READY);
    assert_eq!(ready["LISTEN"], app.address().to_string());
    assert!(ready["MESSAGE"].starts_with("migd ready"));
    by_id(ids::STOPPING);
    by_id(ids::STOPPED);
    // Nothing went to stderr that the journal got.
    assert!(!app.log().contains("migd ready"), "{}", app.log());
}
