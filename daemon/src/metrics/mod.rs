//! Fleet metrics (SPEC §14): counters and histograms kept in process-wide atomics, rendered in
//! the Prometheus text exposition format (version 0.0.4) on a loopback HTTP listener.
//!
//! Written by hand rather than with `prometheus-client`: that crate's histograms and label
//! families take a lock per observation, and the request path here must stay lock-free. Every
//! label value is one of a fixed set chosen by migd, never a string a partner sent, so the
//! series count is bounded (interactions × statuses).

mod render;
mod server;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use render::{render, Gauges, Release};
pub use server::{serve, MetricsHandler};

/// Upper bounds (seconds) of request and TPM latency buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram: one atomic per bucket (not cumulative; summed when rendered), the sum
/// in microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: Histogram = Histogram {
        buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
        sum_micros: AtomicU64::new(0),
    };

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (cumulative bucket counts, count, sum in seconds).
    fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut running = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, running, sum)
    }
}

/// The `interaction` label of request metrics: what the route was, not what was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Metadata,
    StructuredRecord,
    StructuredRecordHtml,
    PatientSearch,
    Healthz,
    /// Any other method or path (refused), and refusals made by the listener itself.
    Other,
}

impl Interaction {
    pub const ALL: [Interaction; 6] = [
        Interaction::Metadata,
        Interaction::StructuredRecord,
        Interaction::StructuredRecordHtml,
        Interaction::PatientSearch,
        Interaction::Healthz,
        Interaction::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Interaction::Metadata => "metadata",
            Interaction::StructuredRecord => "structured_record",
            Interaction::StructuredRecordHtml => "structured_record_html",
            Interaction::PatientSearch => "patient_search",
            Interaction::Healthz => "healthz",
            Interaction::Other => "other",
        }
    }

    /// The interaction a request's method and path name (its query string is not looked at).
    pub fn of(method: &http::Method, path: &str) -> Interaction {
        use http::Method;
        match (method, path) {
            (&Method::GET, "/fhir/metadata") => Interaction::Metadata,
            (&Method::POST, "/fhir/Patient/$gpc.getstructuredrecord") => {
                Interaction::StructuredRecord
            }
            (&Method::GET, "/fhir/Patient") => Interaction::PatientSearch,
            (&Method::GET, "/healthz") => Interaction::Healthz,
            _ => Interaction::Other,
        }
    }
}

/// HTTP statuses counted by their own `status` label; anything else counts as `other`.
pub const STATUSES: [u16; 16] = [
    200, 400, 401, 403, 404, 405, 406, 408, 409, 413, 415, 422, 429, 431, 500, 503,
];

/// The `outcome` label: what happened to the request as a whole.
pub fn outcome_of(status: u16) -> &'static str {
    match status {
        200..=299 => "released",
        503 => "unavailable",
        500..=599 => "error",
        _ => "refused",
    }
}

const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// The TPM operations timed (the TPM worker's requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpmOperation {
    Provision,
    Load,
    Unseal,
    PublicKey,
    Sign,
    Random,
    HealthCheck,
    NvRead,
    NvIncrement,
}

impl TpmOperation {
    pub const ALL: [TpmOperation; 9] = [
        TpmOperation::Provision,
        TpmOperation::Load,
        TpmOperation::Unseal,
        TpmOperation::PublicKey,
        TpmOperation::Sign,
        TpmOperation::Random,
        TpmOperation::HealthCheck,
        TpmOperation::NvRead,
        TpmOperation::NvIncrement,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TpmOperation::Provision => "provision",
            TpmOperation::Load => "load",
            TpmOperation::Unseal => "unseal",
            TpmOperation::PublicKey => "public_key",
            TpmOperation::Sign => "sign",
            TpmOperation::Random => "random",
            TpmOperation::HealthCheck => "health_check",
            TpmOperation::NvRead => "nv_read",
            TpmOperation::NvIncrement => "nv_increment",
        }
    }
}

