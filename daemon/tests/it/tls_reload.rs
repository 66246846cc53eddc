//! Hot reload (SPEC §9, §10): changes apply without a restart, broken files are rejected while
//! the old snapshot keeps serving, and a CRL change ends session resumption.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::time::{Duration, Instant};

use rustls::AlertDescription;
use tls_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_added_on_disk_applies_within_a_second_without_signal() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        poll: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[], options).await;
    let config = app.client_config(Some(&who));
    assert!(get(app.addr, config.clone(), "/")
        .await
        .unwrap()
        .body
        .starts_with("partner=none"));

    mig::registry::add_partner(app.state(), &partner("RX6", &who)).unwrap();
    let added = Instant::now();
    loop {
        let body = get(app.addr, config.clone(), "/").await.unwrap().body;
        if body.starts_with("partner=RX6") {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_secs(1),
            "not applied within a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // And removal too.
    mig::registry::remove_partner(app.state(), "RX6").unwrap();
    let removed = Instant::now();
    while !get(app.addr, config.clone(), "/")
        .await
        .unwrap()
        .body
        .starts_with("partner=none")
    {
        assert!(
            removed.elapsed() < Duration::from_secs(1),
            "removal not applied within a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_call_applies_a_new_partner_immediately() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[], Options::default()).await;
    mig::registry::add_partner(app.state(), &partner("RX6", &who)).unwrap();
    let before = app.reloader.current().generation;
    let snapshot = app.reloader.reload().unwrap();
    assert_eq!(snapshot.generation, before + 1);
    let exchange = get(app.addr, app.client_config(Some(&who)), "/")
        .await
        .unwrap();
    assert!(
        exchange.body.starts_with("partner=RX6"),
        "{}",
        exchange.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_skips_each_broken_file_and_applies_the_rest() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let newcomer = ca.client("newcomer");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let config = app.client_config(Some(&who));
    let served = |body: &str, ods: &str| body.starts_with(&format!("partner={ods}"));

    // A valid new partner alongside a broken one: the new one applies, the broken one is
    // reported by name and line.
    mig::registry::add_partner(app.state(), &partner("NEW", &newcomer)).unwrap();
    let broken = app.path("partners/BRK.toml");
    std::fs::write(&broken, "[agreement]\nods = \"BRK\"\nflavour = \"x\"\n").unwrap();
    let snapshot = app.reloader.reload().unwrap();
    assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
    let err = snapshot.problems[0].to_string();
    assert!(
        err.contains("partners/BRK.toml") && err.contains("line"),
        "{err}"
    );
    let body = get(app.addr, app.client_config(Some(&newcomer)), "/")
        .await
        .unwrap()
        .body;
    assert!(served(&body, "NEW"), "{body}");
    assert!(served(
        &get(app.addr, config.clone(), "/").await.unwrap().body,
        "RX6"
    ));
    std::fs::remove_file(&broken).unwrap();

    // A partner file whose name is not its ODS code.
    std::fs::copy(app.path("partners/RX6.toml"), app.path("partners/RX7.toml")).unwrap();
    let snapshot = app.reloader.reload().unwrap();
    let err = snapshot.problems[0].to_string();
    assert!(err.contains("RX7.toml") && err.contains("ODS"), "{err}");
    assert!(served(
        &get(app.addr, config.clone(), "/").await.unwrap().body,
        "RX6"
    ));
    std::fs::remove_file(app.path("partners/RX7.toml")).unwrap();

    // A broken CA file is not trusted, the others still are; a broken appliance chain leaves
    // the previous one serving. Each is reported by name.
    for file in ["trust/garbage.pem", "tls/chain.pem"] {
        let path = app.path(file);
        let original = std::fs::read(&path).ok();
        std::fs::write(
            &path,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let snapshot = app.reloader.reload().unwrap();
        assert!(
            snapshot
                .problems
                .iter()
                .any(|p| p.to_string().contains(file)),
            "{file}: {:?}",
            snapshot.problems
        );
        assert!(
            served(
                &get(app.addr, config.clone(), "/").await.unwrap().body,
                "RX6"
            ),
            "{file}"
        );
        match original {
            Some(original) => std::fs::write(&path, original).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }

    // A CRL file nobody can read and that never applied could revoke anyone: fail closed, no
    // partner CA is trusted until it is fixed.
    std::fs::create_dir_all(app.path("crl")).unwrap();
    std::fs::write(app.path("crl/garbage.crl"), b"\x30\x03\x02\x01\x00").unwrap();
    let snapshot = app.reloader.reload().unwrap();
    assert!(snapshot
        .problems
        .iter()
        .any(|p| p.to_string().contains("crl/garbage.crl")));
    assert_refused(get(app.addr, config.clone(), "/").await, None);
    std::fs::remove_file(app.path("crl/garbage.crl")).unwrap();

    // Fixed: nothing left to report.
    let snapshot = app.reloader.reload().unwrap();
    assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
    assert!(served(
        &get(app.addr, config.clone(), "/").await.unwrap().body,
        "RX6"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_skips_a_broken_file_and_reports_it_until_it_is_gone() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        poll: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    let generation = app.reloader.current().generation;
    std::fs::write(app.path("partners/BRK.toml"), "this is not toml = = =").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let snapshot = app.reloader.current();
    assert_eq!(snapshot.generation, generation + 1);
    assert!(snapshot.problems[0].path.ends_with("partners/BRK.toml"));
    let exchange = get(app.addr, app.client_config(Some(&who)), "/")
        .await
        .unwrap();
    assert!(exchange.body.starts_with("partner=RX6"));
    std::fs::remove_file(app.path("partners/BRK.toml")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.reloader.current().generation, generation + 2);
    assert!(app.reloader.current().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partner_cannot_resume_a_session_from_before_the_crl() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    // One ClientConfig throughout: it holds the session cache (TLS 1.3 tickets).
    let config = app.client_config(Some(&who));

    let first = get(app.addr, config.clone(), "/").await.unwrap();
    assert!(!first.resumed);
    let second = get(app.addr, config.clone(), "/").await.unwrap();
    assert!(
        second.resumed,
        "the client should resume; otherwise this test proves nothing"
    );

    // A partner-only change keeps the TLS configuration, so sessions still resume.
    let other = ca.client("other");
    mig::registry::add_partner(app.state(), &partner("OTH", &other)).unwrap();
    app.reloader.reload().unwrap();
    let third = get(app.addr, config.clone(), "/").await.unwrap();
    assert!(third.resumed);

    let crl = ca.crl(&[who.serial], 7);
    mig::registry::install_crl(app.state(), crl.pem().unwrap().as_bytes(), None).unwrap();
    app.reloader.reload().unwrap();
    let result = get(app.addr, config.clone(), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateRevoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connection_survives_a_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let mut tls = connect(app.addr, app.client_config(Some(&who)))
        .await
        .unwrap();
    tls.write_all(b"GET /a HTTP/1.1\r\nhost: mig.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert_eq!(parse_status(&String::from_utf8_lossy(&buf[..n])), Some(200));

    // Trust change: a new TLS configuration for new connections only.
    let other = Issuer::root("Another CA");
    mig::registry::add_trust_ca(app.state(), other.pem().as_bytes()).unwrap();
    app.reloader.reload().unwrap();

    tls.write_all(b"GET /b HTTP/1.1\r\nhost: mig.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert_eq!(parse_status(&text), Some(200), "{text}");
    assert!(text.contains("partner=RX6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_appliance_certificate_does_not_block_partner_changes() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[], Options::default()).await;
    // migctl refuses to install an expired chain...
    let expired = app.key.chain_valid(-30, -1);
    let err = mig::registry::install_appliance_chain(
        app.state(),
        expired.as_bytes(),
        app.key.signer.as_ref(),
        std::time::SystemTime::now(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // ...but if the installed one runs out, reloads of everything else still apply.
    mig::registry::write_atomic(&app.path("tls/chain.pem"), expired.as_bytes()).unwrap();
    mig::registry::add_partner(app.state(), &partner("RX6", &who)).unwrap();
    let snapshot = app.reloader.reload().unwrap();
    assert_eq!(snapshot.partners.partners().len(), 1);
}
