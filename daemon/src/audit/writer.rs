//! The audit writer: one thread owns the write connection and group-commits everything queued
//! (one transaction, one fsync), then answers each waiter; it signs checkpoints as it goes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::counter::Counter;
use super::record::{checkpoint_message, format_time, genesis, record_hash, StoredRecord};
use super::store::{self, to_i64};
use super::verify::check_tail;
use super::{AuditError, AuditReader, AuditRecord, Decision, RecordKind};
use crate::keys::Signer;

/// How soon a failed checkpoint is tried again.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// Tuning for the writer. `Default` is what migd uses.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Sign a checkpoint once this many records are uncovered (SPEC: at least every 1,000).
    pub checkpoint_every: u64,
    /// ... or once the oldest uncovered record is this old (SPEC: at least every 60 s).
    pub checkpoint_interval: Duration,
    /// Appends queued beyond this wait (back-pressure) rather than grow memory.
    pub queue_capacity: usize,
    /// The most records one transaction takes.
    pub max_batch: usize,
    /// `false` commits every record in its own transaction (one fsync each); for the
    /// benchmark's comparison only.
    pub group_commit: bool,
    /// How long a write waits on a lock held by another process before the append fails.
    pub busy_timeout: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            queue_capacity: 4096,
            max_batch: 4096,
            group_commit: true,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters the writer keeps (monotonic since open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records durably appended.
    pub records: u64,
    /// Transactions committed that held records (each one fsync).
    pub commits: u64,
    /// Transactions that failed and were rolled back.
    pub failed_commits: u64,
    /// Checkpoints signed and stored.
    pub checkpoints: u64,
    /// Checkpoints that could not be signed or stored (retried later).
    pub failed_checkpoints: u64,
}

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
    checkpoints: AtomicU64,
    failed_checkpoints: AtomicU64,
}

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

