//! Certificate and CRL parsing and the install-time checks (is a CA, who signed this, in date).
//! Handshake-time path validation and revocation are rustls/webpki's job, not this file's.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use super::RegistryError;

/// What the registry and the audit need to know about a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// SHA-256 of the whole certificate (its fingerprint, recorded in the audit).
    pub cert_sha256: [u8; 32],
    /// SHA-256 of its DER SubjectPublicKeyInfo (what partners are pinned by).
    pub spki_sha256: [u8; 32],
    /// Subject DN, RDNs in certificate order, e.g. `C=GB, O=Ambulance Trust, CN=ePCR`. For
    /// display and logs only: never compared to identify anyone (it is not an unambiguous
    /// encoding of the name).
    pub subject: String,
    /// Issuer DN in the same form, for display only.
    pub issuer: String,
    /// End of the certificate's validity, Unix seconds.
    pub not_after: i64,
}

/// Summary of an installed CRL, for logs and `migctl check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub issuer: String,
    /// Unix seconds of `nextUpdate`, if the CRL has one.
    pub next_update: Option<i64>,
    pub revoked: usize,
}

impl CrlInfo {
    /// True when the CRL's `nextUpdate` is before `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        let now = unix_seconds(now);
        self.next_update.is_some_and(|next| next < now)
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Identity of a DER certificate; `None` for something that is not an X.509 certificate.
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertIdentity {
        cert_sha256: Sha256::digest(der).into(),
        spki_sha256: Sha256::digest(cert.public_key().raw).into(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

pub(crate) fn parse_cert<'a>(
    path: &Path,
    der: &'a [u8],
) -> Result<X509Certificate<'a>, RegistryError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| RegistryError::invalid(path, format!("not an X.509 certificate: {e}")))
}

/// Every certificate in a PEM file, in order. No certificate at all is an error.
pub(crate) fn parse_pem_certs(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, RegistryError> {
    let mut certs = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = item.map_err(|e| {
            RegistryError::invalid(path, format!("PEM certificate {}: {e}", index + 1))
        })?;
        parse_cert(path, &cert).map_err(|_| {
            RegistryError::invalid(
                path,
                format!("certificate {} is not a valid X.509 certificate", index + 1),
            )
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(RegistryError::invalid(
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

/// A partner trust anchor must be a CA certificate that webpki accepts as an anchor.
pub(crate) fn check_ca(path: &Path, der: &CertificateDer<'_>) -> Result<(), RegistryError> {
    let cert = parse_cert(path, der)?;
    if !cert.is_ca() {
        return Err(RegistryError::invalid(
            path,
            format!(
                "{} is not a CA certificate (basicConstraints cA is not set)",
                cert.subject()
            ),
        ));
    }
    webpki::anchor_from_trusted_cert(der)
        .map_err(|e| RegistryError::invalid(path, format!("unusable as a trust anchor: {e}")))?;
    Ok(())
}

/// CRLs from a file holding PEM (`-----BEGIN X509 CRL-----`, one or more) or one DER CRL.
pub(crate) fn parse_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, RegistryError> {
    let looks_pem = bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(5)
        .eq(b"-----".iter());
    let crls = if looks_pem {
        let mut crls = Vec::new();
        for (index, item) in CertificateRevocationListDer::pem_slice_iter(bytes).enumerate() {
            crls.push(item.map_err(|e| {
                RegistryError::invalid(path, format!("PEM CRL {}: {e}", index + 1))
            })?);
        }
        if crls.is_empty() {
            return Err(RegistryError::invalid(
                path,
                "no PEM CRL (-----BEGIN X509 CRL-----) found",
            ));
        }
        crls
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    for crl in &crls {
        // webpki is what checks revocation in the handshake: it must accept the CRL too.
        webpki::BorrowedCertRevocationList::from_der(crl)
            .map_err(|e| RegistryError::invalid(path, format!("not a usable CRL: {e}")))?;
    }
    Ok(crls)
}

pub(crate) fn parse_crl<'a>(
    path: &Path,
    der: &'a [u8],
) -> Result<CertificateRevocationList<'a>, RegistryError> {
    CertificateRevocationList::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| RegistryError::invalid(path, format!("not an X.509 CRL: {e}")))
}

pub(crate) fn crl_info(path: &Path, der: &[u8]) -> Result<CrlInfo, RegistryError> {
    let crl = parse_crl(path, der)?;
    Ok(CrlInfo {
        issuer: crl.issuer().to_string(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        revoked: crl.iter_revoked_certificates().count(),
    })
}

/// Checks that `cert` is within its validity period at `now`.
pub(crate) fn check_in_date(
    path: &Path,
    cert: &X509Certificate<'_>,
    now: SystemTime,
) -> Result<(), RegistryError> {
    let now = ASN1Time::from_timestamp(unix_seconds(now))
        .map_err(|e| RegistryError::invalid(path, format!("clock out of range: {e}")))?;
    let validity = cert.validity();
    if now < validity.not_before {
        return Err(RegistryError::invalid(
            path,
            format!(
                "{} is not valid until {}",
                cert.subject(),
                validity.not_before
            ),
        ));
    }
    if now > validity.not_after {
        return Err(RegistryError::invalid(
            path,
            format!("{} expired on {}", cert.subject(), validity.not_after),
        ));
    }
    Ok(())
}

/// True when `issuer` names `child`'s issuer and its key verifies `child`'s signature.
pub(crate) fn issued_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    child.issuer() == issuer.subject() && child.verify_signature(Some(issuer.public_key())).is_ok()
}

/// The notAfter of a DER certificate, Unix seconds; `None` if it does not parse.
pub fn cert_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}
