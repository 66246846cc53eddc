//! migd itself: start-up in the order SPEC §10 and `system` set out (TPM → unseal → replica →
//! audit → listeners), readiness and watchdog, reload on SIGHUP, drain on SIGTERM.
//!
//! Everything fails closed with one line naming the cause: a missing TPM, a changed PCR, a
//! wrong replica key or a broken certificate file stops start-up; nothing falls back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::admin::commands::AdminService;
use crate::admin::server::AdminListener;
use crate::api::upstream::Upstream;
use crate::api::{Api, Appliance};
use crate::audit::{AuditLog, AuditOptions};
use crate::config::Config;
use crate::keys::{derive, AUDIT_KEY_PURPOSE, REPLICA_KEY_PURPOSE};
use crate::listener::{self, Handler, HandlerFuture, ListenerLimits, Peer, Role, SnapshotSource};
use crate::replica::{ReaderPool, Replica};
use crate::system::{self, notify, Sandbox, SignalEvent, Signals};
use crate::tls::{Reloader, TlsSettings};
use crate::tpm::{KeyRole, Tpm, TpmSettings};
use mig_policy::{parse_concept_list, SensitiveCategory, SensitiveCodes};

/// The replica and audit database files inside the state directory.
pub const REPLICA_FILE: &str = "replica.db";
pub const AUDIT_FILE: &str = "audit.db";
/// How often the state directory is polled for registry changes.
const REGISTRY_POLL: Duration = Duration::from_millis(500);
/// Threads for blocking work (replica reads, TPM calls, file I/O).
const BLOCKING_THREADS: usize = 4;
/// How often health is re-checked when systemd asks for no watchdog.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Why migd stopped or could not start. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("process hardening")]
    System(#[from] crate::system::SystemError),
    #[error("TPM")]
    Tpm(#[from] crate::tpm::TpmError),
    #[error("TPM owner auth file {path}")]
    OwnerAuth {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("replica")]
    Replica(#[from] crate::replica::ReplicaError),
    #[error("audit")]
    Audit(#[from] crate::audit::AuditError),
    #[error("certificates and partners")]
    Tls(#[from] Box<crate::tls::TlsError>),
    #[error("sensitive code list")]
    Sensitive(#[from] mig_policy::PolicyError),
    #[error("sensitive code list {path}")]
    SensitiveFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("statistical extracts")]
    Extract(#[from] crate::extract::ExtractError),
    #[error(transparent)]
    Listen(#[from] crate::listener::ListenerError),
    #[error("admin socket")]
    Admin(#[from] crate::admin::server::TransportError),
    #[error("runtime")]
    Runtime(#[source] std::io::Error),
}

/// How long the replica must go without a committed write before patients' records are packed
/// (an import sends one file after another).
const PACK_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The TPM settings a config describes (reads the owner auth file if one is named).
pub fn tpm_settings(config: &Config) -> Result<TpmSettings, ServiceError> {
    let owner_auth = match &config.tpm.owner_auth_file {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| ServiceError::OwnerAuth {
                path: path.clone(),
                source,
            })?;
            let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec();
            Some(Zeroizing::new(trimmed))
        }
    };
    Ok(TpmSettings {
        tcti: config.tpm.tcti.to_string(),
        pcrs: config.tpm.pcrs.indices().to_vec(),
        owner_auth,
    })
}

/// A 32-byte database key that is wiped when dropped.
pub type DatabaseKey = Zeroizing<[u8; 32]>;

/// The keys the sealed secret yields: (replica, audit).
pub fn unseal_keys(tpm: &Tpm) -> Result<(DatabaseKey, DatabaseKey), ServiceError> {
    let secret = tpm.unseal_replica_key()?;
    Ok((
        derive(&secret, REPLICA_KEY_PURPOSE),
        derive(&secret, AUDIT_KEY_PURPOSE),
    ))
}

/// Shipped concept lists plus the practice's (`<category>.txt` files in the extra directory).
pub fn sensitive_codes(extra_dir: Option<&Path>) -> Result<SensitiveCodes, ServiceError> {
    let mut codes = SensitiveCodes::shipped()?;
    let Some(dir) = extra_dir else {
        return Ok(codes);
    };
    for category in SensitiveCategory::ALL {
        let path = dir.join(format!("{}.txt", category.name()));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ServiceError::SensitiveFile { path, source }),
        };
        let extra = parse_concept_list(&path.display().to_string(), &text)?;
        codes = codes.with_extra(category, extra)?;
    }
    Ok(codes)
}

fn listener_limits(config: &Config) -> ListenerLimits {
    let limits = &config.partner_api.limits;
    ListenerLimits {
        max_connections: limits.max_connections,
        max_concurrent_handshakes: limits.max_concurrent_handshakes,
        handshake_timeout: limits.handshake_timeout,
        header_read_timeout: limits.header_read_timeout,
        max_header_bytes: limits.max_header_bytes,
        max_body_bytes: limits.max_body_bytes,
        per_partner_concurrency: limits.per_partner_concurrency,
        client_hello_timeout: limits.client_hello_timeout,
        max_connections_per_source: limits.max_connections_per_source,
        max_connections_per_partner: limits.max_connections_per_partner,
        handshake_rate_per_source: limits.handshake_rate_per_source,
        handshake_burst_per_source: limits.handshake_burst_per_source,
        max_connection_age: limits.max_connection_age,
        shutdown_grace: config.service.shutdown_grace,
        ..ListenerLimits::default()
    }
}

struct UpstreamHandler {
    upstream: Upstream,
}

impl Handler for UpstreamHandler {
    fn handle(&self, peer: Peer, request: Request<Bytes>) -> HandlerFuture<'_> {
        Box::pin(async move {
            let Some(client) = peer.upstream else {
                return crate::api::plain_outcome(
                    http::StatusCode::FORBIDDEN,
                    "forbidden",
                    "Not a registered clinical system.",
                );
            };
            let response: Response<Bytes> = self.upstream.handle(&client.name, request).await;
            response
        })
    }
}

/// Runs migd until SIGTERM/SIGINT. Blocking; builds its own runtime.
pub fn run(config_path: &Path) -> Result<(), ServiceError> {
    let config = Config::load(config_path)?;
    system::harden_process(config.service.user.as_deref())?;
    notify::status("opening the TPM").ok();

    let tpm = Tpm::connect(&tpm_settings(&config)?)?;
    tpm.load(&config.state_dir)?;
    let (replica_key, audit_key) = unseal_keys(&tpm)?;
    let replica_path = config.state_dir.join(REPLICA_FILE);
    let replica = Replica::open(&replica_path, &replica_key)?;
    let readers = Arc::new(ReaderPool::new(replica_path, replica_key)?);
    let sensitive = Arc::new(sensitive_codes(
        config.sensitive.extra_codes_dir.as_deref(),
    )?);
    // Read before the sandbox closes the file system; a configured list that is missing or
    // broken stops start-up.
    let conditions = match &config.extracts.condition_types_file {
        Some(path) => crate::extract::ConditionMap::with_practice_file(path)?,
        None => crate::extract::ConditionMap::shipped()?,
    };

    // Read before the sandbox hides /proc/cmdline and /etc; it changes only with a reboot.
    let release = crate::metrics::Release::read();
    // Every thread started from here on (audit writer, runtime workers) inherits the sandbox.
    let report = Sandbox::for_config(&config).restrict_current_thread()?;
    tracing::info!("{}", report.summary());

    let audit_options = AuditOptions {
        checkpoint_every: config.audit.checkpoint_every_records,
        checkpoint_interval: config.audit.checkpoint_every,
        ..AuditOptions::default()
    };
    let audit = Arc::new(AuditLog::open(
        &config.state_dir.join(AUDIT_FILE),
        &audit_key,
        tpm.signer(KeyRole::Audit)?,
        tpm.audit_counter(),
        audit_options,
    )?);
    let tls_settings = TlsSettings {
        tls12: config.partner_api.tls12,
        crl_expired: match config.partner_api.crl_expired {
            crate::config::CrlExpiredPolicy::Refuse => crate::tls::CrlExpiredPolicy::Refuse,
            crate::config::CrlExpiredPolicy::Warn => crate::tls::CrlExpiredPolicy::Warn,
        },
    };
    let tls_signer = tpm.signer(KeyRole::Tls)?;
    let reloader =
        Reloader::new(&config.state_dir, tls_signer.clone(), tls_settings).map_err(Box::new)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Replica reads and record assembly run here; more threads than a few per core only
        // add memory (each holds a SQLite connection and allocator caches), not throughput.
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("migd")
        .build()
        .map_err(ServiceError::Runtime)?;
    let result = runtime.block_on(serve(
        config,
        tpm,
        replica,
        readers,
        sensitive,
        audit.clone(),
        reloader,
        tls_signer,
        conditions,
        release,
    ));
    // The final checkpoint, whether serving ended cleanly or not.
    if let Err(e) = audit.shutdown_blocking() {
        tracing::error!("final audit checkpoint: {}", crate::error::Chain(&e));
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    config: Config,
    tpm: Tpm,
    replica: Replica,
    readers: Arc<ReaderPool>,
    sensitive: Arc<SensitiveCodes>,
    audit: Arc<AuditLog>,
    reloader: Arc<Reloader>,
    tls_signer: Arc<dyn crate::keys::Signer>,
    conditions: crate::extract::ConditionMap,
    release: crate::metrics::Release,
) -> Result<(), ServiceError> {
    let (shutdown_tx, shutdown) = watch::channel(false);
    let healthy = Arc::new(AtomicBool::new(true));
    let ready = Arc::new(AtomicBool::new(false));
    let replica = Arc::new(Mutex::new(replica));
    // Stopped and joined when this function returns, before migd exits.
    let _packer = crate::replica::spawn_packer(replica.clone(), PACK_SETTLE)
        .map_err(ServiceError::Runtime)?;
    let limits = listener_limits(&config);

    let partner_tcp = bind(config.partner_api.listen).await?;
    let health_flag = healthy.clone();
    let api = Api {
        appliance: Appliance {
            ods: config.appliance.ods.as_str().to_owned(),
            name: config.appliance.name.clone(),
            asid: config.appliance.asid.as_str().to_owned(),
            fhir_base: config.appliance.fhir_base.as_str().to_owned(),
        },
        replica: readers.clone(),
        records: Default::default(),
        audit: audit.clone(),
        sensitive,
        health: {
            let reloader = reloader.clone();
            let state_dir = config.state_dir.clone();
            Arc::new(move || {
                if !health_flag.load(Ordering::SeqCst) {
                    return Err("the TPM or replica check fails".into());
                }
                registry_health(&reloader.current(), &state_dir).map_or(Ok(()), Err)
            })
        },
    };
    let mut servers = vec![listener::serve(
        partner_tcp,
        SnapshotSource::new(reloader.subscribe(), Role::Partner),
        limits.clone(),
        Arc::new(crate::metrics::Metered(api)),
        shutdown.clone(),
    )];
    if let Some(upstream) = &config.upstream {
        let tcp = bind(upstream.listen).await?;
        servers.push(listener::serve(
            tcp,
            SnapshotSource::new(reloader.subscribe(), Role::Upstream),
            ListenerLimits {
                max_body_bytes: 64 * 1024 * 1024,
                ..limits.clone()
            },
            Arc::new(UpstreamHandler {
                upstream: Upstream {
                    replica: replica.clone(),
                },
            }),
            shutdown.clone(),
        ));
    }
    let poll = reloader.spawn_poll(REGISTRY_POLL, shutdown.clone());

    let fhir_host = config.appliance.fhir_base.host().to_owned();
    let admin = Arc::new(
        AdminService::new(
            replica,
            readers.clone(),
            audit.clone(),
            tpm.public_key_spki_der(KeyRole::Audit)?,
            tpm.audit_counter(),
            tls_signer,
            reloader.clone(),
            ready.clone(),
            healthy.clone(),
            fhir_host,
        )
        .with_extracts(crate::admin::extract::ExtractSettings {
            conditions,
            sub_icb: config.extracts.sub_icb.clone(),
            practice: config.appliance.name.clone(),
            ods: config.appliance.ods.as_str().to_owned(),
            asid: config.appliance.asid.as_str().to_owned(),
            audit_signer: tpm.signer(KeyRole::Audit)?,
        }),
    );
    let admin_listener = AdminListener::bind(&config.admin.socket, &config.admin.group)?;
    let mut admin_shutdown = shutdown.clone();
    let admin_task = tokio::spawn(admin_listener.serve(admin, async move {
        let _ = admin_shutdown.wait_for(|stop| *stop).await;
    }));

    // Health: the TPM answers, the replica reads, the listeners run.
    let health_check = {
        let tpm = tpm.clone();
        let readers = readers.clone();
        move || {
            let tpm = tpm.clone();
            let readers = readers.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    // One small read proves the file, key and a pooled connection work; a count
                    // would scan every row of a large replica at every check.
                    tpm.health_check().is_ok() && readers.with(|r| r.generation()).is_ok()
                })
                .await
                .unwrap_or(false)
            }
        }
    };
    let health_task = {
        let healthy = healthy.clone();
        let watchdog_reloader = reloader.clone();
        let watchdog_state_dir = config.state_dir.clone();
        let check = health_check.clone();
        tokio::spawn(async move {
            let interval = notify::watchdog_interval();
            match interval {
                Some(interval) => {
                    // A registry file that is not applied does not stop the pings (a restart
                    // would not fix it) but is shown in the unit's status line, by name, at
                    // every healthy tick (so no other STATUS= outlives it) but the one right
                    // after a recovery, where the loop itself says "serving".
                    let shown = Arc::new(Mutex::new((true, None::<String>)));
                    notify::watchdog_loop(interval, move || {
                        let check = check.clone();
                        let healthy = healthy.clone();
                        let reloader = watchdog_reloader.clone();
                        let state_dir = watchdog_state_dir.clone();
                        let shown = shown.clone();
                        async move {
                            let ok = check().await;
                            healthy.store(ok, Ordering::SeqCst);
                            let registry = registry_health(&reloader.current(), &state_dir);
                            let mut shown = shown.lock().unwrap_or_else(|p| p.into_inner());
                            let (was_ok, line) = &mut *shown;
                            if ok && *was_ok {
                                match &registry {
                                    Some(problem) => notify::status(problem).ok(),
                                    None if line.is_some() => notify::status("serving").ok(),
                                    None => None,
                                };
                                *line = registry;
                            } else {
                                *line = None;
                            }
                            *was_ok = ok;
                            ok
                        }
                    })
                    .await
                }
                None => loop {
                    tokio::time::sleep(HEALTH_INTERVAL).await;
                    let ok = check().await;
                    match (healthy.swap(ok, Ordering::SeqCst), ok) {
                        (true, false) => {
                            system::journal::event!(error, HEALTH_FAILING, "health check failed")
                        }
                        (false, true) => system::journal::event!(
                            info,
                            HEALTH_RECOVERED,
                            "health check passes again"
                        ),
                        _ => {}
                    }
                },
            }
        })
    };

    if let Some(address) = config.metrics.listen {
        metrics_listener(
            address,
            &config,
            &audit,
            &readers,
            &reloader,
            &ready,
            &healthy,
            release,
            shutdown.clone(),
        )
        .await;
    }

    // Handlers before readiness: a SIGHUP or SIGTERM sent the moment READY=1 (or the admin
    // socket's `ready`) is seen would otherwise hit the default action and kill migd.
    let mut signals = Signals::install()?;
    ready.store(true, Ordering::SeqCst);
    notify::ready().ok();
    notify::status("serving").ok();
    system::journal::event!(
        info,
        READY,
        listen = %config.partner_api.listen,
        "migd ready"
    );

    while let SignalEvent::Reload = signals.recv().await {
        notify::reloading().ok();
        let reloader = reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(snapshot)) => system::journal::event!(
                info,
                RELOAD_APPLIED,
                generation = snapshot.generation,
                "reloaded"
            ),
            Ok(Err(e)) => system::journal::event!(
                warn,
                RELOAD_REJECTED,
                "reload rejected, the previous configuration keeps serving: {}",
                crate::error::Chain(&e)
            ),
            Err(_) => tracing::error!("reload task failed"),
        }
        notify::ready().ok();
    }
    system::journal::event!(info, STOPPING, "stopping: draining in-flight requests");
    notify::stopping().ok();
    let _ = shutdown_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    poll.abort();
    health_task.abort();
    let _ = admin_task.await;
    system::journal::event!(info, STOPPED, "stopped");
    Ok(())
}

