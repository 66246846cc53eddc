//! The commands migd answers on the admin socket. Every command that changes something or
//! reads the audit trail is itself audited, naming the operator by uid.
//!
//! Requests are `{"command": NAME, ...}`; answers are `{"ok": true, ...}` or the transport's
//! error shape. A large NDJSON import arrives as `import-begin`, any number of `import-chunk`
//! (whole lines), and `import-commit` on one connection: one transaction on a dedicated
//! thread, rolled back if the connection goes away first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::transport::{error_response, AdminHandler, HandlerFuture, PeerCred};
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

fn ok(mut body: Value) -> Value {
    if let Some(map) = body.as_object_mut() {
        map.insert("ok".into(), Value::Bool(true));
    }
    body
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
    pub(super) async fn audited_seq(&self, peer: &PeerCred, action: String) -> Result<u64, Value> {
        self.audit
            .append(AuditRecord::admin_action(
                &operator(peer),
                &action,
                Decision::Permit,
            ))
            .await
            .map_err(|e| {
                error_response(
                    "audit-unavailable",
                    &format!(
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
    ) -> Result<(), Value> {
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
                error_response(
                    "audit-unavailable",
                    &format!(
                        "the audit trail cannot be written: {}",
                        crate::error::Chain(&e)
                    ),
                )
            })
    }

    async fn dispatch(&self, peer: PeerCred, request: Value) -> Value {
        let command = request
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let text = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_owned);
        let result = match command {
            "status" => Ok(self.status().await),
            "reload" => self.reload(&peer).await,
            "import-begin" => {
                self.import_begin(&peer, text("name").unwrap_or_default())
                    .await
            }
            "import-chunk" => match text("ndjson") {
                Some(ndjson) => self.import_chunk(&peer, ndjson).await,
                None => Err(error_response("bad-request", "import-chunk needs ndjson")),
            },
            "import-commit" => self.import_commit(&peer).await,
            "audit-verify" => self.audit_verify(&peer).await,
            "audit-export" => self.audit_export(&peer, text("since")).await,
            "audit-patient" => match text("nhs_number") {
                Some(nhs) => self.audit_patient(&peer, nhs).await,
                None => Err(error_response(
                    "bad-request",
                    "audit-patient needs nhs_number",
                )),
            },
            "alerts-list" => {
                self.alerts_list(
                    &peer,
                    request.get("all").and_then(Value::as_bool).unwrap_or(false),
                )
                .await
            }
            "alerts-ack" => match (request.get("id").and_then(Value::as_u64), text("note")) {
                (Some(id), Some(note)) if !note.trim().is_empty() => {
                    self.alerts_ack(&peer, id, note).await
                }
                _ => Err(error_response(
                    "bad-request",
                    "alerts-ack needs id and a non-empty note",
                )),
            },
            "extract-fit-notes" => match self.extracts.clone() {
                Some(settings) => super::extract::fit_notes(self, settings, &peer, &request).await,
                None => Err(error_response(
                    "extract-unavailable",
                    "this migd was started without statistical extracts",
                )),
            },
            // `migctl update install` records each step of an update (SPEC §14) here.
            "update-step" => match text("step") {
                Some(step) if !step.trim().is_empty() && step.len() <= 1024 => {
                    let done = request.get("ok").and_then(Value::as_bool).unwrap_or(true);
                    self.audited(&peer, format!("update: {step}"), done)
                        .await
                        .map(|()| ok(json!({})))
                }
                _ => Err(error_response(
                    "bad-request",
                    "update-step needs a step (1 to 1024 characters)",
                )),
            },
            "csr" => match text("subject") {
                Some(subject) => self.csr(&peer, subject).await,
                None => Err(error_response("bad-request", "csr needs subject")),
            },
            other => Err(error_response(
                "unknown-command",
                &format!("unknown command {other:?}"),
            )),
        };
        result.unwrap_or_else(|error| error)
    }

    async fn status(&self) -> Value {
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
        ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.ready.load(Ordering::SeqCst),
            "healthy": self.healthy.load(Ordering::SeqCst),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "replica": replica,
            "audit": {"records": stats.records, "commits": stats.commits, "checkpoints": stats.checkpoints,
                      "failed_commits": stats.failed_commits, "failed_checkpoints": stats.failed_checkpoints},
            "partners": snapshot.partners.partners().iter().map(|p| json!({
                "ods": p.agreement.ods, "name": p.agreement.name, "type": p.agreement.partner_type.name(),
                "expires": p.agreement.expires.map(|d| d.to_string())})).collect::<Vec<_>>(),
            "upstreams": snapshot.upstreams.len(),
            "crls": snapshot.crls.len(),
            "snapshot_generation": snapshot.generation,
            "registry_problems": snapshot.problems.iter().map(|p| json!({
                "file": p.path.display().to_string(), "error": p.error,
                "consequence": p.consequence})).collect::<Vec<_>>(),
            "alerts_waiting": alerts_waiting,
            "last_import": last_import,
        }))
    }

    async fn reload(&self, peer: &PeerCred) -> Result<Value, Value> {
        let reloader = self.reloader.clone();
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .map_err(|_| error_response("internal", "reload task failed"))?;
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
            Ok(snapshot) => Ok(ok(json!({"generation": snapshot.generation}))),
            Err(e) => Err(error_response(
                "reload-rejected",
                &format!(
                    "{}; the previous configuration keeps serving",
                    crate::error::Chain(&e)
                ),
            )),
        }
    }

    async fn import_begin(&self, peer: &PeerCred, name: String) -> Result<Value, Value> {
        let (steps, receiver) = sync_channel::<ImportStep>(1);
        {
            let mut imports = self
                .imports
                .lock()
                .map_err(|_| error_response("internal", "import table poisoned"))?;
            if imports.contains_key(&peer.connection) {
                return Err(error_response(
                    "bad-request",
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
        Ok(ok(json!({})))
    }

    fn session_sender(&self, peer: &PeerCred) -> Result<(String, SyncSender<ImportStep>), Value> {
        let imports = self
            .imports
            .lock()
            .map_err(|_| error_response("internal", "import table poisoned"))?;
        imports
            .get(&peer.connection)
            .map(|s| (s.name.clone(), s.steps.clone()))
            .ok_or_else(|| {
                error_response(
                    "bad-request",
                    "no import in progress on this connection (send import-begin)",
                )
            })
    }

    fn end_session(&self, peer: &PeerCred) {
        if let Ok(mut imports) = self.imports.lock() {
            imports.remove(&peer.connection);
        }
    }

    async fn import_chunk(&self, peer: &PeerCred, ndjson: String) -> Result<Value, Value> {
        let (name, steps) = self.session_sender(peer)?;
        let (reply, answer) = oneshot::channel();
        let sent = tokio::task::spawn_blocking(move || {
            steps.send(ImportStep::Chunk(ndjson, reply)).is_ok()
        })
        .await
        .unwrap_or(false);
        let result = if sent { answer.await.ok() } else { None };
        match result {
            Some(Ok(lines)) => Ok(ok(json!({"lines": lines}))),
            Some(Err(e)) => {
                self.end_session(peer);
                self.audited(
                    peer,
                    format!("import {name}: rejected: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
                Err(error_response(
                    "import-rejected",
                    &format!(
                        "{name}: {}; nothing of this file was imported",
                        crate::error::Chain(&e)
                    ),
                ))
            }
            None => {
                self.end_session(peer);
                Err(error_response("internal", "the import stopped"))
            }
        }
    }

    async fn import_commit(&self, peer: &PeerCred) -> Result<Value, Value> {
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
                Ok(ok(json!({"summary": summary})))
            }
            Some(Err(e)) => {
                self.audited(
                    peer,
                    format!("import {name}: failed: {}", crate::error::Chain(&e)),
                    false,
                )
                .await?;
                Err(error_response(
                    "import-rejected",
                    &format!(
                        "{name}: {}; nothing of this file was imported",
                        crate::error::Chain(&e)
                    ),
                ))
            }
            None => Err(error_response("internal", "the import stopped")),
        }
    }

    async fn blocking_audit_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&crate::audit::AuditReader) -> Result<T, crate::audit::AuditError>
            + Send
            + 'static,
    ) -> Result<T, Value> {
        let reader = self.audit.reader().map_err(|e| {
            error_response("audit-unavailable", &crate::error::Chain(&e).to_string())
        })?;
        tokio::task::spawn_blocking(move || read(&reader))
            .await
            .map_err(|_| error_response("internal", "audit read task failed"))?
            .map_err(|e| error_response("audit-error", &crate::error::Chain(&e).to_string()))
    }

    async fn audit_verify(&self, peer: &PeerCred) -> Result<Value, Value> {
        self.audited(peer, "audit verify".into(), true).await?;
        let key = self.audit_public_key.clone();
        let counter = self.audit_counter.clone();
        let report = self
            .blocking_audit_read(move |r| r.verify_with_counter(&key, counter.as_ref()))
            .await?;
        Ok(ok(json!({
            "verified": report.is_ok(),
            "problem": report.problem.as_ref().map(|p| p.to_string()),
            "first_bad_record": report.problem.as_ref().map(|p| p.first_bad_record()),
            "report": report,
        })))
    }

    async fn audit_export(&self, peer: &PeerCred, since: Option<String>) -> Result<Value, Value> {
        let since = match since.as_deref() {
            None => None,
            Some(text) => Some(
                crate::audit::parse_time(text)
                    .or_else(|| {
                        crate::fhir::parse_fhir_date_time(text)
                            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
                    })
                    .ok_or_else(|| {
                        error_response("bad-request", "since must be RFC 3339 or YYYY-MM-DD")
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
        Ok(ok(
            json!({"count": count, "ndjson": String::from_utf8_lossy(&ndjson)}),
        ))
    }

    async fn audit_patient(&self, peer: &PeerCred, nhs: String) -> Result<Value, Value> {
        if !crate::fhir::is_valid_nhs_number(&nhs) {
            return Err(error_response("bad-request", "not a valid NHS number"));
        }
        self.audited(peer, format!("audit patient {nhs}"), true)
            .await?;
        let accesses = self
            .blocking_audit_read(move |r| r.patient_accesses(&nhs))
            .await?;
        Ok(ok(json!({"accesses": accesses})))
    }

    async fn alerts_list(&self, peer: &PeerCred, all: bool) -> Result<Value, Value> {
        self.audited(
            peer,
            format!("alerts list{}", if all { " --all" } else { "" }),
            true,
        )
        .await?;
        let alerts = self
            .blocking_audit_read(move |r| r.list_alerts(all))
            .await?;
        Ok(ok(json!({"alerts": alerts})))
    }

    async fn alerts_ack(&self, peer: &PeerCred, id: u64, note: String) -> Result<Value, Value> {
        match self.audit.ack_alert(id, &note, &operator(peer)).await {
            Ok(seq) => Ok(ok(json!({"audit_seq": seq}))),
            Err(e) => Err(error_response(
                "alert-ack-refused",
                &crate::error::Chain(&e).to_string(),
            )),
        }
    }

    async fn csr(&self, peer: &PeerCred, subject: String) -> Result<Value, Value> {
        self.audited(peer, format!("csr {subject}"), true).await?;
        let signer = self.tls_signer.clone();
        let extra = vec![self.fhir_host.clone()];
        tokio::task::spawn_blocking(move || {
            crate::tls::csr::appliance_csr(signer, &subject, &extra)
        })
        .await
        .map_err(|_| error_response("internal", "csr task failed"))?
        .map(|pem| ok(json!({"pem": pem})))
        .map_err(|e| error_response("bad-request", &crate::error::Chain(&e).to_string()))
    }
}

impl AdminHandler for AdminService {
    fn handle(&self, peer: PeerCred, request: Value) -> HandlerFuture<'_> {
        Box::pin(self.dispatch(peer, request))
    }

    fn connection_closed(&self, peer: PeerCred) {
        // Dropping the session's sender ends its thread, which rolls the import back.
        self.end_session(&peer);
    }
}
