//! rustls server configurations for the partner and upstream listeners (SPEC §3, §5 step 1),
//! the TPM-backed server key, client verification with CRLs, and hot reload of all of it.
//!
//! Validates: the client certificate chains to a partner CA, is in date, and no certificate in
//! its chain (end entity or intermediate) is revoked by an installed CRL; upstream clients by a
//! key pin. Does not validate: whether a verified certificate belongs to a registered partner
//! (the listener looks that up after the handshake so an unknown partner gets a 403, not a
//! handshake alert), nor OCSP (the appliance fetches nothing; revocation comes only from
//! CRLs installed with `migctl crl install`).

pub mod csr;
mod reload;
mod signing;
mod verify;

use std::sync::Arc;

use rustls::crypto::ring as ring_provider;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;

use crate::keys::Signer;

pub use reload::{build_snapshot, Reloader, Snapshot};
pub use signing::{with_full_handshake_gate, FullHandshakeGate, TpmSigningKey};
pub use verify::UpstreamVerifier;

/// How many TLS sessions the server remembers for stateful resumption (TLS 1.2 session ids;
/// TLS 1.3 uses stateless tickets). Each entry is a few hundred bytes.
const SESSION_CACHE_SIZE: usize = 4096;

/// TLS choices from the daemon's config file (`[tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Also offer TLS 1.2 (ECDHE-ECDSA with AES-GCM or ChaCha20-Poly1305 only). Off by default.
    #[serde(default)]
    pub tls12: bool,
    /// What an expired CRL (past its `nextUpdate`) means for partners of its CA.
    #[serde(default)]
    pub crl_expired: CrlExpiredPolicy,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            tls12: false,
            crl_expired: CrlExpiredPolicy::Refuse,
        }
    }
}

/// Policy for CRLs past their `nextUpdate` (see SECURITY.md, "TLS and certificates").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrlExpiredPolicy {
    /// Refuse every partner certificate whose chain the expired CRL covers (fail closed).
    #[default]
    Refuse,
    /// Keep using the expired CRL's revocations and log a warning at each reload.
    Warn,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No appliance certificate is installed yet.
    #[error("no appliance certificate installed ({0}); install one with `migctl cert install`")]
    NoCertificate(String),
    /// The installed certificate does not match the TPM key, or its chain is broken.
    #[error("appliance certificate")]
    Certificate(#[source] crate::registry::RegistryError),
    /// rustls refused the protocol versions or cipher suites.
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
    /// A partner CA certificate is unusable as a trust anchor.
    #[error("partner CA certificate unusable as a trust anchor")]
    TrustAnchor(#[source] rustls::Error),
    /// The partner CA / CRL verifier could not be built (a CRL or CA it cannot use).
    #[error("building the partner certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// Reading the state directory failed or a file in it is broken.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// TLS 1.3 cipher suites, in server preference order (pinned by a test).
pub static TLS13_SUITES: &[SupportedCipherSuite] = &[
    ring_provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ring_provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 cipher suites when enabled: ECDHE with our ECDSA key and AEAD only (pinned).
pub static TLS12_SUITES: &[SupportedCipherSuite] = &[
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ring_provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The crypto provider both listeners use: *ring* restricted to the pinned suites and the
/// X25519, P-256 and P-384 key exchange groups.
pub fn crypto_provider(settings: &TlsSettings) -> CryptoProvider {
    let mut suites = TLS13_SUITES.to_vec();
    if settings.tls12 {
        suites.extend_from_slice(TLS12_SUITES);
    }
    CryptoProvider {
        cipher_suites: suites,
        kx_groups: vec![
            ring_provider::kx_group::X25519,
            ring_provider::kx_group::SECP256R1,
            ring_provider::kx_group::SECP384R1,
        ],
        ..ring_provider::default_provider()
    }
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The protocol versions offered (pinned by a test).
pub fn protocol_versions(settings: &TlsSettings) -> &'static [&'static SupportedProtocolVersion] {
    if settings.tls12 {
        TLS13_AND_12
    } else {
        TLS13_ONLY
    }
}

/// The appliance's certificate with its TPM key, served to every client.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Pairs the installed chain with the signer after checking the leaf holds the signer's key
/// and the chain builds. A certificate out of date is logged, not refused: refusing would also
/// block unrelated reloads, and partners see the dates themselves.
pub fn certified_key(
    chain: &[CertificateDer<'static>],
    signer: Arc<dyn Signer>,
    now: std::time::SystemTime,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let path = std::path::Path::new(crate::registry::CHAIN_FILE);
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(crate::registry::CHAIN_FILE.into()));
    }
    let spki = signer.public_key_spki_der();
    crate::registry::check_appliance_chain(path, chain, &spki, None)
        .map_err(TlsError::Certificate)?;
    if let Err(error) = crate::registry::check_appliance_chain(path, chain, &spki, Some(now)) {
        tracing::warn!(error = %crate::error::Chain(&error), "appliance certificate is out of date; partners will refuse it");
    }
    let key = TpmSigningKey::new(signer);
    Ok(Arc::new(CertifiedKey::new(chain.to_vec(), Arc::new(key))))
}

fn finish(mut config: ServerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Fresh session storage and ticket keys for every configuration built: resumption skips
    // client certificate verification, so sessions must not outlive a CRL or trust change.
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = ring_provider::Ticketer::new().map_err(TlsError::Config)?;
    config.send_tls13_tickets = 2;
    // No 0-RTT: early data is replayable and our requests are audited reads.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// A server configuration with the client verifier it uses: the listener re-runs the same
/// verifier on open connections when the snapshot changes (SPEC §5 step 1, every request).
pub type ServerSide = (Arc<ServerConfig>, Arc<dyn ClientCertVerifier>);

/// The partner listener's configuration: client certificates verified against `trust` with
/// every CRL in `crls`, the whole chain checked for revocation.
pub fn partner_server_config(
    key: Arc<CertifiedKey>,
    trust: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    settings: &TlsSettings,
) -> Result<ServerSide, TlsError> {
    let provider = Arc::new(crypto_provider(settings));
    let verifier = verify::partner_verifier(trust, crls, settings, provider.clone())?;
    server_side(key, verifier, provider, settings)
}

/// The upstream listener's configuration: a client is accepted only if its certificate is in
/// date and its key is pinned by a registered upstream.
pub fn upstream_server_config(
    key: Arc<CertifiedKey>,
    pins: impl IntoIterator<Item = [u8; 32]>,
    settings: &TlsSettings,
) -> Result<ServerSide, TlsError> {
    let provider = Arc::new(crypto_provider(settings));
    let verifier: Arc<dyn ClientCertVerifier> = Arc::new(UpstreamVerifier::new(pins, &provider));
    server_side(key, verifier, provider, settings)
}

fn server_side(
    key: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
    settings: &TlsSettings,
) -> Result<ServerSide, TlsError> {
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(protocol_versions(settings))
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier.clone())
        .with_cert_resolver(Arc::new(FixedCert(key)));
    Ok((finish(config)?, verifier))
}

#[cfg(test)]
mod tests;