/// Starts the fleet metrics listener. A failure to bind is logged, not fatal: a box that cannot
/// serve metrics still serves records, and the fleet's scraper sees it as down.
#[allow(clippy::too_many_arguments)]
async fn metrics_listener(
    address: std::net::SocketAddr,
    config: &Config,
    audit: &Arc<AuditLog>,
    readers: &Arc<ReaderPool>,
    reloader: &Arc<Reloader>,
    ready: &Arc<AtomicBool>,
    healthy: &Arc<AtomicBool>,
    release: crate::metrics::Release,
    shutdown: watch::Receiver<bool>,
) {
    let tcp = match tokio::net::TcpListener::bind(address).await {
        Ok(tcp) => tcp,
        Err(error) => {
            system::journal::event!(
                error,
                METRICS_UNAVAILABLE,
                %address,
                %error,
                "metrics listener not started; serving continues without it"
            );
            return;
        }
    };
    let (audit, readers, reloader) = (audit.clone(), readers.clone(), reloader.clone());
    let (ready, healthy) = (ready.clone(), healthy.clone());
    let state_dir = config.state_dir.clone();
    let counted = Mutex::new(None::<(i64, crate::replica::ReplicaStats)>);
    let gauges = move || {
        let snapshot = reloader.current();
        let mut g = crate::metrics::Gauges {
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            healthy: healthy.load(Ordering::SeqCst) && snapshot.problems.is_empty(),
            ready: ready.load(Ordering::SeqCst),
            registry_files_not_applied: snapshot.problems.len() as u64,
            audit_queue_depth: audit.queue_depth() as u64,
            audit_alerts_unacknowledged: audit
                .reader()
                .and_then(|r| r.list_alerts(false))
                .ok()
                .map(|alerts| alerts.len() as u64),
            appliance_cert_not_after: std::fs::read(state_dir.join(crate::registry::CHAIN_FILE))
                .ok()
                .and_then(|pem| {
                    use rustls_pki_types::pem::PemObject;
                    rustls_pki_types::CertificateDer::pem_slice_iter(&pem).next()
                })
                .and_then(Result::ok)
                .and_then(|der| crate::registry::cert_not_after(&der)),
            crls: snapshot
                .crls
                .iter()
                .map(|(path, info)| {
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    (name.into_owned(), info.next_update)
                })
                .collect(),
            ..Default::default()
        };
        // Counting scans the replica: only again once a write has raised its generation.
        let mut cached = counted.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(generation) = readers.with(|r| r.generation()) {
            if cached.as_ref().is_none_or(|(seen, _)| *seen != generation) {
                *cached = readers.with(|r| r.stats()).ok().map(|s| (generation, s));
            }
        }
        if let Some((_, stats)) = cached.as_ref() {
            g.replica_patients = Some(stats.patients);
            g.replica_resources = Some(stats.resources);
        }
        drop(cached);
        g.replica_files(&state_dir.join(REPLICA_FILE));
        g
    };
    let handler = Arc::new(crate::metrics::MetricsHandler {
        gauges: Arc::new(gauges),
        release,
    });
    tracing::info!(%address, "serving fleet metrics at /metrics");
    tokio::spawn(crate::metrics::serve(tcp, handler, shutdown));
}

/// One line naming every registry file that is not applied (paths relative to the state
/// directory: `/healthz` answers partners too), or `None` when all applied.
pub fn registry_health(snapshot: &crate::tls::Snapshot, state_dir: &Path) -> Option<String> {
    if snapshot.problems.is_empty() {
        return None;
    }
    let mut files: Vec<String> = snapshot
        .problems
        .iter()
        .map(|p| {
            p.path
                .strip_prefix(state_dir)
                .unwrap_or(&p.path)
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    files.dedup();
    Some(format!(
        "registry files not applied (see `migctl check`): {}",
        files.join(", ")
    ))
}

async fn bind(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ServiceError> {
    Ok(listener::bind(address).await?)
}
