//! Helpers shared by the TPM test binaries.
#![allow(dead_code)]

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;

/// Verifies a DER ECDSA P-256/SHA-256 signature with the p256 crate, independently of the TPM.
pub fn verify(spki: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| e.to_string())?;
    let signature = p256::ecdsa::Signature::from_der(signature).map_err(|e| e.to_string())?;
    key.verify(message, &signature).map_err(|e| e.to_string())
}