enum Job {
    Append {
        // Boxed: records are large and the queue holds thousands of jobs.
        record: Box<AuditRecord>,
        reply: Reply<u64>,
    },
    Ack {
        id: u64,
        note: String,
        operator: String,
        reply: Reply<u64>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// The append-only audit log. Share it behind an `Arc`; appends from any task are queued to the
/// one writer thread and share commits.
pub struct AuditLog {
    queue: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    // Held so `shutdown` can wait for the thread; the Mutex only guards taking it once.
    thread: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    key: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn unavailable(why: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(why.to_string())
}

impl AuditLog {
    /// Opens the existing audit database at `path` and starts the writer thread, once the
    /// trail's tail verifies against the audit key and the TPM counter (`verify::check_tail`);
    /// a tail that does not is `TrailRejected`, and nothing is added to it. After a crash it
    /// finishes an interrupted counter increment and signs a checkpoint over the records left
    /// uncovered before returning. Blocking (file I/O and TPM commands).
    pub fn open(
        path: &Path,
        key: &[u8; 32],
        signer: Arc<dyn Signer>,
        counter: Arc<dyn Counter>,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        if !path.exists() {
            return Err(AuditError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = store::open(path, key, false, options.busy_timeout)?;
        let tpm = counter.read()?;
        let tail = match check_tail(&conn, &signer.public_key_spki_der(), tpm)? {
            Ok(tail) => tail,
            Err(problem) => {
                return Err(AuditError::TrailRejected {
                    path: path.to_path_buf(),
                    problem,
                })
            }
        };
        let mut writer = Writer {
            conn,
            signer,
            counter,
            next_seq: tail.last_seq + 1,
            head: tail.head,
            last_checkpoint: tail.checkpoint_seq,
            last_counter: tail.checkpoint_counter,
            owed: tail.checkpoint_counter > tpm,
            uncovered_since: None,
            counters: Arc::new(Counters::default()),
            options,
        };
        if writer.owed || writer.next_seq > writer.last_checkpoint + 1 {
            tracing::warn!(
                uncovered_from = writer.last_checkpoint + 1,
                last = writer.next_seq - 1,
                "the audit trail ends after its last checkpoint (migd stopped without its final \
                 checkpoint); signing one now"
            );
            writer.checkpoint()?;
        }
        Self::start(path, key, writer)
    }

    /// Creates a new, empty audit database at `path` (which must not exist) and starts the
    /// writer; its first checkpoint carries the TPM counter's next value. For `migctl init`
    /// and `migctl audit new-trail`.
    pub fn create(
        path: &Path,
        key: &[u8; 32],
        signer: Arc<dyn Signer>,
        counter: Arc<dyn Counter>,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        if path.exists() {
            return Err(AuditError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        let conn = store::open(path, key, true, options.busy_timeout)?;
        let last_counter = counter.read()?;
        let writer = Writer {
            conn,
            signer,
            counter,
            next_seq: 1,
            head: genesis(),
            last_checkpoint: 0,
            last_counter,
            owed: false,
            uncovered_since: None,
            counters: Arc::new(Counters::default()),
            options,
        };
        Self::start(path, key, writer)
    }

    fn start(path: &Path, key: &[u8; 32], writer: Writer) -> Result<AuditLog, AuditError> {
        let counters = writer.counters.clone();
        let (queue, receiver) = mpsc::channel(writer.options.queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| unavailable(format!("cannot start the audit writer thread: {e}")))?;
        Ok(AuditLog {
            queue,
            counters,
            thread: Mutex::new(Some(thread)),
            path: path.to_path_buf(),
            key: zeroize::Zeroizing::new(*key),
        })
    }

    /// Appends `record`; resolves to its sequence number once it is committed and fsync'd.
    /// A permitted override also raises its alert in the same transaction.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job::Append {
                record: Box::new(record),
                reply,
            })
            .await
            .map_err(|_| unavailable("the audit writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the audit writer has stopped"))?
    }

    /// `append` for threads outside the async runtime (e.g. admin actions). Must not be called
    /// from an async task.
    pub fn append_blocking(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .blocking_send(Job::Append {
                record: Box::new(record),
                reply,
            })
            .map_err(|_| unavailable("the audit writer has stopped"))?;
        answer
            .blocking_recv()
            .map_err(|_| unavailable("the audit writer has stopped"))?
    }

    /// Acknowledges alert `id`; the acknowledgement is itself an audit record, whose sequence
    /// number this returns. Unknown or already acknowledged ids are errors.
    pub async fn ack_alert(&self, id: u64, note: &str, operator: &str) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            id,
            note: note.to_owned(),
            operator: operator.to_owned(),
            reply,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| unavailable("the audit writer has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the audit writer has stopped"))?
    }

    /// `ack_alert` for threads outside the async runtime.
    pub fn ack_alert_blocking(
        &self,
        id: u64,
        note: &str,
        operator: &str,
    ) -> Result<u64, AuditError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            id,
            note: note.to_owned(),
            operator: operator.to_owned(),
            reply,
        };
        self.queue
            .blocking_send(job)
            .map_err(|_| unavailable("the audit writer has stopped"))?;
        answer
            .blocking_recv()
            .map_err(|_| unavailable("the audit writer has stopped"))?
    }

    /// A reader on the same database (its own connection).
    pub fn reader(&self) -> Result<AuditReader, AuditError> {
        AuditReader::open(&self.path, &self.key)
    }

    /// Appends and acknowledgements queued for the writer thread, not yet taken.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The writer's counters.
    pub fn stats(&self) -> AuditStats {
        let c = &self.counters;
        AuditStats {
            records: c.records.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            failed_checkpoints: c.failed_checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Commits what is queued, writes a final checkpoint and stops the writer. Later appends
    /// fail with `Unavailable`.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(Job::Shutdown { reply }).await;
        let result = match sent {
            Ok(()) => answer
                .await
                .map_err(|_| unavailable("the audit writer has stopped"))?,
            Err(_) => Ok(()),
        };
        self.join();
        result
    }

    /// `shutdown` for threads outside the async runtime.
    pub fn shutdown_blocking(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        let result = match self.queue.blocking_send(Job::Shutdown { reply }) {
            Ok(()) => answer
                .blocking_recv()
                .map_err(|_| unavailable("the audit writer has stopped"))?,
            Err(_) => Ok(()),
        };
        self.join();
        result
    }

    fn join(&self) {
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            // The writer has answered Shutdown; joining only waits for it to drop its state.
            let _ = handle.join();
        }
    }
}

