//! Immutable snapshots of everything the listeners need (TLS configurations, partners,
//! upstreams) and the `Reloader` that rebuilds one from the state directory and swaps it in.
//!
//! Each store file applies on its own (see `registry::load`): a broken or unreadable one is
//! skipped, logged and kept in `Snapshot::problems` (for `/healthz`, the watchdog status and
//! `migctl check`) while every other change applies. New connections get the new
//! configuration; open connections are re-checked against it at their next request (the
//! listener compares the generation and re-runs the snapshot's client verifier on the peer's
//! chain).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;
use tokio::sync::watch;

use super::CrlExpiredPolicy;
use super::{certified_key, partner_server_config, upstream_server_config, TlsError, TlsSettings};
use crate::keys::Signer;
use crate::registry::{
    self, Applied, CrlInfo, Fingerprint, PartnerRegistry, Problem, UpstreamRegistry,
};

/// One consistent view of the state directory, shared by every connection that starts while
/// it is current.
#[derive(Debug)]
pub struct Snapshot {
    /// Server configuration for the partner listener.
    pub partner_tls: Arc<ServerConfig>,
    /// Server configuration for the upstream (clinical system) listener.
    pub upstream_tls: Arc<ServerConfig>,
    /// The client verifiers inside those configurations, to re-check open connections.
    pub partner_verifier: Arc<dyn ClientCertVerifier>,
    pub upstream_verifier: Arc<dyn ClientCertVerifier>,
    pub partners: Arc<PartnerRegistry>,
    pub upstreams: Arc<UpstreamRegistry>,
    /// Installed CRLs (file, summary), for status and `migctl check`.
    pub crls: Vec<(PathBuf, CrlInfo)>,
    /// Counts successful loads from 1, so logs and tests can tell snapshots apart.
    pub generation: u64,
    /// Store files that were not applied, and what was done instead.
    pub problems: Vec<Problem>,
    fingerprint: Fingerprint,
    /// What the next load falls back on for a chain or CRL file that becomes unreadable.
    applied: Applied,
}

/// An appliance certificate this close to its end is logged at every load (SPEC §14).
const CERTIFICATE_WARNING_SECONDS: i64 = 30 * 86_400;

