//! The TPM service thread: the one owner of the `tss_esapi::Context` (its commands take
//! `&mut self` and the TPM runs one command at a time anyway), serving requests in arrival order
//! from a bounded channel and answering each on its own reply channel.
//!
//! Transient slots: swtpm (and TPMs without a resource manager) hold only 3 loaded objects, so
//! only the TLS key stays loaded (every handshake uses it). The primary, the audit key and the
//! sealed replica key are kept as in-memory saved contexts and loaded for the one command that
//! needs them, then flushed; at most 3 objects are ever loaded. Saved contexts never go to
//! disk: they die with a TPM reset, while the blobs in the state directory do not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use tss_esapi::handles::{KeyHandle, NvIndexHandle, ObjectHandle};
use tss_esapi::utils::TpmsContext;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::blobs::{self, Manifest, Object};
use super::errors::{tpm_err, TpmError};
use super::seal::{self, UnsealError, REPLICA_KEY_LEN};
use super::{keys, nv, primary, sign, KeyRole};

/// Where a request's answer goes.
pub(crate) type Reply<T> = SyncSender<Result<T, TpmError>>;

/// One unit of work for the TPM thread.
pub(crate) enum Request {
    Provision {
        state_dir: PathBuf,
        reply: Reply<()>,
    },
    Load {
        state_dir: PathBuf,
        reply: Reply<()>,
    },
    Unseal {
        reply: Reply<Zeroizing<[u8; REPLICA_KEY_LEN]>>,
    },
    PublicKey {
        role: KeyRole,
        reply: Reply<Vec<u8>>,
    },
    Sign {
        role: KeyRole,
        digest: [u8; 32],
        reply: Reply<Vec<u8>>,
    },
    Random {
        len: usize,
        reply: Reply<Vec<u8>>,
    },
    HealthCheck {
        reply: Reply<()>,
    },
    CounterRead {
        reply: Reply<u64>,
    },
    CounterIncrement {
        reply: Reply<u64>,
    },
}

/// Flushes transient objects a previous client left loaded. Only for swtpm, which has no
/// resource manager: a killed migd (or tpm2-tools) leaves objects in its 3 slots and the next
/// start would fail with TPM_RC_OBJECT_MEMORY. Behind /dev/tpmrm0 or tabrmd each client sees
/// only its own objects, so there is nothing to do and nothing of others' may be touched.
pub(crate) fn flush_leftover_objects(context: &mut Context) {
    use tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST;
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;

    // Best effort: if any step fails, the commands that follow report the real problem.
    let Ok((CapabilityData::Handles(handles), _)) =
        context.get_capability(CapabilityType::Handles, TPM2_TRANSIENT_FIRST, 64)
    else {
        return;
    };
    for handle in handles.into_inner() {
        if let Ok(object) = context.tr_from_tpm_public(handle) {
            let _ = context.flush_context(object);
        }
    }
}

/// The state the thread owns.
pub(crate) struct Service {
    context: Context,
    pcrs: Vec<u8>,
    owner_auth: Option<Zeroizing<Vec<u8>>>,
    loaded: Option<Loaded>,
}

/// Keys loaded from the state directory.
struct Loaded {
    tls: KeyHandle,
    tls_spki: Vec<u8>,
    audit: TpmsContext,
    audit_spki: Vec<u8>,
    primary: TpmsContext,
    sealed: TpmsContext,
    pcr_values: BTreeMap<u8, String>,
    /// The audit checkpoint counter (an ESYS handle for an NV index: no transient slot).
    counter: NvIndexHandle,
}

impl Service {
    pub(crate) fn new(
        context: Context,
        pcrs: Vec<u8>,
        owner_auth: Option<Zeroizing<Vec<u8>>>,
    ) -> Service {
        Service {
            context,
            pcrs,
            owner_auth,
            loaded: None,
        }
    }

