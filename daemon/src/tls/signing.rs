//! The appliance's TLS server key as a rustls `SigningKey`, over any `keys::Signer` (the TPM on
//! the appliance, an in-memory key in tests). Only ECDSA P-256 with SHA-256 is offered.
//!
//! Why `block_in_place`: rustls calls `Signer::sign` synchronously from inside the handshake,
//! and the TPM signer blocks for milliseconds (tens on a hardware TPM). On the multi-threaded
//! runtime `tokio::task::block_in_place` hands this worker's other tasks to another thread
//! while we wait, so no request stalls behind a signature, and the handshake code stays plain
//! tokio-rustls. The listener bounds concurrent handshakes with a semaphore, which also bounds
//! the threads parked here. On a current-thread runtime (never migd) we sign inline.

use std::future::Future;
use std::sync::Arc;

use rustls::sign::{Signer as RustlsSigner, SigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;

use crate::keys::Signer;

/// Decides, once per full handshake and before the server key signs, whether this handshake
/// may spend a signature (the listener's per-source rate limit). Resumed handshakes never ask:
/// rustls chooses a signing scheme only when it is about to sign.
pub type FullHandshakeGate = Arc<dyn Fn() -> bool + Send + Sync>;

tokio::task_local! {
    static FULL_HANDSHAKE_GATE: FullHandshakeGate;
}

/// Runs `handshake` with `gate` consulted before any server signature inside it. rustls signs
/// synchronously while the handshake future is polled, so a task-local reaches it.
pub async fn with_full_handshake_gate<F: Future>(
    gate: FullHandshakeGate,
    handshake: F,
) -> F::Output {
    FULL_HANDSHAKE_GATE.scope(gate, handshake).await
}

/// A rustls signing key whose private half lives behind a `keys::Signer`.
#[derive(Debug, Clone)]
pub struct TpmSigningKey {
    signer: Arc<dyn Signer>,
    spki: Vec<u8>,
}

impl TpmSigningKey {
    pub fn new(signer: Arc<dyn Signer>) -> TpmSigningKey {
        let spki = signer.public_key_spki_der();
        TpmSigningKey { signer, spki }
    }
}

impl SigningKey for TpmSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn RustlsSigner>> {
        // Refused by the gate: the handshake fails before the TPM is asked for anything.
        if !FULL_HANDSHAKE_GATE.try_with(|gate| gate()).unwrap_or(true) {
            return None;
        }
        if offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            Some(Box::new(self.clone()))
        } else {
            None
        }
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl RustlsSigner for TpmSigningKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let sign = || self.signer.sign(message);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        };
        result.map_err(|e| {
            // The detail goes to our log, never to the peer.
            tracing::error!(error = %e, "TLS handshake signature failed");
            Error::General("server key unavailable".into())
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}
