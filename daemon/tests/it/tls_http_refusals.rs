//! Refusals at the HTTP layer (SPEC §3, §8): an unknown route (404), method (405), slow
//! headers (408), a body over the limit (413), headers over the limit (431), too many requests
//! in flight (429) and a certificate withdrawn on an open connection (403) are each answered
//! with an OperationOutcome carrying a Spine code and audited, through the real API behind the
//! real listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mig::api::{AccessEvent, Api, Appliance as ApiAppliance, AuditSink, AuditUnavailable};
use mig::audit::{AuditRecord, Decision};
use mig::listener::ListenerLimits;
use mig::replica::{ReaderPool, Replica};
use mig_policy::SensitiveCodes;
use serde_json::Value;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: [u8; 32] = [5; 32];

/// Keeps what the API sends to the audit, as the audit trail would store it.
#[derive(Default)]
struct Recorded(Mutex<Vec<AuditRecord>>);

impl AuditSink for Recorded {
    fn record(
        &self,
        event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send + '_>> {
        self.0.lock().unwrap().push(AuditRecord::from(&event));
        Box::pin(async { Ok(()) })
    }
}

struct Setup {
    app: Appliance,
    who: Identity,
    ca: Issuer,
    audit: Arc<Recorded>,
    _replica: tempfile::TempDir,
}

async fn start(limits: ListenerLimits) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    Replica::create(&path, &KEY).unwrap();
    let audit = Arc::new(Recorded::default());
    let api = Api {
        appliance: ApiAppliance {
            ods: "A81001".into(),
            name: "The Surgery".into(),
            asid: "200000000123".into(),
            fhir_base: "https://mig.test/fhir".into(),
        },
        replica: Arc::new(ReaderPool::new(path, zeroize::Zeroizing::new(KEY)).unwrap()),
        records: Default::default(),
        audit: audit.clone(),
        sensitive: Arc::new(SensitiveCodes::shipped().unwrap()),
        health: Arc::new(|| Ok(())),
    };
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        limits,
        poll: Some(Duration::from_millis(200)),
        handler: Some(Arc::new(api)),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    Setup {
        app,
        who,
        ca,
        audit,
        _replica: dir,
    }
}

impl Setup {
    /// Sends raw bytes on a fresh connection and reads the reply until EOF (bounded).
    async fn raw(&self, request: &[u8]) -> String {
        let mut tls = connect(self.app.addr, self.app.client_config(Some(&self.who)))
            .await
            .unwrap();
        let _ = tls.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).to_string()
    }

    /// Waits (≤ 2 s) for the audit record of a refusal with `code`, and returns it.
    async fn audited(&self, code: &str) -> AuditRecord {
        let since = Instant::now();
        loop {
            let found = self
                .audit
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.error_code.as_deref() == Some(code))
                .cloned();
            if let Some(record) = found {
                self.audit.0.lock().unwrap().clear();
                assert_eq!(record.decision, Decision::Refuse);
                assert_eq!(record.partner_ods.as_deref(), Some("RX6"));
                return record;
            }
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "no audit record with {code}: {:?}",
                self.audit.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Status and Spine code of a raw HTTP/1.1 reply.
fn outcome(reply: &str) -> (u16, String) {
    let status = parse_status(reply).unwrap_or_else(|| panic!("no status: {reply:?}"));
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{reply:?}"));
    assert_eq!(json["resourceType"], "OperationOutcome");
    let coding = &json["issue"][0]["details"]["coding"][0];
    assert_eq!(
        coding["system"],
        "https://fhir.nhs.uk/STU3/CodeSystem/Spine-ErrorOrWarningCode-1"
    );
    (status, coding["code"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_and_method_are_answered_and_audited() {
    let s = start(ListenerLimits::default()).await;
    let reply = s
        .raw(b"GET /fhir/Observation HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(outcome(&reply), (404, "NOT_IMPLEMENTED".into()));
    let record = s.audited("NOT_IMPLEMENTED").await;
    assert_eq!(
        record.interaction_id.as_deref(),
        Some("GET /fhir/Observation")
    );

    let reply = s
        .raw(b"DELETE /fhir/Patient HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(outcome(&reply), (405, "NOT_IMPLEMENTED".into()));
    let record = s.audited("NOT_IMPLEMENTED").await;
    assert_eq!(
        record.interaction_id.as_deref(),
        Some("DELETE /fhir/Patient")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_get_408_and_are_audited() {
    let s = start(ListenerLimits {
        header_read_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let reply = s.raw(b"GET /fhir/metadata HTTP/1.1\r\nhost: mig").await;
    assert_eq!(outcome(&reply), (408, "BAD_REQUEST".into()));
    s.audited("BAD_REQUEST").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_and_headers_are_refused_and_audited() {
    let s = start(ListenerLimits {
        max_body_bytes: 4096,
        ..Default::default()
    })
    .await;
    let reply = s
        .raw(b"POST /fhir/Patient/$gpc.getstructuredrecord HTTP/1.1\r\nhost: mig.test\r\ncontent-length: 100000\r\n\r\n")
        .await;
    assert_eq!(outcome(&reply), (413, "BAD_REQUEST".into()));
    s.audited("BAD_REQUEST").await;

    let big = "x".repeat(20 * 1024);
    let reply = s
        .raw(
            format!("GET /fhir/metadata HTTP/1.1\r\nhost: mig.test\r\nx-big: {big}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert_eq!(parse_status(&reply), Some(431), "{reply:?}");
    s.audited("BAD_REQUEST").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_in_flight_get_429_and_are_audited() {
    let s = start(ListenerLimits {
        per_partner_concurrency: 1,
        ..Default::default()
    })
    .await;
    // One request holds the partner's only slot while its body is awaited.
    let mut holder = connect(s.app.addr, s.app.client_config(Some(&s.who)))
        .await
        .unwrap();
    holder
        .write_all(b"POST /fhir/Patient/$gpc.getstructuredrecord HTTP/1.1\r\nhost: mig.test\r\ncontent-length: 10\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = s
        .raw(b"GET /fhir/metadata HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(outcome(&reply), (429, "BAD_REQUEST".into()));
    s.audited("BAD_REQUEST").await;
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_on_an_open_connection_gets_an_audited_access_denied() {
    let s = start(ListenerLimits::default()).await;
    let mut tls = connect(s.app.addr, s.app.client_config(Some(&s.who)))
        .await
        .unwrap();
    let (status, _, _) = request_on(&mut tls, "/fhir/metadata").await.unwrap();
    // metadata without a token is released to a registered partner.
    assert_eq!(status, 200);
    let crl = s.ca.crl(&[s.who.serial], 7);
    mig::registry::install_crl(s.app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();
    let since = Instant::now();
    loop {
        let (status, _, body) = request_on(&mut tls, "/fhir/metadata").await.unwrap();
        if status == 403 {
            assert!(body.contains("ACCESS_DENIED"), "{body}");
            break;
        }
        assert!(since.elapsed() < Duration::from_millis(1200));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.audited("ACCESS_DENIED").await;
    assert!(closed_within(&mut tls, Duration::from_secs(2)).await);
}
