//! Unit tests of the TLS settings; handshakes are tested in daemon/tests/tls_*.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn settings_default_to_tls13_only_and_refusing_expired_crls() {
    let settings: TlsSettings = toml::from_str("").unwrap();
    assert_eq!(settings, TlsSettings::default());
    assert!(!settings.tls12);
    assert_eq!(settings.crl_expired, CrlExpiredPolicy::Refuse);
    let settings: TlsSettings = toml::from_str("tls12 = true\ncrl_expired = \"warn\"\n").unwrap();
    assert!(settings.tls12);
    assert_eq!(settings.crl_expired, CrlExpiredPolicy::Warn);
}

#[test]
fn settings_refuse_unknown_keys_and_values() {
    let err = toml::from_str::<TlsSettings>("tls13 = true\n").unwrap_err();
    assert!(err.to_string().contains("tls13"), "{err}");
    let err = toml::from_str::<TlsSettings>("crl_expired = \"ignore\"\n").unwrap_err();
    assert!(err.to_string().contains("ignore"), "{err}");
}

#[test]
fn signing_on_a_current_thread_runtime_does_not_panic() {
    // block_in_place would panic here; the adapter must sign inline instead.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key = TpmSigningKey::new(crate::keys::InMemorySigner::generate().unwrap());
    let signature = runtime.block_on(async {
        use rustls::sign::SigningKey;
        key.choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap()
            .sign(b"hello")
            .unwrap()
    });
    assert!(!signature.is_empty());
}
