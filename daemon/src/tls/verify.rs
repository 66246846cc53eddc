//! Client certificate verifiers: partner CAs with CRLs (webpki, whole chain), and the
//! upstream key pin. Both verify the handshake signature with webpki.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{CrlExpiredPolicy, TlsError, TlsSettings};

/// Partner verifier: chains to one of `trust`, in date, and no certificate of the chain is
/// revoked by `crls`. A CA without an installed CRL is not a refusal (SPEC: "not revoked by an
/// installed CRL"); an expired CRL is, unless `crl_expired = "warn"`.
pub(super) fn partner_verifier(
    trust: &[CertificateDer<'static>],
    crls: Vec<CertificateRevocationListDer<'static>>,
    settings: &TlsSettings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if trust.is_empty() {
        // No partner CA yet: still ask for a certificate, refuse every one.
        return Ok(Arc::new(RefuseAll {
            algorithms: provider.signature_verification_algorithms,
        }));
    }
    let mut roots = RootCertStore::empty();
    for cert in trust {
        roots.add(cert.clone()).map_err(TlsError::TrustAnchor)?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .allow_unknown_revocation_status();
    if settings.crl_expired == CrlExpiredPolicy::Refuse {
        builder = builder.enforce_revocation_expiration();
    }
    builder.build().map_err(TlsError::Verifier)
}

/// Refuses every client: what the partner listener uses before any partner CA is installed.
#[derive(Debug)]
struct RefuseAll {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RefuseAll {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Upstream verifier: the client's certificate must be in date and its SubjectPublicKeyInfo's
/// SHA-256 must be pinned by a registered upstream. No CA is involved: the practice registers
/// the clinical system's certificate directly (`migctl upstream add`).
#[derive(Debug)]
pub struct UpstreamVerifier {
    pins: HashSet<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl UpstreamVerifier {
    pub fn new(pins: impl IntoIterator<Item = [u8; 32]>, provider: &CryptoProvider) -> Self {
        UpstreamVerifier {
            pins: pins.into_iter().collect(),
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for UpstreamVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        if now > validity.not_after.timestamp() {
            return Err(Error::InvalidCertificate(CertificateError::Expired));
        }
        let hash: [u8; 32] = Sha256::digest(cert.public_key().raw).into();
        if self.pins.contains(&hash) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
