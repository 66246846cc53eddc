//! The commands migd answers on the admin socket. Every command that changes something or
//! reads the audit trail is itself audited, naming the operator by uid.
//!
//! Requests and answers are the typed ones of `mig-admin-proto`. A large NDJSON import arrives as `import-begin`, any number of `import-chunk`
//! (whole lines), and `import-commit` on one connection: one transaction on a dedicated
//! thread, rolled back if the connection goes away first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mig_admin_proto::{self as proto, AdminError, Command, ErrorCode, Request, Response};
use tokio::sync::oneshot;

use super::peer::PeerCred;
use super::server::{AdminHandler, HandlerFuture};
use crate::audit::{AuditLog, AuditRecord, Counter, Decision};
use crate::keys::Signer;
use crate::replica::{ImportSummary, IngestError, ReaderPool, Replica};
use crate::tls::Reloader;

/// What the admin commands reach.
pub struct AdminService {
    pub replica: Arc<Mutex<Replica>>,
    pub readers: Arc<ReaderPool>,
    pub audit: Arc<AuditLog>,
    pub audit_public_key: Vec<u8>,
    /// The TPM's audit counter, which `audit verify` compares the last checkpoint with.
    pub audit_counter: Arc<dyn Counter>,
    pub tls_signer: Arc<dyn Signer>,
    pub reloader: Arc<Reloader>,
    pub ready: Arc<AtomicBool>,
    pub healthy: Arc<AtomicBool>,
    pub started: Instant,
    pub fhir_host: String,
    // One import in progress per connection; the lock guards only this map.
    imports: Mutex<HashMap<u64, ImportSession>>,
    /// Statistical extracts (SPEC §12); `None` answers `extract-unavailable`.
    extracts: Option<Arc<super::extract::ExtractSettings>>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminService")
    }
}

enum ImportStep {
    Chunk(String, oneshot::Sender<Result<u64, IngestError>>),
    Commit(oneshot::Sender<Result<ImportSummary, IngestError>>),
}