/// Dropping the last handle without `shutdown` still ends the log cleanly: the queue closes,
/// the writer commits what is queued and writes its final checkpoint, and the drop waits for
/// that, so a log opened again at once sees the checkpoint (the queue's sender is never cloned).
impl Drop for AuditLog {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, closed));
        self.join();
    }
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    signer: Arc<dyn Signer>,
    /// The TPM's audit counter.
    counter: Arc<dyn Counter>,
    /// The counter value the last stored checkpoint carries.
    last_counter: u64,
    /// The last checkpoint is stored but the counter has not been incremented to its value yet.
    owed: bool,
    /// The sequence number the next record gets.
    next_seq: u64,
    /// Hash of the last committed record (or genesis).
    head: [u8; 32],
    /// The sequence number the last checkpoint covers.
    last_checkpoint: u64,
    /// When the oldest record not covered by a checkpoint was committed.
    uncovered_since: Option<Instant>,
    counters: Arc<Counters>,
    options: AuditOptions,
}

/// What one job in a transaction produced.
enum Outcome {
    Seq(u64),
    /// A job-level refusal (an ack of an unknown alert); the transaction goes on.
    Refused(AuditError),
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        // A small runtime of this thread's own, only to wait on the queue with a deadline.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "the audit writer cannot start its timer");
                return;
            }
        };
        loop {
            let deadline = self
                .uncovered_since
                .map(|since| since + self.options.checkpoint_interval);
            let first = runtime.block_on(async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, receiver.recv()).await.ok(),
                    None => Some(receiver.recv().await),
                }
            });
            let first = match first {
                None => {
                    // The checkpoint interval passed with records uncovered.
                    self.checkpoint_logged();
                    continue;
                }
                Some(None) => {
                    // Every AuditLog handle is gone: close as on shutdown.
                    self.checkpoint_logged();
                    return;
                }
                Some(Some(job)) => job,
            };
            let mut batch = vec![first];
            while batch.len() < self.options.max_batch.max(1) {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::with_capacity(batch.len());
            let mut shutdown = None;
            for job in batch {
                match job {
                    Job::Shutdown { reply } => {
                        shutdown = Some(reply);
                        break;
                    }
                    other => writes.push(other),
                }
            }
            // Anything queued after Shutdown is refused below, once the queue is closed.
            if self.options.group_commit {
                self.commit(writes);
            } else {
                for job in writes {
                    self.commit(vec![job]);
                }
            }
            if self.next_seq > self.last_checkpoint + self.options.checkpoint_every.max(1) {
                self.checkpoint_logged();
            }
            if let Some(reply) = shutdown {
                receiver.close();
                let result = self.checkpoint();
                let _ = reply.send(result);
                while let Ok(job) = receiver.try_recv() {
                    refuse(job, "the audit writer is shutting down");
                }
                return;
            }
        }
    }

    /// Writes `jobs` in one transaction, then answers each.
    fn commit(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut next_seq = self.next_seq;
        let mut head = self.head;
        let result = (|| -> Result<Vec<Outcome>, AuditError> {
            let tx = self
                .conn
                .transaction()
                .map_err(|e| unavailable(format!("begin: {e}")))?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let outcome = match job {
                    Job::Append { record, .. } => {
                        Outcome::Seq(append(&tx, record, &mut next_seq, &mut head)?)
                    }
                    Job::Ack {
                        id, note, operator, ..
                    } => match ack(&tx, *id, note, operator, &mut next_seq, &mut head)? {
                        Ok(seq) => Outcome::Seq(seq),
                        Err(refusal) => Outcome::Refused(refusal),
                    },
                    Job::Shutdown { .. } => continue,
                };
                outcomes.push(outcome);
            }
            tx.commit()
                .map_err(|e| unavailable(format!("commit: {e}")))?;
            Ok(outcomes)
        })();
        match result {
            Ok(outcomes) => {
                let written = next_seq - self.next_seq;
                self.next_seq = next_seq;
                self.head = head;
                if written > 0 {
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                    self.counters.records.fetch_add(written, Ordering::Relaxed);
                    if self.uncovered_since.is_none() {
                        self.uncovered_since = Some(Instant::now());
                    }
                    crate::metrics::METRICS.audit_uncovered();
                }
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let answer = match outcome {
                        Outcome::Seq(seq) => Ok(seq),
                        Outcome::Refused(e) => Err(e),
                    };
                    match job {
                        Job::Append { reply, .. } | Job::Ack { reply, .. } => {
                            let _ = reply.send(answer);
                        }
                        Job::Shutdown { .. } => {}
                    }
                }
            }
            Err(error) => {
                // The transaction was rolled back when dropped: the chain head stays at the last
                // committed record, and the next batch tries again.
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                let why = crate::error::Chain(&error).to_string();
                tracing::error!(error = %why, "audit commit failed; refusing the waiting requests");
                for job in jobs {
                    refuse(job, &why);
                }
            }
        }
    }

    fn checkpoint_logged(&mut self) {
        if let Err(e) = self.checkpoint() {
            self.counters
                .failed_checkpoints
                .fetch_add(1, Ordering::Relaxed);
            crate::system::journal::event!(
                error,
                CHECKPOINT_FAILED,
                error = %crate::error::Chain(&e),
                "audit checkpoint failed (late); retrying in a second"
            );
            // Retry in a second rather than spin on a deadline already passed.
            let retry = Instant::now() + CHECKPOINT_RETRY;
            self.uncovered_since = Some(
                retry
                    .checked_sub(self.options.checkpoint_interval)
                    .unwrap_or_else(Instant::now),
            );
        }
    }

    /// Signs (last seq, head, next counter value) and stores it, if any record is uncovered,
    /// then increments the TPM counter to that value.
    ///
    /// Store first, then increment: the TPM is then never ahead of the trail, so a trail whose
    /// last checkpoint is behind the TPM has lost a checkpoint, even one. A stop between the two
    /// leaves the trail one ahead, which the next checkpoint (or the next start) settles.
    fn checkpoint(&mut self) -> Result<(), AuditError> {
        if self.owed {
            self.settle_counter()?;
        }
        let seq = self.next_seq - 1;
        if seq == 0 || seq <= self.last_checkpoint {
            self.uncovered_since = None;
            return Ok(());
        }
        let tpm = self.counter.read()?;
        if tpm != self.last_counter {
            // Only something other than migd moves it: worth a look, not a reason to stop.
            tracing::warn!(
                expected = self.last_counter,
                tpm,
                "the TPM audit counter was incremented outside migd"
            );
        }
        let value = tpm.max(self.last_counter) + 1;
        let time_text = format_time(OffsetDateTime::now_utc())?;
        let message = checkpoint_message(seq, &self.head, value, &time_text);
        let signature = self.signer.sign(&message).map_err(AuditError::Checkpoint)?;
        self.conn
            .execute(
                "INSERT INTO checkpoints (seq, head, time, counter, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    to_i64(seq)?,
                    &self.head[..],
                    time_text,
                    to_i64(value)?,
                    signature
                ],
            )
            .map_err(|source| AuditError::Database {
                operation: "store checkpoint",
                source,
            })?;
        self.last_checkpoint = seq;
        self.last_counter = value;
        self.owed = true;
        self.uncovered_since = None;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.audit_checkpoint_written();
        crate::system::journal::event!(
            debug,
            CHECKPOINT_WRITTEN,
            seq,
            counter = value,
            "audit checkpoint written"
        );
        self.settle_counter()
    }

    /// Brings the TPM counter up to the last stored checkpoint's value.
    fn settle_counter(&mut self) -> Result<(), AuditError> {
        if self.counter.read()? < self.last_counter {
            self.counter.increment()?;
        }
        self.owed = false;
        Ok(())
    }
}

