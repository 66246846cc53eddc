//! The partner listener's TLS end to end against a running migd on a software TPM: the
//! handshake is signed by the TPM key behind the installed certificate, both ALPN protocols
//! serve, bad client certificates are refused in the handshake, and partner and CRL changes
//! made with `migctl` reach the running daemon without a restart or a signal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::e2e_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_common::*;
use hardware_tests::appliance::{TestAppliance, AMBULANCE};
use hardware_tests::load::{client_config_with_alpn, send_once, ClientTls, OneShot};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

fn metadata() -> http::Request<bytes::Bytes> {
    http::Request::get("/fhir/metadata")
        .body(bytes::Bytes::new())
        .unwrap()
}

async fn metadata_with(
    app: &TestAppliance,
    config: Arc<rustls::ClientConfig>,
) -> Result<OneShot, String> {
    send_once(app.address(), config, "localhost", metadata()).await
}

fn config(tls: &ClientTls) -> Arc<rustls::ClientConfig> {
    client_config_with_alpn(tls, &[b"http/1.1"]).unwrap()
}

/// The connection is refused by the server's TLS alert `alert`, before any HTTP answer.
fn assert_refused_in_handshake(result: Result<OneShot, String>, alert: &str) {
    match result {
        Ok(response) => panic!(
            "the server answered HTTP {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        ),
        Err(e) => {
            eprintln!("refused: {e}");
            assert!(
                e.contains(&format!("received fatal alert: {alert}")),
                "not refused with {alert}: {e}"
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_is_signed_by_the_tpm_key_behind_the_installed_certificate() {
    let app = appliance(0).await;
    let response = metadata_with(&app, config(&app.partner_tls(AMBULANCE)))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let chain_pem = std::fs::read(app.app.config.state_dir.join("tls/chain.pem")).unwrap();
    let installed: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        response.server_certs.first(),
        installed.first(),
        "the client saw another certificate than state/tls/chain.pem's leaf"
    );
    let keys: serde_json::Value = serde_json::from_slice(
        &std::fs::read(app.app.config.state_dir.join("public-keys.json")).unwrap(),
    )
    .unwrap();
    let tpm_spki = hex::decode(keys["tls_spki_der_hex"].as_str().unwrap()).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&response.server_certs[0]).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        &tpm_spki[..],
        "the leaf's key is not the TPM TLS key"
    );
    // rustls verified the CertificateVerify signature against that key: the handshake was
    // signed by the TPM-held key (fixedTPM, never exported).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_both_serve() {
    let app = appliance(0).await;
    let tls = app.partner_tls(AMBULANCE);
    for (alpn, expected) in [(&b"h2"[..], "h2"), (&b"http/1.1"[..], "http/1.1")] {
        let response = metadata_with(&app, client_config_with_alpn(&tls, &[alpn]).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{expected}: {e}"));
        assert_eq!(response.alpn.as_deref(), Some(expected.as_bytes()));
        assert_eq!(response.status, 200, "{expected}");
        assert_eq!(body_json(&response)["resourceType"], "CapabilityStatement");
        assert_valid_fhir(&response.body);
    }
    // A client offering both gets h2.
    let response = metadata_with(
        &app,
        client_config_with_alpn(&tls, &[b"h2", b"http/1.1"]).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_a_certificate_is_refused_in_the_handshake() {
    let app = appliance(0).await;
    let tls = app.partner_tls(AMBULANCE);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert_refused_in_handshake(
        metadata_with(&app, Arc::new(config)).await,
        "CertificateRequired",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_an_unknown_ca_is_refused_in_the_handshake() {
    let app = appliance(0).await;
    // Same CA name as the trusted one, different key.
    let (cert, key) = issue_client(&stranger_ca(), "Demo Ambulance Service", 42, -1, 30);
    assert_refused_in_handshake(
        metadata_with(&app, config(&tls_for(&app, cert, key))).await,
        "UnknownCA",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_is_refused_in_the_handshake() {
    let app = appliance(0).await;
    let (cert, key) = issue_client(&partner_ca(&app), "Expired partner", 43, -60, -1);
    assert_refused_in_handshake(
        metadata_with(&app, config(&tls_for(&app, cert, key))).await,
        "CertificateExpired",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partner_is_served_within_a_second_without_restart() {
    let app = appliance(0).await;
    let pid = app.pid();
    let (cert, key) = issue_client(&partner_ca(&app), "Test acute trust", 44, -1, 30);
    let tls = tls_for(&app, cert.clone(), key);
    // Trusted CA, not registered: the handshake passes, the API refuses.
    let before = metadata_with(&app, config(&tls)).await.unwrap();
    assert_eq!(before.status, 403);
    let path = write_pki(&app, "acute.crt", &cert);
    migctl_ok(
        &app,
        &[
            "partner",
            "add",
            "--ods",
            "RTEST",
            "--name",
            "Test acute trust",
            "--type",
            "acute",
            "--cert",
            path.to_str().unwrap(),
            "--sections",
            "all",
            "--roles",
            "*",
        ],
    );
    let added = Instant::now();
    loop {
        let response = metadata_with(&app, config(&tls)).await.unwrap();
        if response.status == 200 {
            break;
        }
        assert!(
            added.elapsed() < Duration::from_millis(2000),
            "new partner not served {:?} after partner add",
            added.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("new partner served {:?} after partner add", added.elapsed());
    assert_eq!(app.pid(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_revoking_a_partner_refuses_its_new_connections() {
    let app = appliance(0).await;
    let pid = app.pid();
    let serial = 4_242_424u64;
    let tls = add_partner(&app, "RREV1", "acute", "all", "*", serial);
    let added = Instant::now();
    while metadata_with(&app, config(&tls)).await.unwrap().status != 200 {
        assert!(
            added.elapsed() < Duration::from_secs(3),
            "partner never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let ca = partner_ca(&app);
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(2u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(serial),
            revocation_time: now - time::Duration::minutes(1),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap();
    let path = write_pki(&app, "partner-ca-2.crl", &crl.pem().unwrap());
    migctl_ok(&app, &["crl", "install", path.to_str().unwrap()]);
    let installed = Instant::now();
    loop {
        match metadata_with(&app, config(&tls)).await {
            Err(e) => {
                assert!(
                    e.contains("received fatal alert: CertificateRevoked"),
                    "{e}"
                );
                break;
            }
            // A handshake that began under the previous snapshot is refused at its request.
            Ok(response) if response.status == 403 => {
                assert!(String::from_utf8_lossy(&response.body).contains("ACCESS_DENIED"));
                break;
            }
            Ok(response) => assert_eq!(response.status, 200),
        }
        assert!(
            installed.elapsed() < Duration::from_millis(2000),
            "revoked partner still served {:?} after crl install",
            installed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "revoked partner refused {:?} after crl install",
        installed.elapsed()
    );
    // Other partners of the same CA are unaffected, and migd never restarted.
    let other = metadata_with(&app, config(&app.partner_tls(AMBULANCE)))
        .await
        .unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(app.pid(), pid);
}
