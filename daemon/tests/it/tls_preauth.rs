//! Before authentication nobody can exhaust the box (SPEC §10): silent connections hold no
//! handshake slot, connections are capped per source address and per partner, and full
//! handshakes are rate-limited per source. Loopback only: the attackers connect from
//! 127.0.0.2 and up, the partner from 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use mig::listener::ListenerLimits;
use tls_support::*;
use tokio::io::AsyncReadExt;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Raises the soft open-file limit to the hard one: the test holds ~2,200 sockets (both ends).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= 2600,
        "the test needs ~2,600 file descriptors; RLIMIT_NOFILE is {soft}"
    );
}

/// The partner's whole path: TCP, full handshake, one request, answer.
async fn partner_gets_an_answer(app: &Appliance, who: &Identity) -> Duration {
    let started = Instant::now();
    let exchange = tokio::time::timeout(
        Duration::from_secs(5),
        get(app.addr, app.client_config(Some(who)), "/"),
    )
    .await
    .expect("partner not served within 5 s")
    .unwrap();
    assert_eq!(exchange.status, 200);
    assert!(
        exchange.body.starts_with("partner=RX6"),
        "{}",
        exchange.body
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_and_idle_connections_do_not_keep_a_partner_out() {
    raise_nofile();
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let rogue = ca.client("rogue");
    // Default limits, as migd runs them.
    let app = Appliance::start(
        &[&ca],
        &[partner("RX6", &who), partner("EVL", &rogue)],
        Options::default(),
    )
    .await;

    // 900 silent TCP connections, 60 from each of 15 addresses.
    let mut silent = Vec::new();
    for source in 2..17 {
        for _ in 0..60 {
            silent.push(tcp_from(app.addr, loopback(source)).await.unwrap());
        }
    }
    // 100 idle TLS connections of a registered partner, 10 from each of 10 addresses.
    let mut idle = Vec::new();
    let rogue_config = app.client_config(Some(&rogue));
    for source in 20..30 {
        for _ in 0..10 {
            let mut no_resumption = (*rogue_config).clone();
            no_resumption.resumption = rustls::client::Resumption::disabled();
            idle.push(
                connect_from(app.addr, loopback(source), no_resumption.into())
                    .await
                    .unwrap(),
            );
        }
    }
    assert_eq!(silent.len() + idle.len(), 1000);

    let took = partner_gets_an_answer(&app, &who).await;
    assert!(
        took < Duration::from_secs(2),
        "partner served after {took:?}"
    );

    // One source over its cap is turned away at accept, at once.
    let mut extra = Vec::new();
    for _ in 0..10 {
        extra.push(tcp_from(app.addr, loopback(2)).await.unwrap());
    }
    let mut closed = 0;
    for tcp in &mut extra {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 6,
        "only {closed} of 10 over-the-cap connections were closed"
    );
    let took = partner_gets_an_answer(&app, &who).await;
    assert!(
        took < Duration::from_secs(2),
        "partner served after {took:?}"
    );
    drop((silent, idle, extra));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_hold_no_handshake_slot_and_are_closed_after_the_hello_timeout() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        limits: ListenerLimits {
            max_concurrent_handshakes: 1,
            client_hello_timeout: Duration::from_millis(800),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tcp_from(app.addr, loopback(2)).await.unwrap());
    }
    // A client that sends a few bytes of a hello and stops holds nothing either.
    let mut trickle = tcp_from(app.addr, loopback(3)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut trickle, &[0x16, 0x03, 0x01])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = partner_gets_an_answer(&app, &who).await;
    assert!(took < Duration::from_millis(500), "partner waited {took:?}");
    let started = Instant::now();
    for tcp in silent.iter_mut().chain([&mut trickle]) {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
            .await
            .expect("silent connection kept open")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_and_per_partner_are_capped() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let greedy = ca.client("greedy");
    let options = Options {
        limits: ListenerLimits {
            max_connections_per_source: 3,
            max_connections_per_partner: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = Appliance::start(
        &[&ca],
        &[partner("RX6", &who), partner("GRD", &greedy)],
        options,
    )
    .await;
    // Per partner: two connections from two addresses; the third (a third address) is closed
    // after its handshake.
    let config = app.client_config(Some(&greedy));
    let mut held = Vec::new();
    for source in [10, 11] {
        let mut tls = connect_from(app.addr, loopback(source), config.clone())
            .await
            .unwrap();
        assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
        held.push(tls);
    }
    let mut third = connect_from(app.addr, loopback(12), config.clone())
        .await
        .unwrap();
    assert!(request_on(&mut third, "/").await.is_err());
    // Another partner is unaffected.
    partner_gets_an_answer(&app, &who).await;

    // Per source: three silent sockets from one address, the fourth is closed at accept.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tcp_from(app.addr, loopback(20)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = tcp_from(app.addr, loopback(20)).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf))
        .await
        .expect("fourth connection from one source kept open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // From another address a client is served.
    let mut tls = connect_from(app.addr, loopback(21), app.client_config(Some(&who)))
        .await
        .unwrap();
    assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_handshakes_are_rate_limited_per_source_and_resumptions_are_not() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        limits: ListenerLimits {
            handshake_rate_per_source: 1,
            handshake_burst_per_source: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    let fresh = || app.client_config(Some(&who));
    let source = loopback(2);
    let get_from = |config| async move {
        let mut tls = connect_from(app.addr, source, config).await?;
        let (status, _, _) = request_on(&mut tls, "/").await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        Ok::<_, std::io::Error>((status, resumed))
    };
    let resuming = fresh();
    assert_eq!(get_from(resuming.clone()).await.unwrap(), (200, false));
    assert_eq!(get_from(resuming.clone()).await.unwrap(), (200, true));
    assert_eq!(get_from(fresh()).await.unwrap(), (200, false));
    // The burst is spent: the next full handshake from this source is refused…
    assert!(get_from(fresh()).await.is_err());
    // …a resumption is not a full handshake…
    assert_eq!(get_from(resuming.clone()).await.unwrap(), (200, true));
    // …another source has its own allowance…
    let mut tls = connect_from(app.addr, loopback(3), fresh()).await.unwrap();
    assert_eq!(request_on(&mut tls, "/").await.unwrap().0, 200);
    // …and the rate refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_from(fresh()).await.unwrap(), (200, false));
}
