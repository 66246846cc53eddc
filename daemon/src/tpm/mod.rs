//! The TPM keystore (SPEC §7): the TLS and audit signing keys and the sealed replica key, made at
//! provisioning, stored as TPM blobs in the state directory and used through one service thread.
//!
//! Validates: the key files (present, unaltered, not swapped; see `blobs`), the TPM's own checks
//! on load, and the PCR policy on unseal. Does not validate: that the TPM is genuine (no EK
//! certificate check), nor measured-boot event logs; it never falls back to a software key.

mod blobs;
mod errors;
mod keys;
mod nv;
mod primary;
mod seal;
mod service;
mod sign;

use std::path::Path;
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};
use tss_esapi::tcti_ldr::TctiNameConf;
use zeroize::Zeroizing;

use crate::audit::{Counter, CounterError};
use crate::keys::{SignError, Signer};
pub use errors::TpmError;
pub use nv::AUDIT_COUNTER_INDEX;
pub use seal::REPLICA_KEY_LEN;
use service::{Reply, Request, Service};

/// Requests that may wait for the TPM thread before callers block on sending.
const QUEUE_DEPTH: usize = 64;

/// The subdirectory of the state directory that holds the key files.
pub const KEY_DIR: &str = blobs::DIR;

/// How to reach the TPM and what to seal to.
#[derive(Clone)]
pub struct TpmSettings {
    /// tpm2-tss TCTI: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=N` or `tabrmd`.
    pub tcti: String,
    /// SHA-256 bank PCR indices the replica key is sealed to, e.g. `[7]`.
    pub pcrs: Vec<u8>,
    /// The owner hierarchy password, when the TPM has one.
    pub owner_auth: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for TpmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmSettings")
            .field("tcti", &self.tcti)
            .field("pcrs", &self.pcrs)
            .field(
                "owner_auth",
                &self.owner_auth.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Parses a PCR selection as written in config and on the `migctl init --pcrs` command line:
/// `sha256:7` or `sha256:0,2,7` (tpm2-tools syntax; only the SHA-256 bank is supported).
pub fn parse_pcr_selection(text: &str) -> Result<Vec<u8>, TpmError> {
    let bad = |reason| TpmError::BadPcrSelectionText {
        text: text.to_string(),
        reason,
    };
    let list = text
        .trim()
        .strip_prefix("sha256:")
        .ok_or_else(|| bad("it must start with the bank, sha256:"))?;
    let pcrs = list
        .split(',')
        .map(|n| n.trim().parse::<u8>())
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad("PCRs are numbers 0-23 separated by commas"))?;
    seal::selection(&pcrs)?;
    Ok(pcrs)
}

/// Which signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Signs every TLS handshake.
    Tls,
    /// Signs audit checkpoints.
    Audit,
}

/// A handle on the TPM service thread. Cheap to clone; the thread stops (flushing what it has
/// loaded) when the last handle and signer are dropped.
#[derive(Clone)]
pub struct Tpm {
    requests: SyncSender<Request>,
    _thread: Arc<ThreadGuard>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tpm")
    }
}

/// Joins the service thread when the last handle goes, so the TPM connection is closed (and
/// its objects flushed) before, say, a test restarts swtpm or migd exits. `Tpm` declares its
/// sender before this guard, so the last sender is gone (and the thread's loop ends) by the
/// time the guard joins.
struct ThreadGuard {
    thread: Option<JoinHandle<()>>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.thread.take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl Tpm {
    /// Starts the service thread and opens the TPM. Fails with `NoTpm` when nothing answers
    /// on the TCTI.
    pub fn connect(settings: &TpmSettings) -> Result<Tpm, TpmError> {
        let conf = TctiNameConf::from_str(&settings.tcti).map_err(|_| TpmError::BadTcti {
            tcti: settings.tcti.clone(),
        })?;
        seal::selection(&settings.pcrs)?;
        let (requests, receiver) = sync_channel::<Request>(QUEUE_DEPTH);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), TpmError>>(1);
        let tcti = settings.tcti.clone();
        let pcrs = settings.pcrs.clone();
        let owner_auth = settings.owner_auth.clone();
        let thread = std::thread::Builder::new()
            .name("mig-tpm".into())
            .spawn(move || serve(conf, tcti, pcrs, owner_auth, receiver, ready_tx))
            .map_err(TpmError::Thread)?;
        let outcome = ready_rx.recv().unwrap_or(Err(TpmError::ServiceStopped));
        let guard = Arc::new(ThreadGuard {
            thread: Some(thread),
        });
        outcome?;
        Ok(Tpm {
            requests,
            _thread: guard,
        })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, TpmError> {
        let (reply, answer) = sync_channel(1);
        self.requests
            .send(make(reply))
            .map_err(|_| TpmError::ServiceStopped)?;
        answer.recv().map_err(|_| TpmError::ServiceStopped)?
    }

    /// Makes the keys and the sealed replica key and writes their blobs to `state_dir/tpm/`.
    /// Refuses if any key file already exists. Does not load them: call `load` next.
    pub fn provision(&self, state_dir: &Path) -> Result<(), TpmError> {
        let state_dir = state_dir.to_path_buf();
        self.call(|reply| Request::Provision { state_dir, reply })
    }

    /// Loads the blobs from `state_dir/tpm/` under the re-derived primary.
    pub fn load(&self, state_dir: &Path) -> Result<(), TpmError> {
        let state_dir = state_dir.to_path_buf();
        self.call(|reply| Request::Load { state_dir, reply })
    }

    /// Unseals the replica's SQLCipher key; `PcrMismatch` when a measured component changed.
    pub fn unseal_replica_key(&self) -> Result<Zeroizing<[u8; REPLICA_KEY_LEN]>, TpmError> {
        self.call(|reply| Request::Unseal { reply })
    }

    /// A signer for one of the loaded keys (its public key is fetched once, here).
    pub fn signer(&self, role: KeyRole) -> Result<Arc<dyn Signer>, TpmError> {
        let spki = self.call(|reply| Request::PublicKey { role, reply })?;
        Ok(Arc::new(TpmSigner {
            tpm: self.clone(),
            role,
            spki,
        }))
    }

    /// The DER SubjectPublicKeyInfo of a loaded key.
    pub fn public_key_spki_der(&self, role: KeyRole) -> Result<Vec<u8>, TpmError> {
        self.call(|reply| Request::PublicKey { role, reply })
    }

    /// Signs SHA-256(`message`) with a loaded key; DER ECDSA-Sig-Value. Blocking.
    pub fn sign(&self, role: KeyRole, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.call(|reply| Request::Sign {
            role,
            digest,
            reply,
        })
    }

    /// `len` bytes from the TPM's random number generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, TpmError> {
        self.call(|reply| Request::Random { len, reply })
    }

