//! A throw-away PKI made with rcgen: root and intermediate CAs that issue client and server
//! certificates and CRLs. P-256 keys throughout; serial numbers are unique in this process, so
//! a CRL can name the certificates it revokes.

use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationList,
    CertificateRevocationListParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

static SERIAL: AtomicU64 = AtomicU64::new(1000);

/// A serial number not used before in this process.
pub fn next_serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A fresh P-256 key.
pub fn key_pair() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

/// Valid from `from_days` to `to_days` days relative to now (negative: in the past).
pub fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::days(from_days);
    params.not_after = now + Duration::days(to_days);
}

/// A CA (root or intermediate) that can issue certificates and CRLs.
pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
    /// The CA's own chain above it, nearest first (empty for a root).
    pub parents: Vec<CertificateDer<'static>>,
    pub serial: u64,
}

/// An issued certificate with its own key: the chain to present (leaf first, intermediates,
/// never the root) and PEM copies for files.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub serial: u64,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A self-signed root CA named `name`, valid from 10 days ago for 10 years.
    pub fn root(name: &str) -> Result<Ca, rcgen::Error> {
        Ca::root_in(name, None)
    }

    /// A root CA with an organisation name too (the demo's say they are not for production).
    pub fn root_in(name: &str, organisation: Option<&str>) -> Result<Ca, rcgen::Error> {
        let key = key_pair()?;
        let serial = next_serial();
        let cert = ca_params(name, organisation, serial)?.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            parents: Vec::new(),
            serial,
        })
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, name: &str) -> Result<Ca, rcgen::Error> {
        let key = key_pair()?;
        let serial = next_serial();
        let cert = ca_params(name, None, serial)?.signed_by(&key, &self.cert, &self.key)?;
        let mut parents = vec![self.der()];
        parents.extend(self.parents.iter().cloned());
        Ok(Ca {
            cert,
            key,
            parents,
            serial,
        })
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Signs `params` for `key` with a fresh serial number.
    pub fn sign(
        &self,
        mut params: CertificateParams,
        key: &KeyPair,
    ) -> Result<Certificate, rcgen::Error> {
        params.serial_number = Some(SerialNumber::from(next_serial()));
        params.signed_by(key, &self.cert, &self.key)
    }

    /// Issues `params` (its serial number is set here) for a fresh key.
    pub fn issue(&self, mut params: CertificateParams) -> Result<Leaf, rcgen::Error> {
        let key = key_pair()?;
        let serial = next_serial();
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let mut chain = vec![cert.der().clone()];
        // Send intermediates, never the root.
        if !self.parents.is_empty() {
            chain.push(self.der());
            chain.extend(self.parents[..self.parents.len() - 1].iter().cloned());
        }
        Ok(Leaf {
            chain,
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            serial,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate (TLS client authentication) for `common_name`, valid from a day
    /// ago for `days` days.
    pub fn client(&self, common_name: &str, days: i64) -> Result<Leaf, rcgen::Error> {
        self.issue(leaf_params(
            common_name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            -1,
            days,
        )?)
    }

    /// The certificate chain (leaf, this CA) for the key in the certificate signing request
    /// `csr_pem`, for TLS server authentication with `extra_names` added, valid for `days`.
    pub fn server_chain_for_csr(
        &self,
        csr_pem: &str,
        extra_names: Vec<SanType>,
        days: i64,
    ) -> Result<String, rcgen::Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params.subject_alt_names.extend(extra_names);
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.serial_number = Some(SerialNumber::from(next_serial()));
        set_validity(&mut csr.params, -1, days);
        let leaf = csr.signed_by(&self.cert, &self.key)?;
        Ok(format!("{}{}", leaf.pem(), self.pem()))
    }

    /// A CRL revoking `serials`, with `nextUpdate` `next_days` from now (negative: expired).
    pub fn crl(
        &self,
        serials: &[u64],
        next_days: i64,
    ) -> Result<CertificateRevocationList, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now - Duration::days(2),
            next_update: now + Duration::days(next_days),
            crl_number: SerialNumber::from(next_serial()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - Duration::days(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
    }
}

/// Parameters for an end-entity certificate: `common_name`, subject alternative names `sans`,
/// one extended key usage, valid from `from_days` to `to_days` relative to now.
pub fn leaf_params(
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    from_days: i64,
    to_days: i64,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, from_days, to_days);
    Ok(params)
}

fn ca_params(
    name: &str,
    organisation: Option<&str>,
    serial: u64,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    if let Some(organisation) = organisation {
        params
            .distinguished_name
            .push(DnType::OrganizationName, organisation);
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.serial_number = Some(SerialNumber::from(serial));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, -10, 3650);
    Ok(params)
}
