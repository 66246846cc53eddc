//! The signing interface that TLS handshakes and audit checkpoints use. On the appliance both
//! keys live in the TPM (`tpm`); the in-memory signer exists for unit tests and benchmarks of
//! the code above it, and migd never constructs one.

use std::sync::Arc;

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key's holder (the TPM service) refused or failed.
    #[error("signing failed: {0}")]
    Failed(String),
    /// The key's holder is gone (the TPM thread stopped).
    #[error("the signing service is not running")]
    Unavailable,
}

/// An ECDSA P-256 key whose private half the caller never sees.
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// Signs SHA-256(`message`) and returns the ASN.1 DER `ECDSA-Sig-Value`. Blocking: call from
    /// a thread that may block, never from an async worker.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;

    /// The public key as DER `SubjectPublicKeyInfo`.
    fn public_key_spki_der(&self) -> Vec<u8>;
}

/// A P-256 key held in process memory, for tests only.
#[derive(Debug)]
pub struct InMemorySigner {
    key: ring::signature::EcdsaKeyPair,
    spki: Vec<u8>,
}

impl InMemorySigner {
    /// A fresh random key.
    pub fn generate() -> Result<Arc<InMemorySigner>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| SignError::Failed("key generation".into()))?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// Loads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Arc<InMemorySigner>, SignError> {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng)
            .map_err(|e| SignError::Failed(format!("not a P-256 PKCS#8 key: {e}")))?;
        let spki = spki_from_uncompressed_point(key.public_key().as_ref());
        Ok(Arc::new(InMemorySigner { key, spki }))
    }
}

impl Signer for InMemorySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = ring::rand::SystemRandom::new();
        self.key
            .sign(&rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SignError::Failed("ECDSA signing".into()))
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }
}

/// Only the public half of a key, for checks that need no signature (does this certificate
/// hold the appliance's key?) made where the TPM is not at hand.
#[derive(Debug, Clone)]
pub struct PublicKeyOnly(pub Vec<u8>);

impl Signer for PublicKeyOnly {
    fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, SignError> {
        Err(SignError::Unavailable)
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// Wraps an uncompressed SEC1 P-256 point (65 bytes) in a DER SubjectPublicKeyInfo.
pub fn spki_from_uncompressed_point(point: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut spki = PREFIX.to_vec();
    spki.extend_from_slice(point);
    spki
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_signature_verifies_against_its_spki() {
        let signer = InMemorySigner::generate().unwrap();
        let signature = signer.sign(b"checkpoint").unwrap();
        let spki = signer.public_key_spki_der();
        let point = &spki[26..];
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            point,
        );
        key.verify(b"checkpoint", &signature).unwrap();
        assert!(key.verify(b"tampered", &signature).is_err());
    }
}

/// Derives a purpose-bound 32-byte key from the TPM-sealed secret (HMAC-SHA-256 keyed by the
/// secret over `purpose`), so the replica and the audit trail never share a key.
pub fn derive(secret: &[u8; 32], purpose: &str) -> zeroize::Zeroizing<[u8; 32]> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, purpose.as_bytes());
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// Key purposes.
pub const REPLICA_KEY_PURPOSE: &str = "mig replica v1";
pub const AUDIT_KEY_PURPOSE: &str = "mig audit v1";

#[cfg(test)]
mod derive_tests {
    use super::*;

    #[test]
    fn purposes_give_different_stable_keys() {
        let secret = [3u8; 32];
        let replica = derive(&secret, REPLICA_KEY_PURPOSE);
        assert_eq!(*replica, *derive(&secret, REPLICA_KEY_PURPOSE));
        assert_ne!(*replica, *derive(&secret, AUDIT_KEY_PURPOSE));
        assert_ne!(*replica, *derive(&[4u8; 32], REPLICA_KEY_PURPOSE));
    }
}
