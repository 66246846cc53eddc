//! Change detectors: pin the TLS versions, cipher suites, key exchange groups and signature
//! schemes the appliance offers, so a dependency bump cannot silently change them. If one of
//! these fails, decide deliberately, then update the test and SECURITY.md together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::tls_support;

use std::sync::Arc;

use mig::tls::{crypto_provider, protocol_versions, TlsSettings, TpmSigningKey};
use rustls::crypto::ring as ring_provider;
use rustls::sign::SigningKey;
use rustls::{CipherSuite, NamedGroup, ProtocolVersion, SignatureScheme};
use tls_support::*;

fn tls12_on() -> TlsSettings {
    TlsSettings {
        tls12: true,
        ..Default::default()
    }
}

#[test]
fn protocol_versions_are_pinned() {
    let versions = |s: &TlsSettings| -> Vec<ProtocolVersion> {
        protocol_versions(s).iter().map(|v| v.version).collect()
    };
    assert_eq!(
        versions(&TlsSettings::default()),
        [ProtocolVersion::TLSv1_3]
    );
    assert_eq!(
        versions(&tls12_on()),
        [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
    );
}

#[test]
fn cipher_suites_are_pinned() {
    let suites = |s: &TlsSettings| -> Vec<CipherSuite> {
        crypto_provider(s)
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect()
    };
    let tls13 = [
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    assert_eq!(suites(&TlsSettings::default()), tls13);
    let mut with12 = tls13.to_vec();
    with12.extend([
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]);
    assert_eq!(suites(&tls12_on()), with12);
}

#[test]
fn key_exchange_groups_are_pinned() {
    for settings in [TlsSettings::default(), tls12_on()] {
        let groups: Vec<NamedGroup> = crypto_provider(&settings)
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups,
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
    }
}

#[test]
fn client_signature_schemes_accepted_are_pinned() {
    // What partner certificates and their handshake signatures may use. No SHA-1, no RSA
    // below 2048 bits (webpki's RSA algorithms start at 2048).
    let schemes = crypto_provider(&TlsSettings::default())
        .signature_verification_algorithms
        .supported_schemes();
    assert_eq!(
        schemes,
        [
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    );
}

#[test]
fn server_signs_only_with_ecdsa_p256_sha256() {
    let signer = mig::keys::InMemorySigner::generate().unwrap();
    let key = TpmSigningKey::new(signer);
    assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
    assert!(key
        .choose_scheme(&[
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::ED25519,
        ])
        .is_none());
    let chosen = key
        .choose_scheme(&[
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
        ])
        .unwrap();
    assert_eq!(chosen.scheme(), SignatureScheme::ECDSA_NISTP256_SHA256);
    // The signature verifies against the advertised key.
    let signature = chosen.sign(b"handshake transcript").unwrap();
    let spki = key.public_key().unwrap();
    let point = &spki.as_ref()[26..];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(b"handshake transcript", &signature)
        .unwrap();
}

fn client_with(
    app: &Appliance,
    who: &Identity,
    suites: Vec<rustls::SupportedCipherSuite>,
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..ring_provider::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(app.key.ca.der()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(who.chain.clone(), who.key.clone_key())
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pinned_suite_and_group_negotiates_and_nothing_else_does() {
    use ring_provider::{cipher_suite as cs, kx_group as kx};
    let ca = Issuer::root("Partner CA");
    let who = ca.client("ambulance");
    let options = Options {
        settings: tls12_on(),
        ..Default::default()
    };
    let app = Appliance::start(&[&ca], &[partner("RX6", &who)], options).await;
    for suite in [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        for group in [kx::X25519, kx::SECP256R1, kx::SECP384R1] {
            let config = client_with(&app, &who, vec![suite], vec![group]);
            let exchange = get(app.addr, config, "/").await.unwrap();
            assert_eq!(exchange.suite, Some(suite.suite()));
        }
    }
    // RSA key exchange suites are never negotiated (our key is ECDSA, and they are off).
    let config = client_with(
        &app,
        &who,
        vec![cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384],
        vec![kx::X25519],
    );
    assert_refused(
        get(app.addr, config, "/").await,
        Some(rustls::AlertDescription::HandshakeFailure),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_config_offers_h2_and_http11_tickets_and_no_early_data() {
    let ca = Issuer::root("Partner CA");
    let app = Appliance::start(&[&ca], &[], Options::default()).await;
    let snapshot = app.reloader.current();
    for config in [&snapshot.partner_tls, &snapshot.upstream_tls] {
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(config.max_early_data_size, 0);
        assert!(config.ticketer.enabled());
        assert_eq!(config.send_tls13_tickets, 2);
        let suites: Vec<_> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites.len(), 3);
    }
}