fn refuse(job: Job, why: &str) {
    match job {
        Job::Append { reply, .. } | Job::Ack { reply, .. } => {
            let _ = reply.send(Err(unavailable(why)));
        }
        Job::Shutdown { reply } => {
            let _ = reply.send(Err(unavailable(why)));
        }
    }
}

/// Any database error inside a write transaction means the audit cannot be written.
fn write_error(operation: &str) -> impl FnOnce(AuditError) -> AuditError + '_ {
    move |e| match e {
        AuditError::Unavailable(_) => e,
        other => unavailable(format!("{operation}: {other}")),
    }
}

fn append(
    conn: &Connection,
    record: &AuditRecord,
    next_seq: &mut u64,
    head: &mut [u8; 32],
) -> Result<u64, AuditError> {
    let seq = *next_seq;
    let time = record.time.unwrap_or_else(OffsetDateTime::now_utc);
    let time_text = format_time(time)?;
    let mut stored_record = record.clone();
    stored_record.time = super::record::parse_time(&time_text);
    let hash = record_hash(seq, &time_text, &stored_record, head);
    let stored = StoredRecord {
        seq,
        time_text,
        record: stored_record,
        prev_hash: *head,
        hash,
    };
    store::insert_record(conn, &stored).map_err(write_error("append"))?;
    if stored.record.raises_alert() {
        let r = &stored.record;
        conn.execute(
            "INSERT INTO alerts (seq, time, partner_ods, sds_user_id, sds_role_profile_id, \
             job_role, requesting_org_ods, nhs_number, reason, justification) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                to_i64(seq)?,
                stored.time_text,
                r.partner_ods,
                r.sds_user_id,
                r.sds_role_profile_id,
                r.job_role,
                r.requesting_org_ods,
                r.nhs_number,
                r.override_reason,
                r.override_justification,
            ],
        )
        .map_err(|e| unavailable(format!("raise alert: {e}")))?;
    }
    *next_seq = seq + 1;
    *head = hash;
    Ok(seq)
}