    /// Serves until every sender is gone; dropping `self` then flushes what is still loaded.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        use crate::metrics::TpmOperation as Op;
        while let Ok(request) = requests.recv() {
            let operation = match &request {
                Request::Provision { .. } => Op::Provision,
                Request::Load { .. } => Op::Load,
                Request::Unseal { .. } => Op::Unseal,
                Request::PublicKey { .. } => Op::PublicKey,
                Request::Sign { .. } => Op::Sign,
                Request::Random { .. } => Op::Random,
                Request::HealthCheck { .. } => Op::HealthCheck,
                Request::CounterRead { .. } => Op::NvRead,
                Request::CounterIncrement { .. } => Op::NvIncrement,
            };
            let start = std::time::Instant::now();
            // A send fails only when the caller gave up waiting; nothing to do about it.
            match request {
                Request::Provision { state_dir, reply } => {
                    let _ = reply.send(self.provision(&state_dir));
                }
                Request::Load { state_dir, reply } => {
                    let _ = reply.send(self.load(&state_dir));
                }
                Request::Unseal { reply } => {
                    let _ = reply.send(self.unseal());
                }
                Request::PublicKey { role, reply } => {
                    let _ = reply.send(self.public_key(role));
                }
                Request::Sign {
                    role,
                    digest,
                    reply,
                } => {
                    let _ = reply.send(self.sign(role, &digest));
                }
                Request::Random { len, reply } => {
                    let _ = reply.send(self.random(len));
                }
                Request::HealthCheck { reply } => {
                    let _ = reply.send(self.random(8).map(|_| ()));
                }
                Request::CounterRead { reply } => {
                    let _ = reply.send(self.counter_read());
                }
                Request::CounterIncrement { reply } => {
                    let _ = reply.send(self.counter_increment());
                }
            }
            crate::metrics::METRICS.tpm(operation, start.elapsed());
        }
    }

    fn flush(&mut self, handle: impl Into<ObjectHandle>) {
        // Best effort: on failure the slot stays used until the context closes; the caller's
        // own result is what matters.
        let _ = self.context.flush_context(handle.into());
    }

    fn provision(&mut self, state_dir: &Path) -> Result<(), TpmError> {
        blobs::ensure_absent(state_dir)?;
        seal::selection(&self.pcrs)?;
        let primary = primary::create(&mut self.context, self.owner_auth.as_ref())?;
        let created = (|| {
            let tls = keys::create(&mut self.context, primary)?;
            let audit = keys::create(&mut self.context, primary)?;
            let sealed = seal::create(&mut self.context, primary, &self.pcrs)?;
            let pcr_values = seal::read_pcrs(&mut self.context, &self.pcrs)?;
            nv::provision(&mut self.context)?;
            Ok::<_, TpmError>((tls, audit, sealed, pcr_values))
        })();
        self.flush(primary);
        let (tls, audit, sealed, pcr_values) = created?;
        let manifest = Manifest {
            format: 0,
            public_sha256: BTreeMap::new(),
            pcr_bank: "sha256".into(),
            pcrs: self.pcrs.clone(),
            pcr_values,
        };
        blobs::write_all(
            state_dir,
            &[
                (Object::Tls, &tls.0, &tls.1),
                (Object::Audit, &audit.0, &audit.1),
                (Object::ReplicaKey, &sealed.0, &sealed.1),
            ],
            manifest,
        )
    }

    fn load(&mut self, state_dir: &Path) -> Result<(), TpmError> {
        if self.loaded.is_some() {
            return Err(TpmError::AlreadyLoaded);
        }
        // Every file is read and checked before the TPM is touched.
        let manifest = blobs::read_manifest(state_dir)?;
        let tls_blob = blobs::read(state_dir, Object::Tls, &manifest)?;
        let audit_blob = blobs::read(state_dir, Object::Audit, &manifest)?;
        let sealed_blob = blobs::read(state_dir, Object::ReplicaKey, &manifest)?;
        let spki_of = |blob: &blobs::Blob| {
            keys::spki(&blob.public).map_err(|reason| TpmError::BlobCorrupt {
                path: blob.public_path.clone(),
                reason,
            })
        };
        let tls_spki = spki_of(&tls_blob)?;
        let audit_spki = spki_of(&audit_blob)?;
        // Order does not matter to the TPM (a selection is a bitmap).
        let sorted = |pcrs: &[u8]| {
            let mut pcrs = pcrs.to_vec();
            pcrs.sort_unstable();
            pcrs
        };
        if sorted(&manifest.pcrs) != sorted(&self.pcrs) {
            return Err(TpmError::PcrSelectionChanged {
                sealed: manifest.pcrs,
                configured: self.pcrs.clone(),
            });
        }

        let primary = primary::create(&mut self.context, self.owner_auth.as_ref())?;
        let mut tls = None;
        let result = (|| {
            let primary_saved = self
                .context
                .context_save(primary.into())
                .map_err(tpm_err("save the primary key's context"))?;
            tls = Some(keys::load_blob(
                &mut self.context,
                primary,
                tls_blob,
                "load the TLS key",
            )?);
            let audit = self.load_and_save(primary, audit_blob, "load the audit key")?;
            let sealed = self.load_and_save(primary, sealed_blob, "load the sealed replica key")?;
            // After the keys: a cleared TPM is better named by the key that no longer loads.
            let counter = nv::open(&mut self.context)?;
            Ok::<_, TpmError>((primary_saved, audit, sealed, counter))
        })();
        self.flush(primary);
        match (result, tls) {
            (Ok((primary_saved, audit, sealed, counter)), Some(tls)) => {
                self.loaded = Some(Loaded {
                    tls,
                    tls_spki,
                    audit,
                    audit_spki,
                    primary: primary_saved,
                    sealed,
                    pcr_values: manifest.pcr_values,
                    counter,
                });
                Ok(())
            }
            (result, tls) => {
                if let Some(tls) = tls {
                    self.flush(tls);
                }
                result.map(|_| ()).and(Err(TpmError::NotLoaded))
            }
        }
    }

    /// Loads a blob, saves its context in memory and flushes it, freeing the slot.
    fn load_and_save(
        &mut self,
        primary: KeyHandle,
        blob: blobs::Blob,
        operation: &'static str,
    ) -> Result<TpmsContext, TpmError> {
        let handle = keys::load_blob(&mut self.context, primary, blob, operation)?;
        let saved = self
            .context
            .context_save(handle.into())
            .map_err(tpm_err("save a key's context"));
        self.flush(handle);
        saved
    }

    /// Loads a saved context for the duration of `f`.
    fn with_saved<T>(
        &mut self,
        saved: &TpmsContext,
        operation: &'static str,
        f: impl FnOnce(&mut Self, ObjectHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let handle = self
            .context
            .context_load(saved.clone())
            .map_err(tpm_err(operation))?;
        let result = f(self, handle);
        self.flush(handle);
        result
    }

    fn loaded(&self) -> Result<&Loaded, TpmError> {
        self.loaded.as_ref().ok_or(TpmError::NotLoaded)
    }

    fn unseal(&mut self) -> Result<Zeroizing<[u8; REPLICA_KEY_LEN]>, TpmError> {
        let loaded = self.loaded()?;
        let (primary, sealed) = (loaded.primary.clone(), loaded.sealed.clone());
        let pcrs = self.pcrs.clone();
        let outcome = self.with_saved(&primary, "load the primary key", |this, primary| {
            this.with_saved(&sealed, "load the sealed replica key", |this, sealed| {
                Ok(seal::unseal(
                    &mut this.context,
                    primary.into(),
                    sealed,
                    &pcrs,
                ))
            })
        })?;
        match outcome {
            Ok(key) => Ok(key),
            Err(UnsealError::Other(e)) => Err(e),
            Err(UnsealError::PolicyFailed) => Err(TpmError::PcrMismatch {
                changed: self.changed_pcrs(),
            }),
        }
    }

    /// The sealed PCRs whose values differ from those recorded at sealing; all of them when
    /// that cannot be told.
    fn changed_pcrs(&mut self) -> Vec<u8> {
        let recorded = match &self.loaded {
            Some(loaded) => loaded.pcr_values.clone(),
            None => BTreeMap::new(),
        };
        let pcrs = self.pcrs.clone();
        match seal::read_pcrs(&mut self.context, &pcrs) {
            Ok(now) => {
                let changed: Vec<u8> = pcrs
                    .iter()
                    .copied()
                    .filter(|p| recorded.get(p) != now.get(p))
                    .collect();
                if changed.is_empty() {
                    pcrs
                } else {
                    changed
                }
            }
            Err(_) => pcrs,
        }
    }

    fn public_key(&self, role: KeyRole) -> Result<Vec<u8>, TpmError> {
        let loaded = self.loaded()?;
        Ok(match role {
            KeyRole::Tls => loaded.tls_spki.clone(),
            KeyRole::Audit => loaded.audit_spki.clone(),
        })
    }

    fn sign(&mut self, role: KeyRole, digest: &[u8; 32]) -> Result<Vec<u8>, TpmError> {
        let loaded = self.loaded()?;
        match role {
            KeyRole::Tls => {
                let tls = loaded.tls;
                sign::sign_digest(&mut self.context, tls, digest)
            }
            KeyRole::Audit => {
                let audit = loaded.audit.clone();
                self.with_saved(&audit, "load the audit key", |this, key| {
                    sign::sign_digest(&mut this.context, key.into(), digest)
                })
            }
        }
    }

    fn counter_read(&mut self) -> Result<u64, TpmError> {
        let counter = self.loaded()?.counter;
        nv::read(&mut self.context, counter)
    }

    /// Increments the counter and returns its new value.
    fn counter_increment(&mut self) -> Result<u64, TpmError> {
        let counter = self.loaded()?.counter;
        nv::increment(&mut self.context, counter)?;
        nv::read(&mut self.context, counter)
    }

    fn random(&mut self, len: usize) -> Result<Vec<u8>, TpmError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            // TPM2_GetRandom returns at most a digest's worth per call.
            let chunk = (len - out.len()).min(32);
            let bytes = self
                .context
                .get_random(chunk)
                .map_err(tpm_err("get random bytes"))?;
            if bytes.value().is_empty() {
                return Err(TpmError::tpm(
                    "get random bytes",
                    tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
                ));
            }
            out.extend_from_slice(bytes.value());
        }
        out.truncate(len);
        Ok(out)
    }
}
