//! Revocation reaches open connections (SPEC §5 step 1, §9): once a CRL, a CA removal, a
//! partner removal or the certificate's own expiry takes effect, the next request on an
//! already open HTTP/1.1 or HTTP/2 connection gets 403 and the connection is closed; and every
//! connection ends at its maximum age.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mig::listener::ListenerLimits;
use tls_support::*;

fn polled() -> Options {
    Options {
        poll: Some(Duration::from_millis(200)),
        ..Default::default()
    }
}

/// Sends requests on `tls` until one is refused with 403 (which must happen within `within`
/// of `since`), then checks the server closed the connection.
async fn refused_then_closed(tls: &mut TlsStream, since: Instant, within: Duration) {
    loop {
        let (status, head, body) = request_on(tls, "/").await.unwrap();
        if status == 403 {
            assert!(body.contains("OperationOutcome"), "{body}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            since.elapsed() < within,
            "open connection still served {:?} after the change: {body}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_within(tls, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_revoking_a_connected_certificate_refuses_its_next_http1_request_and_closes() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], polled()).await;
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    let (status, _, body) = request_on(&mut tls, "/").await.unwrap();
    assert_eq!((status, body.starts_with("partner=RX6")), (200, true));

    let crl = ca.crl(&[who.serial], 7);
    mig::registry::install_crl(app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();
    refused_then_closed(&mut tls, Instant::now(), Duration::from_millis(1200)).await;
    // And a new connection is refused in the handshake.
    assert!(get(app.addr, app.client_config(Some(&who)), "/")
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_revoking_a_connected_certificate_refuses_its_next_http2_request_and_closes() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], polled()).await;
    let config = client_config(&app.key.ca, Some(&who), rustls::ALL_VERSIONS, Some(b"h2"));
    let tls = connect(app.addr, config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let get = || {
        http::Request::get("https://mig.test/")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);

    let crl = ca.crl(&[who.serial], 7);
    mig::registry::install_crl(app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();
    let since = Instant::now();
    loop {
        let response = sender.send_request(get()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status == 403 {
            assert!(String::from_utf8_lossy(&body).contains("OperationOutcome"));
            break;
        }
        assert_eq!(status, 200);
        assert!(
            since.elapsed() < Duration::from_millis(1200),
            "h2 connection still served after the CRL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server ends the connection (GOAWAY): the client's connection task finishes.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("h2 connection kept open after the refusal")
        .unwrap()
        .ok();
    assert!(sender.send_request(get()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_partner_ca_refuses_the_next_request_on_an_open_connection() {
    let ca = Issuer::root("Partner CA");
    let other = Issuer::root("Other CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca, &other], &[partner("RX6", &who)], polled()).await;
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(ca.der()))
    };
    std::fs::remove_file(app.path(&format!("trust/{}.pem", &hash[..16]))).unwrap();
    refused_then_closed(&mut tls, Instant::now(), Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_partner_ends_its_open_connection_after_one_answer() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], polled()).await;
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
    mig::registry::remove_partner(app.state(), "RX6").unwrap();
    let since = Instant::now();
    loop {
        let (status, head, body) = request_on(&mut tls, "/").await.unwrap();
        assert_eq!(status, 200);
        if body.starts_with("partner=none") {
            // The handler (the API: 403 ACCESS_DENIED, audited) saw no partner; the
            // connection is not kept for more.
            assert!(head.to_ascii_lowercase().contains("connection: close"));
            break;
        }
        assert!(since.elapsed() < Duration::from_millis(1200));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_within(&mut tls, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_on_an_open_connection_is_refused_from_then_on() {
    let ca = Issuer::root("Partner CA");
    let now = time::OffsetDateTime::now_utc();
    let who = ca.client_between(
        "short",
        now - time::Duration::days(1),
        now + time::Duration::seconds(3),
    );
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
    let expires = std::time::UNIX_EPOCH
        + Duration::from_secs(
            u64::try_from((now + time::Duration::seconds(3)).unix_timestamp()).unwrap(),
        );
    let wait = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(1100)).await;
    let (status, head, _) = request_on(&mut tls, "/").await.unwrap();
    assert_eq!(status, 403, "{head}");
    assert!(closed_within(&mut tls, Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_at_their_maximum_age() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        limits: ListenerLimits {
            max_connection_age: Duration::from_secs(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    // HTTP/1.1, kept busy so the idle timeout is not what closes it.
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    let opened = Instant::now();
    while request_on(&mut tls, "/").await.is_ok() {
        assert!(opened.elapsed() < Duration::from_secs(3), "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened.elapsed() >= Duration::from_millis(900));

    // HTTP/2 with the client's pings keeping it alive.
    let config = client_config(&app.key.ca, Some(&who), rustls::ALL_VERSIONS, Some(b"h2"));
    let tls = connect(app.addr, config).await.unwrap();
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true);
    let (_sender, conn) = builder
        .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    let opened = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("h2 connection outlived its maximum age")
        .ok();
    assert!(opened.elapsed() >= Duration::from_millis(800));
}