/// Outer error: the transaction failed. Inner error: this ack is refused, nothing written.
fn ack(
    conn: &Connection,
    id: u64,
    note: &str,
    operator: &str,
    next_seq: &mut u64,
    head: &mut [u8; 32],
) -> Result<Result<u64, AuditError>, AuditError> {
    let row: Option<(Option<i64>, Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT ack_seq, ack_operator, ack_time FROM alerts WHERE id = ?1",
            params![to_i64(id)?],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()
        .map_err(|e| unavailable(format!("read alert: {e}")))?;
    match row {
        None => return Ok(Err(AuditError::UnknownAlert { id })),
        Some((Some(seq), operator, time)) => {
            return Ok(Err(AuditError::AlertAlreadyAcknowledged {
                id,
                operator: operator.unwrap_or_default(),
                time: time.unwrap_or_default(),
                seq: u64::try_from(seq).unwrap_or(0),
            }))
        }
        Some((None, _, _)) => {}
    }
    let mut record = AuditRecord::new(RecordKind::AlertAck, Decision::Permit);
    record.operator = Some(operator.to_owned());
    record.action = Some(format!("acknowledge alert {id}: {note}"));
    record.alert_id = Some(id);
    let seq = append(conn, &record, next_seq, head)?;
    let time_text: String = conn
        .query_row(
            "SELECT time FROM records WHERE seq = ?1",
            params![to_i64(seq)?],
            |row| row.get(0),
        )
        .map_err(|e| unavailable(format!("read ack time: {e}")))?;
    conn.execute(
        "UPDATE alerts SET ack_seq = ?1, ack_time = ?2, ack_operator = ?3, ack_note = ?4 \
         WHERE id = ?5",
        params![to_i64(seq)?, time_text, operator, note, to_i64(id)?],
    )
    .map_err(|e| unavailable(format!("acknowledge alert: {e}")))?;
    Ok(Ok(seq))
}