struct ImportSession {
    name: String,
    steps: SyncSender<ImportStep>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> AdminError {
    AdminError::new(code, message)
}

/// The response to a `C`: the answer type is `C`'s own, so a command cannot be answered with
/// another command's answer.
fn respond<C: Command>(result: Result<C::Answer, AdminError>) -> Response {
    Response::from(result)
}

fn operator(peer: &PeerCred) -> String {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    format!("uid={}({name})", peer.uid)
}

impl AdminService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        replica: Arc<Mutex<Replica>>,
        readers: Arc<ReaderPool>,
        audit: Arc<AuditLog>,
        audit_public_key: Vec<u8>,
        audit_counter: Arc<dyn Counter>,
        tls_signer: Arc<dyn Signer>,
        reloader: Arc<Reloader>,
        ready: Arc<AtomicBool>,
        healthy: Arc<AtomicBool>,
        fhir_host: String,
    ) -> AdminService {
        AdminService {
            replica,
            readers,
            audit,
            audit_public_key,
            audit_counter,
            tls_signer,
            reloader,
            ready,
            healthy,
            started: Instant::now(),
            fhir_host,
            imports: Mutex::new(HashMap::new()),
            extracts: None,
        }
    }

    /// Enables `extract-fit-notes`.
    pub fn with_extracts(mut self, settings: super::extract::ExtractSettings) -> AdminService {
        self.extracts = Some(Arc::new(settings));
        self
    }

    /// Records a permitted admin action and returns its sequence number.
    pub(super) async fn audited_seq(
        &self,
        peer: &PeerCred,
        action: String,
    ) -> Result<u64, AdminError> {
        self.audit
            .append(AuditRecord::admin_action(
                &operator(peer),
                &action,
                Decision::Permit,
            ))
            .await
            .map_err(|e| {
                error(
                    ErrorCode::AuditUnavailable,
                    format!(
                        "the audit trail cannot be written: {}",
                        crate::error::Chain(&e)
                    ),
                )
            })
    }

    /// Records an admin action; the command fails if the audit cannot be written.
    pub(super) async fn audited(
        &self,
        peer: &PeerCred,
        action: String,
        permitted: bool,
    ) -> Result<(), AdminError> {
        let decision = if permitted {
            Decision::Permit
        } else {
            Decision::Refuse
        };
        self.audit
            .append(AuditRecord::admin_action(
                &operator(peer),
                &action,
                decision,
            ))
            .await
            .map(|_| ())
            .map_err(|e| {
                error(
                    ErrorCode::AuditUnavailable,
                    format!(
                        "the audit trail cannot be written: {}",
                        crate::error::Chain(&e)
                    ),
                )
            })
    }

    async fn dispatch(&self, peer: PeerCred, request: Request) -> Response {
        match request {
            Request::Status(_) => respond::<proto::Status>(Ok(self.status().await)),
            Request::Reload(_) => respond::<proto::Reload>(self.reload(&peer).await),
            Request::ImportBegin(r) => {
                respond::<proto::ImportBegin>(self.import_begin(&peer, r.name).await)
            }
            Request::ImportChunk(r) => {
                respond::<proto::ImportChunk>(self.import_chunk(&peer, r.ndjson).await)
            }
            Request::ImportCommit(_) => {
                respond::<proto::ImportCommit>(self.import_commit(&peer).await)
            }
            Request::AuditVerify(_) => {
                respond::<proto::AuditVerify>(self.audit_verify(&peer).await)
            }
            Request::AuditExport(r) => {
                respond::<proto::AuditExport>(self.audit_export(&peer, r.since).await)
            }
            Request::AuditPatient(r) => {
                respond::<proto::AuditPatient>(self.audit_patient(&peer, r.nhs_number).await)
            }
            Request::AlertsList(r) => {
                respond::<proto::AlertsList>(self.alerts_list(&peer, r.all).await)
            }
            Request::AlertsAck(r) => respond::<proto::AlertsAck>(if r.note.trim().is_empty() {
                Err(error(
                    ErrorCode::BadRequest,
                    "alerts-ack needs id and a non-empty note",
                ))
            } else {
                self.alerts_ack(&peer, r.id, r.note).await
            }),
            Request::ExtractFitNotes(r) => {
                respond::<proto::ExtractFitNotes>(match self.extracts.clone() {
                    Some(settings) => super::extract::fit_notes(self, settings, &peer, r).await,
                    None => Err(error(
                        ErrorCode::ExtractUnavailable,
                        "this migd was started without statistical extracts",
                    )),
                })
            }
            // `migctl update install` records each step of an update (SPEC §14) here.
            Request::UpdateStep(r) => {
                respond::<proto::UpdateStep>(if !r.step.trim().is_empty() && r.step.len() <= 1024 {
                    self.audited(&peer, format!("update: {}", r.step), r.ok)
                        .await
                        .map(|()| proto::Empty {})
                } else {
                    Err(error(
                        ErrorCode::BadRequest,
                        "update-step needs a step (1 to 1024 characters)",
                    ))
                })
            }
            Request::Csr(r) => respond::<proto::Csr>(self.csr(&peer, r.subject).await),
        }
    }

    async fn status(&self) -> proto::StatusAnswer {
        let readers = self.readers.clone();
        let replica = tokio::task::spawn_blocking(move || readers.with(|r| r.stats()))
            .await
            .ok()
            .and_then(Result::ok);
        let snapshot = self.reloader.current();
        let stats = self.audit.stats();
        // For the console's status screen; unknown (null) rather than an error if unreadable.
        let (alerts_waiting, last_import) = match self
            .blocking_audit_read(|r| Ok((r.alerts_waiting()?, r.last_import()?)))
            .await
        {
            Ok((waiting, last)) => (Some(waiting), last),
            Err(_) => (None, None),
        };
        proto::StatusAnswer {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: self.ready.load(Ordering::SeqCst),
            healthy: self.healthy.load(Ordering::SeqCst),
            uptime_seconds: self.started.elapsed().as_secs(),
            replica: replica.map(|r| proto::ReplicaStats {
                patients: r.patients,
                resources: r.resources,
                records_pending: r.records_pending,
            }),
            audit: proto::AuditStats {
                records: stats.records,
                commits: stats.commits,
                checkpoints: stats.checkpoints,
                failed_commits: stats.failed_commits,
                failed_checkpoints: stats.failed_checkpoints,
            },
            partners: snapshot
                .partners
                .partners()
                .iter()
                .map(|p| proto::PartnerSummary {
                    ods: p.agreement.ods.clone(),
                    name: p.agreement.name.clone(),
                    partner_type: p.agreement.partner_type.name().to_owned(),
                    expires: p.agreement.expires.map(|d| d.to_string()),
                })
                .collect(),
            upstreams: snapshot.upstreams.len() as u64,
            crls: snapshot.crls.len() as u64,
            snapshot_generation: snapshot.generation,
            registry_problems: snapshot
                .problems
                .iter()
                .map(|p| proto::RegistryProblem {
                    file: p.path.display().to_string(),
                    error: p.error.clone(),
                    consequence: p.consequence.clone(),
                })
                .collect(),
            alerts_waiting,
            last_import,
        }
    }

    async fn reload(&self, peer: &PeerCred) -> Result<proto::ReloadAnswer, AdminError> {
        let reloader = self.reloader.clone();
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|_| error(ErrorCode::Internal, "reload task failed"))?;
        self.audited(
            peer,
            format!(
                "reload: {}",
                if result.is_ok() {
                    "applied"
                } else {
                    "rejected"
                }
            ),
            result.is_ok(),
        )
        .await?;
        match result {
            Ok(snapshot) => Ok(proto::ReloadAnswer {
                generation: snapshot.generation,
            }),
            Err(e) => Err(error(
                ErrorCode::ReloadRejected,
                format!(
                    "{}; the previous configuration keeps serving",
                    crate::error::Chain(&e)
                ),
            )),
        }
    }

    async fn import_begin(
        &self,
        peer: &PeerCred,
        name: String,
    ) -> Result<proto::Empty, AdminError> {
        let (steps, receiver) = sync_channel::<ImportStep>(1);
        {
            let mut imports = self
                .imports
                .lock()
                .map_err(|_| error(ErrorCode::Internal, "import table poisoned"))?;
            if imports.contains_key(&peer.connection) {
                return Err(error(
                    ErrorCode::BadRequest,
                    "an import is already in progress on this connection",
                ));
            }
            imports.insert(
                peer.connection,
                ImportSession {
                    name: name.clone(),
                    steps,
                },
            );
        }
        let replica = self.replica.clone();
        // The transaction lives on this thread; dropping the channel rolls it back.
        std::thread::spawn(move || {
            let Ok(mut replica) = replica.lock() else {
                return;
            };
            let mut import = match replica.begin_import() {
                Ok(import) => import,
                Err(e) => {
                    if let Ok(ImportStep::Chunk(_, reply)) = receiver.recv() {
                        let _ = reply.send(Err(e));
                    }
                    return;
                }
            };
            while let Ok(step) = receiver.recv() {
                match step {
                    ImportStep::Chunk(text, reply) => {
                        let fed = import.feed(text.as_bytes()).map(|()| import.lines());
                        let failed = fed.is_err();
                        let _ = reply.send(fed);
                        if failed {
                            return;
                        }
                    }
                    ImportStep::Commit(reply) => {
                        let _ = reply.send(import.commit());
                        return;
                    }
                }
            }
        });
        tracing::info!(operator = %operator(peer), %name, "import started");
        Ok(proto::Empty {})
    }

    fn session_sender(
        &self,
        peer: &PeerCred,
    ) -> Result<(String, SyncSender<ImportStep>), AdminError> {
        let imports = self
            .imports
            .lock()
            .map_err(|_| error(ErrorCode::Internal, "import table poisoned"))?;
        imports
            .get(&peer.connection)
            .map(|s| (s.name.clone(), s.steps.clone()))
            .ok_or_else(|| {
                error(
                    ErrorCode::BadRequest,
                    "no import in progress on this connection (send import-begin)",
                )
            })
    }

    fn end_session(&self, peer: &PeerCred) {
        if let Ok(mut imports) = self.imports.lock() {
            imports.remove(&peer.connection);
        }
    }

    async fn import_chunk(
        &self,
        peer: &PeerCred,
        ndjson: String,
    ) -> Result<proto::ImportChunkAnswer, AdminError> {
        let (name, steps) = self.session_sender(peer)?;
        let (reply, answer) = oneshot::channel();
        let sent = tokio::task::spawn_blocking(move || {
            steps.send(ImportStep::Chunk(ndjson, reply)).is_ok()
        })
        .await
        .unwrap_or(false);
        let result = if sent { answer.await.ok() } else { None };
        match result {
            Some(Ok(lines)) => Ok(proto::ImportChunkAnswer { lines }),
            Some(Err(e)) => {
                self.end_session(peer);
                self.audited(
                    peer,
                    format!("import {name}: rejected: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
                Err(error(
                    ErrorCode::ImportRejected,
                    format!(
                        "{name}: {}; nothing of this file was imported",
                        crate::error::Chain(&e)
                    ),
                ))
            }
            None => {
                self.end_session(peer);
                Err(error(ErrorCode::Internal, "the import stopped"))
            }
        }
    }

    async fn import_commit(
        &self,
        peer: &PeerCred,
    ) -> Result<proto::ImportCommitAnswer, AdminError> {
        let (name, steps) = self.session_sender(peer)?;
        self.end_session(peer);
        let (reply, answer) = oneshot::channel();
        let sent =
            tokio::task::spawn_blocking(move || steps.send(ImportStep::Commit(reply)).is_ok())
                .await
                .unwrap_or(false);
        match if sent { answer.await.ok() } else { None } {
            Some(Ok(summary)) => {
                self.audited(
                    peer,
                    format!("import {name}: {} resources", summary.upserted),
                    true,
                )
                .await?;
                Ok(proto::ImportCommitAnswer {
                    summary: summary.into(),
                })
            }
            Some(Err(e)) => {
                self.audited(
                    peer,
                    format!("import {name}: failed: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
                Err(error(
                    ErrorCode::ImportRejected,
                    format!(
                        "{name}: {}; nothing of this file was imported",
                        crate::error::Chain(&e)
                    ),
                ))
            }
            None => Err(error(ErrorCode::Internal, "the import stopped")),
        }
    }

    async fn blocking_audit_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&crate::audit::AuditReader) -> Result<T, crate::audit::AuditError>
            + Send
            + 'static,
    ) -> Result<T, AdminError> {
        let reader = self.audit.reader().map_err(|e| {
            error(
                ErrorCode::AuditUnavailable,
                crate::error::Chain(&e).to_string(),
            )
        })?;
        tokio::task::spawn_blocking(move || read(&reader))
            .await
            .map_err(|_| error(ErrorCode::Internal, "audit read task failed"))?
            .map_err(|e| error(ErrorCode::AuditError, crate::error::Chain(&e).to_string()))
    }

    async fn audit_verify(&self, peer: &PeerCred) -> Result<proto::AuditVerifyAnswer, AdminError> {
        self.audited(peer, "audit verify".into(), true).await?;
        let key = self.audit_public_key.clone();
        let counter = self.audit_counter.clone();
        let report = self
            .blocking_audit_read(move |r| r.verify_with_counter(&key, counter.as_ref()))
            .await?;
        Ok(super::answers::verify_answer(&report))
    }

    async fn audit_export(
        &self,
        peer: &PeerCred,
        since: Option<String>,
    ) -> Result<proto::AuditExportAnswer, AdminError> {
        let since = match since.as_deref() {
            None => None,
            Some(text) => Some(
                crate::audit::parse_time(text)
                    .or_else(|| {
                        mig_policy::fhir::parse_fhir_date_time(text)
                            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    })
                    .ok_or_else(|| {
                        error(
                            ErrorCode::BadRequest,
                            "since must be RFC 3339 or YYYY-MM-DD",
                        )
                    })?,
            ),
        };
        self.audited(peer, format!("audit export since {since:?}"), true)
            .await?;
        let (count, ndjson) = self
            .blocking_audit_read(move |r| {
                let mut out = Vec::new();
                let count = r.export(since, &mut out)?;
                Ok((count, out))
            })
            .await?;
        Ok(proto::AuditExportAnswer {
            count,
            ndjson: String::from_utf8_lossy(&ndjson).into_owned(),
        })
    }

    async fn audit_patient(
        &self,
        peer: &PeerCred,
        nhs: String,
    ) -> Result<proto::AuditPatientAnswer, AdminError> {
        if !mig_policy::fhir::is_valid_nhs_number(&nhs) {
            return Err(error(ErrorCode::BadRequest, "not a valid NHS number"));
        }
        self.audited(peer, format!("audit patient {nhs}"), true)
            .await?;
        let accesses = self
            .blocking_audit_read(move |r| r.patient_accesses(&nhs))
            .await?;
        Ok(proto::AuditPatientAnswer {
            accesses: accesses.into_iter().map(Into::into).collect(),
        })
    }

    async fn alerts_list(
        &self,
        peer: &PeerCred,
        all: bool,
    ) -> Result<proto::AlertsListAnswer, AdminError> {
        self.audited(
            peer,
            format!("alerts list{}", if all { " --all" } else { "" }),
            true,
        )
        .await?;
        let alerts = self
            .blocking_audit_read(move |r| r.list_alerts(all))
            .await?;
        Ok(proto::AlertsListAnswer {
            alerts: alerts.into_iter().map(Into::into).collect(),
        })
    }

    async fn alerts_ack(
        &self,
        peer: &PeerCred,
        id: u64,
        note: String,
    ) -> Result<proto::AlertsAckAnswer, AdminError> {
        match self.audit.ack_alert(id, &note, &operator(peer)).await {
            Ok(seq) => Ok(proto::AlertsAckAnswer { audit_seq: seq }),
            Err(e) => Err(error(
                ErrorCode::AlertAckRefused,
                crate::error::Chain(&e).to_string(),
            )),
        }
    }

    async fn csr(&self, peer: &PeerCred, subject: String) -> Result<proto::CsrAnswer, AdminError> {
        self.audited(peer, format!("csr {subject}"), true).await?;
        let signer = self.tls_signer.clone();
        let extra = vec![self.fhir_host.clone()];
        tokio::task::spawn_blocking(move || {
            crate::tls::csr::appliance_csr(signer, &subject, &extra)
        })
        .await
        .map_err(|_| error(ErrorCode::Internal, "csr task failed"))?
        .map(|pem| proto::CsrAnswer { pem })
        .map_err(|e| error(ErrorCode::BadRequest, crate::error::Chain(&e).to_string()))
    }
}

impl AdminHandler for AdminService {
    fn handle(&self, peer: PeerCred, request: Request) -> HandlerFuture<'_> {
        Box::pin(self.dispatch(peer, request))
    }

    fn connection_closed(&self, peer: PeerCred) {
        // Dropping the session's sender ends its thread, which rolls the import back.
        self.end_session(&peer);
    }
}
