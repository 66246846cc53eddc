//! Who gets through the partner and upstream handshakes (SPEC §3, §5 step 1): real sockets,
//! real rcgen certificates, a rustls client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::time::Duration;

use rustls::AlertDescription;
use tls_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_partner_reaches_handler_with_its_identity() {
    let ca = Issuer::root("Partner CA");
    let ambulance = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &ambulance)], Options::default()).await;
    let exchange = get(
        app.addr,
        app.client_config(Some(&ambulance)),
        "/fhir/metadata",
    )
    .await
    .unwrap();
    assert_eq!(exchange.status, 200);
    assert!(
        exchange
            .body
            .starts_with("partner=RX6 upstream=none protocol=h1"),
        "{}",
        exchange.body
    );
    assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_with_the_same_names_is_not_the_partner() {
    // Two trusted CAs with the same name; the impostor's certificate has the partner's subject.
    let ca = Issuer::root("Partner CA");
    let other = Issuer::root("Partner CA");
    let who = ca.client("ooh");
    let impostor = other.client("ooh");
    let (real, fake) = (
        mig::registry::cert_identity(&who.chain[0]).unwrap(),
        mig::registry::cert_identity(&impostor.chain[0]).unwrap(),
    );
    assert_eq!((&real.subject, &real.issuer), (&fake.subject, &fake.issuer));
    let options = Options {
        poll: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca, &other], &[], options).await;
    // A partner registered by those names (written by hand: no tool offers it) does not apply.
    let mut record = toml::to_string(&partner("NWX", &who)).unwrap();
    record.truncate(record.find("[identity]").unwrap());
    record.push_str(&format!(
        "[identity.subject_issuer]\nsubject = {:?}\nissuer = {:?}\n",
        real.subject, real.issuer
    ));
    std::fs::create_dir_all(app.path("partners")).unwrap();
    std::fs::write(app.path("partners/NWX.toml"), record).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    for identity in [&impostor, &who] {
        let exchange = get(app.addr, app.client_config(Some(identity)), "/")
            .await
            .unwrap();
        assert!(
            exchange.body.starts_with("partner=none"),
            "{}",
            exchange.body
        );
    }
    // Registered by key, the real one is the partner and the impostor still is not.
    mig::registry::remove_partner(app.state(), "NWX").ok();
    std::fs::remove_file(app.path("partners/NWX.toml")).ok();
    let app = Appliance::start(&[&ca, &other], &[partner("NWX", &who)], Options::default()).await;
    let body = |identity| {
        let config = app.client_config(Some(identity));
        async move { get(app.addr, config, "/").await.unwrap().body }
    };
    assert!(body(&who).await.starts_with("partner=NWX"));
    assert!(body(&impostor).await.starts_with("partner=none"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_certificate_reaches_handler_without_partner() {
    let ca = Issuer::root("Partner CA");
    let stranger = ca.client("stranger");
    let app = Appliance::start(&[&ca], &[], Options::default()).await;
    let exchange = get(app.addr, app.client_config(Some(&stranger)), "/")
        .await
        .unwrap();
    assert_eq!(exchange.status, 200);
    assert!(
        exchange.body.starts_with("partner=none"),
        "{}",
        exchange.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_refused_in_handshake() {
    let ca = Issuer::root("Partner CA");
    let app = Appliance::start(&[&ca], &[], Options::default()).await;
    let result = get(app.addr, app.client_config(None), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateRequired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_unknown_ca_is_refused_in_handshake() {
    let ca = Issuer::root("Partner CA");
    let unknown = Issuer::root("Somebody Else CA").client("ambulance");
    let rogue = Issuer::root("Partner CA"); // same name, different key
    let mallory = rogue.client("ambulance");
    let app = Appliance::start(
        &[&ca],
        &[partner("RX6", &mallory), partner("UNK", &unknown)],
        Options::default(),
    )
    .await;
    let result = get(app.addr, app.client_config(Some(&unknown)), "/").await;
    assert_refused(result, Some(AlertDescription::UnknownCA));
    // The issuer name matches but the signature does not.
    let result = get(app.addr, app.client_config(Some(&mallory)), "/").await;
    assert_refused(result, Some(AlertDescription::DecryptError));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_partner_ca_installed_refuses_everyone() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[], &[partner("RX6", &who)], Options::default()).await;
    let result = get(app.addr, app.client_config(Some(&who)), "/").await;
    assert_refused(result, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_not_yet_valid_certificates_are_refused_in_handshake() {
    let ca = Issuer::root("Partner CA");
    let expired = ca.client_valid("old", -30, -1);
    let future = ca.client_valid("new", 2, 30);
    let app = Appliance::start(
        &[&ca],
        &[partner("OLD", &expired), partner("NEW", &future)],
        Options::default(),
    )
    .await;
    let result = get(app.addr, app.client_config(Some(&expired)), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateExpired));
    let result = get(app.addr, app.client_config(Some(&future)), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateExpired));
}

fn install_crl(app: &Appliance, crl: &rcgen::CertificateRevocationList, issuers: Option<&str>) {
    mig::registry::install_crl(
        app.state(),
        crl.pem().unwrap().as_bytes(),
        issuers.map(str::as_bytes),
    )
    .unwrap();
    app.reloader.reload().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_end_entity_certificate_is_refused_in_handshake() {
    let ca = Issuer::root("Partner CA");
    let good = ca.client("good");
    let bad = ca.client("bad");
    let app = Appliance::start(
        &[&ca],
        &[partner("BAD", &bad), partner("GUD", &good)],
        Options::default(),
    )
    .await;
    assert_eq!(
        get(app.addr, app.client_config(Some(&bad)), "/")
            .await
            .unwrap()
            .status,
        200
    );
    install_crl(&app, &ca.crl(&[bad.serial], 7), None);
    let result = get(app.addr, app.client_config(Some(&bad)), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateRevoked));
    let exchange = get(app.addr, app.client_config(Some(&good)), "/")
        .await
        .unwrap();
    assert!(exchange.body.starts_with("partner=GUD"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_under_revoked_intermediate_is_refused_in_handshake() {
    let root = Issuer::root("Partner Root");
    let kept = root.intermediate("Kept Issuing CA");
    let dropped = root.intermediate("Dropped Issuing CA");
    let good = kept.client("good");
    let bad = dropped.client("bad");
    let app = Appliance::start(
        &[&root],
        &[partner("BAD", &bad), partner("GUD", &good)],
        Options::default(),
    )
    .await;
    assert_eq!(
        get(app.addr, app.client_config(Some(&bad)), "/")
            .await
            .unwrap()
            .status,
        200
    );
    install_crl(&app, &root.crl(&[dropped.serial], 7), None);
    let result = get(app.addr, app.client_config(Some(&bad)), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateRevoked));
    assert_eq!(
        get(app.addr, app.client_config(Some(&good)), "/")
            .await
            .unwrap()
            .status,
        200
    );

    // A leaf revoked by its intermediate's CRL (installed with the intermediate to check it).
    let also_bad = kept.client("also-bad");
    mig::registry::add_partner(app.state(), &partner("ABD", &also_bad)).unwrap();
    install_crl(&app, &kept.crl(&[also_bad.serial], 7), Some(&kept.pem()));
    let result = get(app.addr, app.client_config(Some(&also_bad)), "/").await;
    assert_refused(result, Some(AlertDescription::CertificateRevoked));
    assert_eq!(
        get(app.addr, app.client_config(Some(&good)), "/")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_crl_refuses_partners_of_its_ca_unless_set_to_warn() {
    let ca = Issuer::root("Partner CA");
    let other_ca = Issuer::root("Other CA");
    let who = ca.client("ambulance");
    let other = other_ca.client("other");
    let stale = ca.crl(&[], -1);
    for (policy, refused) in [
        (mig::tls::CrlExpiredPolicy::Refuse, true),
        (mig::tls::CrlExpiredPolicy::Warn, false),
    ] {
        let options = Options {
            settings: mig::tls::TlsSettings {
                crl_expired: policy,
                ..Default::default()
            },
            ..Default::default()
        };
        let app = Appliance::start(&[&ca, &other_ca], &[partner("RX6", &who)], options).await;
        install_crl(&app, &stale, None);
        let result = get(app.addr, app.client_config(Some(&who)), "/").await;
        if refused {
            assert_refused(result, None);
        } else {
            assert_eq!(result.unwrap().status, 200);
        }
        // Partners of a CA without an installed CRL are unaffected either way.
        assert_eq!(
            get(app.addr, app.client_config(Some(&other)), "/")
                .await
                .unwrap()
                .status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_refused_unless_enabled() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let tls12_only = client_config(&app.key.ca, Some(&who), &[&rustls::version::TLS12], None);
    let result = get(app.addr, tls12_only, "/").await;
    assert_refused(result, Some(AlertDescription::ProtocolVersion));

    let options = Options {
        settings: mig::tls::TlsSettings {
            tls12: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    let tls12_only = client_config(&app.key.ca, Some(&who), &[&rustls::version::TLS12], None);
    let exchange = get(app.addr, tls12_only, "/").await.unwrap();
    assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(
        exchange.suite,
        Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)
    );
    assert!(exchange.body.starts_with("partner=RX6"));
    // TLS 1.3 is still preferred when the client offers both.
    let exchange = get(app.addr, app.client_config(Some(&who)), "/")
        .await
        .unwrap();
    assert_eq!(exchange.version, Some(rustls::ProtocolVersion::TLSv1_3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn() {
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], Options::default()).await;
    let config = client_config(&app.key.ca, Some(&who), rustls::ALL_VERSIONS, Some(b"h2"));
    let tls = connect(app.addr, config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("https://mig.test/fhir/metadata")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"partner=RX6 upstream=none protocol=h2"),
        "{body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_listener_accepts_only_pinned_in_date_keys() {
    let ca = Issuer::root("Partner CA");
    let partner_cert = ca.client("ambulance");
    let clinical = Issuer::root("Clinical System").client("emis");
    let stale = Issuer::root("Clinical System").client_valid("old", -30, -1);
    let app = Appliance::start(&[&ca], &[partner("RX6", &partner_cert)], Options::default()).await;
    mig::registry::add_upstream(app.state(), "emis", clinical.cert_pem.as_bytes()).unwrap();
    mig::registry::add_upstream(app.state(), "old", stale.cert_pem.as_bytes()).unwrap();
    app.reloader.reload().unwrap();

    let exchange = get(
        app.upstream_addr,
        app.client_config(Some(&clinical)),
        "/upstream",
    )
    .await
    .unwrap();
    assert!(
        exchange.body.starts_with("partner=none upstream=emis"),
        "{}",
        exchange.body
    );
    // A partner certificate, valid on the partner listener, is not an upstream.
    let result = get(
        app.upstream_addr,
        app.client_config(Some(&partner_cert)),
        "/upstream",
    )
    .await;
    assert_refused(result, None);
    let result = get(
        app.upstream_addr,
        app.client_config(Some(&stale)),
        "/upstream",
    )
    .await;
    assert_refused(result, Some(AlertDescription::CertificateExpired));
    let result = get(app.upstream_addr, app.client_config(None), "/upstream").await;
    assert_refused(result, Some(AlertDescription::CertificateRequired));
    // And the upstream's certificate is not a partner.
    let result = get(app.addr, app.client_config(Some(&clinical)), "/").await;
    assert_refused(result, None);
}

#[test]
fn certificate_for_another_key_is_a_clear_error() {
    let app_key = ApplianceKey::new();
    let other: std::sync::Arc<dyn mig::keys::Signer> =
        mig::keys::InMemorySigner::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = mig::registry::install_appliance_chain(
        dir.path(),
        app_key.chain_pem.as_bytes(),
        other.as_ref(),
        std::time::SystemTime::now(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not hold this appliance's TLS key"),
        "{err}"
    );

    // Written behind migctl's back, the reloader refuses it too.
    mig::registry::write_atomic(
        &dir.path().join("tls/chain.pem"),
        app_key.chain_pem.as_bytes(),
    )
    .unwrap();
    let err = mig::tls::Reloader::new(dir.path(), other, Default::default()).unwrap_err();
    // The cause is the source; a person sees the chain.
    let err = mig::error::Chain(&err).to_string();
    assert!(
        err.contains("does not hold this appliance's TLS key"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let err = mig::tls::Reloader::new(empty.path(), app_key.signer.clone(), Default::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("no appliance certificate"),
        "{err}"
    );
}

/// The server runtime has one worker. The clients run on their own runtime in another thread,
/// so only the server can stall them: if a slow (TPM-like) signature blocked the worker, the
/// established connection could not be served until the signature finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn slow_signature_does_not_stall_established_connections() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        sign_delay: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    let config = app.client_config(Some(&who));
    let addr = app.addr;
    let clients = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut established = connect(addr, config.clone()).await.unwrap();
            // A second client starts a full handshake: the server spends 1.5 s signing.
            let mut no_resumption = (*config).clone();
            no_resumption.resumption = rustls::client::Resumption::disabled();
            let newcomer =
                tokio::spawn(
                    async move { get(addr, std::sync::Arc::new(no_resumption), "/").await },
                );
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            established
                .write_all(b"GET / HTTP/1.1\r\nhost: mig.test\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let n = established.read(&mut buf).await.unwrap();
            let waited = started.elapsed();
            assert_eq!(parse_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
            assert_eq!(newcomer.await.unwrap().unwrap().status, 200);
            waited
        })
    });
    let waited = tokio::task::spawn_blocking(move || clients.join().unwrap())
        .await
        .unwrap();
    assert!(
        waited < Duration::from_millis(700),
        "established connection waited {waited:?} behind a signature"
    );
}