    /// The audit checkpoint counter's value (TPM2_NV_Read). Blocking.
    pub fn counter_read(&self) -> Result<u64, TpmError> {
        self.call(|reply| Request::CounterRead { reply })
    }

    /// Increments the audit checkpoint counter and returns its new value. Blocking.
    pub fn counter_increment(&self) -> Result<u64, TpmError> {
        self.call(|reply| Request::CounterIncrement { reply })
    }

    /// The audit checkpoint counter, for the audit log.
    pub fn audit_counter(&self) -> Arc<dyn Counter> {
        Arc::new(TpmCounter { tpm: self.clone() })
    }

    /// A cheap round trip to the TPM (TPM2_GetRandom), for the watchdog.
    pub fn health_check(&self) -> Result<(), TpmError> {
        self.call(|reply| Request::HealthCheck { reply })
    }
}

/// The thread body: open the context, report readiness, serve.
fn serve(
    conf: TctiNameConf,
    tcti: String,
    pcrs: Vec<u8>,
    owner_auth: Option<Zeroizing<Vec<u8>>>,
    requests: Receiver<Request>,
    ready: SyncSender<Result<(), TpmError>>,
) {
    match tss_esapi::Context::new(conf) {
        Ok(mut context) => {
            if tcti.starts_with("swtpm") {
                service::flush_leftover_objects(&mut context);
            }
            if ready.send(Ok(())).is_ok() {
                Service::new(context, pcrs, owner_auth).run(requests);
            }
        }
        Err(source) => {
            let _ = ready.send(Err(TpmError::NoTpm { tcti, source }));
        }
    }
}

/// A `keys::Signer` backed by a TPM key, for rustls and the audit log.
#[derive(Debug)]
pub struct TpmSigner {
    tpm: Tpm,
    role: KeyRole,
    spki: Vec<u8>,
}

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.tpm.sign(self.role, message).map_err(|e| match e {
            TpmError::ServiceStopped => SignError::Unavailable,
            other => SignError::Failed(crate::error::Chain(&other).to_string()),
        })
    }

    fn public_key_spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }
}

/// The audit log's `Counter` backed by the TPM's NV counter.
#[derive(Debug)]
struct TpmCounter {
    tpm: Tpm,
}

impl Counter for TpmCounter {
    fn read(&self) -> Result<u64, CounterError> {
        self.tpm.counter_read().map_err(counter_error)
    }

    fn increment(&self) -> Result<u64, CounterError> {
        self.tpm.counter_increment().map_err(counter_error)
    }
}

fn counter_error(e: TpmError) -> CounterError {
    match e {
        TpmError::ServiceStopped => CounterError::Unavailable,
        other => CounterError::Failed(crate::error::Chain(&other).to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pcr_selections_parse_in_tpm2_tools_syntax() {
        assert_eq!(parse_pcr_selection("sha256:7").unwrap(), vec![7]);
        assert_eq!(
            parse_pcr_selection(" sha256:0, 2,7 ").unwrap(),
            vec![0, 2, 7]
        );
        for bad in [
            "7",
            "sha1:7",
            "sha256:",
            "sha256:24",
            "sha256:7,7",
            "sha256:x",
        ] {
            let error = parse_pcr_selection(bad).unwrap_err();
            assert!(!error.to_string().contains('\n'), "{bad}: {error}");
        }
    }

    #[test]
    fn settings_debug_hides_the_owner_password() {
        let settings = TpmSettings {
            tcti: "device:/dev/tpmrm0".into(),
            pcrs: vec![7],
            owner_auth: Some(Zeroizing::new(b"hunter2".to_vec())),
        };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }
}
