//! Certificate signing requests for the appliance, signed inside the TPM (rcgen over a remote
//! key: the private key never leaves the TPM).

use std::sync::Arc;

use crate::keys::Signer;

/// Why a CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The subject is not `KEY=value,…` with known keys.
    #[error("subject {0:?}: use KEY=value pairs separated by commas, keys CN, O, OU, L, ST, C; CN is required")]
    Subject(String),
    /// The key is not an uncompressed P-256 public key.
    #[error("the TLS key is not a P-256 key")]
    Key,
    /// rcgen failed to build or sign the request.
    #[error("building the CSR")]
    Build(#[from] rcgen::Error),
}

struct RemoteKey {
    point: Vec<u8>,
    signer: Arc<dyn Signer>,
}

impl rcgen::RemoteKeyPair for RemoteKey {
    fn public_key(&self) -> &[u8] {
        &self.point
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer
            .sign(message)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Parses `CN=…,O=…,C=GB` into a distinguished name; returns it and the CN.
fn parse_subject(subject: &str) -> Result<(rcgen::DistinguishedName, String), CsrError> {
    let bad = || CsrError::Subject(subject.to_owned());
    let mut name = rcgen::DistinguishedName::new();
    let mut common_name = None;
    for part in subject.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(bad)?;
        let value = value.trim();
        if value.is_empty() {
            return Err(bad());
        }
        let kind = match key.trim().to_ascii_uppercase().as_str() {
            "CN" => {
                common_name = Some(value.to_owned());
                rcgen::DnType::CommonName
            }
            "O" => rcgen::DnType::OrganizationName,
            "OU" => rcgen::DnType::OrganizationalUnitName,
            "L" => rcgen::DnType::LocalityName,
            "ST" => rcgen::DnType::StateOrProvinceName,
            "C" => rcgen::DnType::CountryName,
            _ => return Err(bad()),
        };
        name.push(kind, value);
    }
    let common_name = common_name.ok_or_else(bad)?;
    Ok((name, common_name))
}

/// A PEM PKCS#10 request for `subject`, with the CN (and `extra_dns`) as DNS names.
pub fn appliance_csr(
    signer: Arc<dyn Signer>,
    subject: &str,
    extra_dns: &[String],
) -> Result<String, CsrError> {
    let (name, common_name) = parse_subject(subject)?;
    let spki = signer.public_key_spki_der();
    // SPKI for P-256 is a fixed 26-byte header followed by the 65-byte uncompressed point.
    let point = spki
        .get(26..)
        .filter(|p| p.len() == 65 && p[0] == 4)
        .ok_or(CsrError::Key)?;
    let key = rcgen::KeyPair::from_remote(Box::new(RemoteKey {
        point: point.to_vec(),
        signer,
    }))?;
    let mut dns = vec![common_name];
    dns.extend(extra_dns.iter().filter(|d| !d.is_empty()).cloned());
    dns.dedup();
    let mut params = rcgen::CertificateParams::new(dns)?;
    params.distinguished_name = name;
    Ok(params.serialize_request(&key)?.pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::InMemorySigner;

    #[test]
    fn request_is_signed_by_the_key_and_names_the_subject() {
        let signer = InMemorySigner::generate().unwrap();
        let pem = appliance_csr(
            signer.clone(),
            "CN=mig.a81001.example.nhs.uk, O=The Surgery, C=GB",
            &[],
        )
        .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(
            csr.public_key.der_bytes(),
            &signer.public_key_spki_der()[26..]
        );
    }

    #[test]
    fn subject_must_be_well_formed() {
        let signer = InMemorySigner::generate().unwrap();
        for subject in ["", "O=No CN", "CN=", "CN=x,XX=y", "just text"] {
            assert!(
                matches!(
                    appliance_csr(signer.clone(), subject, &[]),
                    Err(CsrError::Subject(_))
                ),
                "{subject}"
            );
        }
    }
}