/// Builds a snapshot from `state_dir`. `previous` lets configurations whose inputs did not
/// change be reused, so that a partner-only change keeps TLS session state (resumption) alive.
pub fn build_snapshot(
    state_dir: &Path,
    signer: &Arc<dyn Signer>,
    settings: &TlsSettings,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, TlsError> {
    let fingerprint = registry::fingerprint(state_dir);
    let files = registry::load(state_dir, previous.map(|p| &p.applied));
    let mut problems = files.problems;
    let now = SystemTime::now();
    for problem in &problems {
        crate::system::journal::event!(
            warn,
            REGISTRY_FILE_NOT_APPLIED,
            file = %problem.path.display(),
            "{problem}"
        );
    }

    let crls: Vec<(PathBuf, CrlInfo)> = files
        .crls
        .iter()
        .map(|(path, _, info)| (path.clone(), info.clone()))
        .collect();
    for (path, info) in &crls {
        if info.expired_at(now) {
            let consequence = match settings.crl_expired {
                CrlExpiredPolicy::Refuse => {
                    "partners under this CA are refused until it is renewed"
                }
                CrlExpiredPolicy::Warn => "still applied (crl_expired = \"warn\")",
            };
            crate::system::journal::event!(
                warn,
                CRL_EXPIRED,
                file = %path.display(),
                issuer = %info.issuer,
                "CRL has expired: {consequence}"
            );
        }
    }

    // A chain that does not fit the key is as unusable as an unreadable one: the previous
    // chain keeps serving. At start there is none, and migd refuses to start.
    let mut chain = files.chain;
    let key = match certified_key(&chain, signer.clone(), now) {
        Ok(key) => key,
        Err(error) => match previous.filter(|p| !p.applied.chain.is_empty()) {
            Some(previous) => {
                let path = state_dir.join(registry::CHAIN_FILE);
                tracing::warn!(file = %path.display(), error = %crate::error::Chain(&error), "appliance certificate not applied");
                problems.push(Problem {
                    path,
                    error: crate::error::Chain(&error).to_string(),
                    consequence: "the previous appliance certificate keeps serving".into(),
                });
                chain = previous.applied.chain.clone();
                certified_key(&chain, signer.clone(), now)?
            }
            None => return Err(error),
        },
    };
    if let Some(not_after) = chain.first().and_then(|c| registry::cert_not_after(c)) {
        let now_unix = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let left = not_after - now_unix;
        if left < CERTIFICATE_WARNING_SECONDS {
            crate::system::journal::event!(
                warn,
                CERTIFICATE_EXPIRING,
                not_after,
                days_left = left / 86_400,
                "the appliance certificate expires within 30 days; renew it (`migctl csr`)"
            );
        }
    }
    let same_certs = previous.filter(|p| p.fingerprint.certificates == fingerprint.certificates);
    let (partner_tls, partner_verifier) = match same_certs {
        Some(previous) => (
            previous.partner_tls.clone(),
            previous.partner_verifier.clone(),
        ),
        None => {
            let trust: Vec<_> = files.trust.iter().map(|(_, c)| c.clone()).collect();
            let crl_ders: Vec<_> = files.crls.iter().map(|(_, d, _)| d.clone()).collect();
            partner_server_config(key.clone(), &trust, crl_ders, settings)?
        }
    };
    let (upstream_tls, upstream_verifier) =
        match same_certs.filter(|p| p.fingerprint.upstreams == fingerprint.upstreams) {
            Some(previous) => (
                previous.upstream_tls.clone(),
                previous.upstream_verifier.clone(),
            ),
            None => upstream_server_config(key, files.upstreams.pins().copied(), settings)?,
        };
    Ok(Snapshot {
        partner_tls,
        upstream_tls,
        partner_verifier,
        upstream_verifier,
        partners: Arc::new(files.partners),
        upstreams: Arc::new(files.upstreams),
        crls,
        generation: previous.map_or(1, |p| p.generation + 1),
        problems,
        fingerprint,
        applied: Applied {
            chain,
            crls: files.crls,
        },
    })
}

/// Rebuilds and publishes snapshots: on `reload()` (SIGHUP, admin request) and when a poll of
/// the state directory sees a change.
#[derive(Debug)]
pub struct Reloader {
    state_dir: PathBuf,
    signer: Arc<dyn Signer>,
    settings: TlsSettings,
    sender: watch::Sender<Arc<Snapshot>>,
    /// Serialises reloads (a poll and a SIGHUP at once) and remembers the fingerprint the last
    /// attempt saw, including failed ones, so a broken file is reported once, not every poll.
    last_seen: Mutex<Fingerprint>,
}

impl Reloader {
    /// Loads the first snapshot; failing here is fatal (migd must not start half-configured).
    pub fn new(
        state_dir: &Path,
        signer: Arc<dyn Signer>,
        settings: TlsSettings,
    ) -> Result<Arc<Reloader>, TlsError> {
        let snapshot = build_snapshot(state_dir, &signer, &settings, None)?;
        let last_seen = Mutex::new(snapshot.fingerprint.clone());
        let (sender, _) = watch::channel(Arc::new(snapshot));
        Ok(Arc::new(Reloader {
            state_dir: state_dir.to_path_buf(),
            signer,
            settings,
            sender,
            last_seen,
        }))
    }

    /// The snapshot new connections get now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    /// A receiver that always holds the current snapshot (what `listener::serve` takes).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// Rebuilds the snapshot from the state directory and publishes it. On error the current
    /// snapshot stays and the error (naming the file) is logged and returned. Blocking file
    /// I/O and certificate parsing: call from a blocking thread (`spawn_blocking`).
    pub fn reload(&self) -> Result<Arc<Snapshot>, TlsError> {
        // Held for the whole rebuild: two reloads at once would race to publish.
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.reload_locked(&mut last_seen)
    }

    /// Reloads only if a store file changed since the last attempt. `Ok(None)`: no change.
    pub fn reload_if_changed(&self) -> Result<Option<Arc<Snapshot>>, TlsError> {
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = registry::fingerprint(&self.state_dir);
        if now == *last_seen {
            return Ok(None);
        }
        self.reload_locked(&mut last_seen).map(Some)
    }

    fn reload_locked(&self, last_seen: &mut Fingerprint) -> Result<Arc<Snapshot>, TlsError> {
        let current = self.current();
        match build_snapshot(
            &self.state_dir,
            &self.signer,
            &self.settings,
            Some(&current),
        ) {
            Ok(snapshot) => {
                *last_seen = snapshot.fingerprint.clone();
                let snapshot = Arc::new(snapshot);
                tracing::info!(
                    generation = snapshot.generation,
                    partners = snapshot.partners.partners().len(),
                    upstreams = snapshot.upstreams.len(),
                    crls = snapshot.crls.len(),
                    files_not_applied = snapshot.problems.len(),
                    new_tls_sessions = !Arc::ptr_eq(&snapshot.partner_tls, &current.partner_tls),
                    "reloaded certificates, CRLs and partners"
                );
                self.sender.send_replace(snapshot.clone());
                Ok(snapshot)
            }
            Err(error) => {
                *last_seen = registry::fingerprint(&self.state_dir);
                tracing::warn!(
                    error = %crate::error::Chain(&error),
                    generation = current.generation,
                    "reload rejected; still serving the previous certificates, CRLs and partners"
                );
                Err(error)
            }
        }
    }

    /// Polls the state directory every `interval` (500 ms in migd) and reloads on change, until
    /// `shutdown` turns true.
    pub fn spawn_poll(
        self: &Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let reloader = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return;
                        }
                        continue;
                    }
                }
                let reloader = reloader.clone();
                // Failures are logged inside reload_if_changed; the old snapshot stays.
                if let Err(error) =
                    tokio::task::spawn_blocking(move || reloader.reload_if_changed()).await
                {
                    tracing::error!(%error, "state directory poll task failed");
                }
            }
        })
    }
}
