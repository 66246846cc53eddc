//! Listener limits: one misbehaving client gets the right status (or is dropped) on time, and
//! everyone else keeps being served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::time::{Duration, Instant};

use mig::listener::ListenerLimits;
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start_with(limits: ListenerLimits) -> (Appliance, Identity, Identity) {
    let ca = Issuer::root("Partner CA");
    let a = ca.client("a");
    let b = ca.client("b");
    let options = Options {
        limits,
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("AAA", &a), partner("BBB", &b)], options).await;
    (app, a, b)
}

/// Sends raw bytes on a fresh connection and reads the reply until EOF (bounded).
async fn raw_exchange(app: &Appliance, who: &Identity, request: &[u8]) -> String {
    let mut tls = connect(app.addr, app.client_config(Some(who)))
        .await
        .unwrap();
    // A refused oversized body may be answered and the connection closed before all of it is
    // sent, so the rest of the write can fail (broken pipe); the answer is read below either way.
    let _ = tls.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_dropped_on_time_while_others_are_served() {
    let limits = ListenerLimits {
        header_read_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (app, a, b) = start_with(limits).await;
    let slow = connect(app.addr, app.client_config(Some(&a)))
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nhost: mig.test\r\nx-slow: aaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Others are served meanwhile.
    for _ in 0..3 {
        let t = Instant::now();
        let exchange = get(app.addr, app.client_config(Some(&b)), "/")
            .await
            .unwrap();
        assert_eq!(exchange.status, 200);
        assert!(t.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut reply)).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&reply);
    assert_eq!(parse_status(&text), Some(408), "{text:?}");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3500),
        "dropped after {elapsed:?}"
    );
    trickle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (app, a, _) = start_with(ListenerLimits::default()).await;
    let big = "x".repeat(20 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: mig.test\r\nx-big: {big}\r\n\r\n");
    let reply = raw_exchange(&app, &a, request.as_bytes()).await;
    assert_eq!(parse_status(&reply), Some(431), "{reply:?}");
    // Headers just under the limit are fine.
    let ok = "x".repeat(15 * 1024);
    let request =
        format!("GET / HTTP/1.1\r\nhost: mig.test\r\nx-ok: {ok}\r\nconnection: close\r\n\r\n");
    let reply = raw_exchange(&app, &a, request.as_bytes()).await;
    assert_eq!(parse_status(&reply), Some(200), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_413() {
    let limits = ListenerLimits {
        max_body_bytes: 64 * 1024,
        ..Default::default()
    };
    let (app, a, _) = start_with(limits).await;
    // Declared too large: refused before reading it.
    let reply = raw_exchange(
        &app,
        &a,
        b"POST / HTTP/1.1\r\nhost: mig.test\r\ncontent-length: 10000000\r\n\r\n",
    )
    .await;
    assert_eq!(parse_status(&reply), Some(413), "{reply:?}");
    assert!(reply.contains("application/fhir+json"), "{reply:?}");

    // Chunked, no length given: refused once it passes the limit.
    let mut request =
        b"POST / HTTP/1.1\r\nhost: mig.test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        request.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        request.extend_from_slice(&[b'a'; 8192]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = raw_exchange(&app, &a, &request).await;
    assert_eq!(parse_status(&reply), Some(413), "{reply:?}");

    // Within the limit: the handler gets the whole body.
    let body = vec![b'a'; 60 * 1024];
    let mut request = format!(
        "POST / HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let reply = raw_exchange(&app, &a, &request).await;
    assert_eq!(parse_status(&reply), Some(200), "{reply:?}");
    assert!(reply.contains("body=61440"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partner_concurrency_over_the_limit_gets_429() {
    let limits = ListenerLimits {
        per_partner_concurrency: 2,
        ..Default::default()
    };
    let (app, a, b) = start_with(limits).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = app.addr;
            let config = app.client_config(Some(&a));
            tokio::spawn(async move { get(addr, config, "/sleep/1500").await.unwrap().status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = get(app.addr, app.client_config(Some(&a)), "/")
        .await
        .unwrap();
    assert_eq!(third.status, 429, "{third:?}");
    // Another partner is unaffected.
    let other = get(app.addr, app.client_config(Some(&b)), "/")
        .await
        .unwrap();
    assert_eq!(other.status, 200);
    for task in slow {
        assert_eq!(task.await.unwrap(), 200);
    }
    // Slots come back.
    assert_eq!(
        get(app.addr, app.client_config(Some(&a)), "/")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_and_others_keep_working() {
    let limits = ListenerLimits {
        max_connections: 2,
        ..Default::default()
    };
    let (app, a, _) = start_with(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = connect(app.addr, app.client_config(Some(&a)))
            .await
            .unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nhost: mig.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.unwrap();
        assert_eq!(parse_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
        held.push(tls);
    }
    let refused = get(app.addr, app.client_config(Some(&a)), "/").await;
    assert!(refused.is_err(), "{refused:?}");
    // The held connections still work.
    let tls = &mut held[0];
    tls.write_all(b"GET / HTTP/1.1\r\nhost: mig.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(parse_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
    // Freeing one lets a new client in.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(app.addr, app.client_config(Some(&a)), "/")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_at_the_handshake_timeout() {
    let limits = ListenerLimits {
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let (app, a, _) = start_with(limits).await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
        .await
        .expect("server kept a silent connection open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(
        get(app.addr, app.client_config(Some(&a)), "/")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let (app, a, _) = start_with(ListenerLimits::default()).await;
    let addr = app.addr;
    let config = app.client_config(Some(&a));
    let in_flight = tokio::spawn(async move { get(addr, config, "/sleep/800").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.shutdown.send(true).unwrap();
    let exchange = in_flight.await.unwrap().unwrap();
    assert_eq!(exchange.status, 200);
    let config = app.client_config(Some(&a));
    tokio::time::timeout(Duration::from_secs(3), app.handle)
        .await
        .unwrap()
        .unwrap();
    assert!(get(addr, config, "/").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_over_http2_get_431() {
    let (app, a, _) = start_with(ListenerLimits::default()).await;
    let config = client_config(&app.key.ca, Some(&a), rustls::ALL_VERSIONS, Some(b"h2"));
    let tls = connect(app.addr, config).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let big = "x".repeat(20 * 1024);
    let request = http::Request::get("https://mig.test/")
        .header("x-big", big)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 431);
    // The connection stays usable for a normal request.
    let request = http::Request::get("https://mig.test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
}