/// Everything counted on a hot path. One process-wide instance, [`METRICS`].
#[derive(Debug)]
pub struct Metrics {
    requests: [[AtomicU64; STATUS_SLOTS]; Interaction::ALL.len()],
    latency: [Histogram; Interaction::ALL.len()],
    tpm: [Histogram; TpmOperation::ALL.len()],
    /// Unix seconds of the last stored audit checkpoint (0: none since start).
    audit_last_checkpoint: AtomicI64,
    /// Unix seconds since which some committed record has no checkpoint (0: none).
    audit_uncovered_since: AtomicI64,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics {
    requests: [const { [const { AtomicU64::new(0) }; STATUS_SLOTS] }; Interaction::ALL.len()],
    latency: [Histogram::NEW; Interaction::ALL.len()],
    tpm: [Histogram::NEW; TpmOperation::ALL.len()],
    audit_last_checkpoint: AtomicI64::new(0),
    audit_uncovered_since: AtomicI64::new(0),
};

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Metrics {
    /// Counts one answered request and its latency.
    pub fn request(&self, interaction: Interaction, status: u16, elapsed: Duration) {
        let i = interaction as usize;
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.requests[i][slot].fetch_add(1, Ordering::Relaxed);
        self.latency[i].observe(elapsed);
    }

    /// Times one TPM operation.
    pub fn tpm(&self, operation: TpmOperation, elapsed: Duration) {
        self.tpm[operation as usize].observe(elapsed);
    }

    /// A checkpoint was stored: every committed record is covered.
    pub fn audit_checkpoint_written(&self) {
        self.audit_last_checkpoint
            .store(now_unix(), Ordering::Relaxed);
        self.audit_uncovered_since.store(0, Ordering::Relaxed);
    }

    /// Records were committed that no checkpoint covers yet (keeps the earliest time).
    pub fn audit_uncovered(&self) {
        let _ = self.audit_uncovered_since.compare_exchange(
            0,
            now_unix(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// A listener handler that counts and times every answer of the handler it wraps.
pub struct Metered<H>(pub H);

impl<H: crate::listener::Handler> crate::listener::Handler for Metered<H> {
    fn handle(
        &self,
        peer: crate::listener::Peer,
        request: http::Request<bytes::Bytes>,
    ) -> crate::listener::HandlerFuture<'_> {
        let mut interaction = Interaction::of(request.method(), request.uri().path());
        let start = std::time::Instant::now();
        Box::pin(async move {
            let response = self.0.handle(peer, request).await;
            let html = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
            if interaction == Interaction::StructuredRecord && html {
                interaction = Interaction::StructuredRecordHtml;
            }
            METRICS.request(interaction, response.status().as_u16(), start.elapsed());
            response
        })
    }

    fn refuse(
        &self,
        peer: crate::listener::Peer,
        request: Option<http::Request<()>>,
        refusal: crate::listener::Refusal,
    ) -> crate::listener::HandlerFuture<'_> {
        let interaction = request.as_ref().map_or(Interaction::Other, |r| {
            Interaction::of(r.method(), r.uri().path())
        });
        let start = std::time::Instant::now();
        Box::pin(async move {
            let response = self.0.refuse(peer, request, refusal).await;
            METRICS.request(interaction, response.status().as_u16(), start.elapsed());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::NEW;
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(20));
        let (buckets, count, sum) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[4], 2);
        assert_eq!(buckets[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 3);
        assert!((sum - 20.0205).abs() < 1e-6);
    }

    #[test]
    fn routes_map_to_bounded_interactions() {
        use http::Method;
        assert_eq!(
            Interaction::of(&Method::GET, "/fhir/metadata"),
            Interaction::Metadata
        );
        assert_eq!(
            Interaction::of(&Method::POST, "/fhir/Patient/$gpc.getstructuredrecord"),
            Interaction::StructuredRecord
        );
        assert_eq!(
            Interaction::of(&Method::GET, "/fhir/anything-a-partner-sends"),
            Interaction::Other
        );
    }
}
