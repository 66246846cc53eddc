//! The text exposition format: `# HELP` and `# TYPE` per family, then its samples.

use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{Histogram, Interaction, Metrics, TpmOperation, LATENCY_BUCKETS, METRICS, STATUSES};

/// The running image, read once at start-up (it changes only with a reboot into another slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The A/B slot booted, from `rauc.slot=` on the kernel command line; `unknown` without.
    pub slot: String,
    /// `VERSION_ID` of os-release (`IMAGE_VERSION` when set, as systemd-sysupdate uses it).
    pub version: String,
    /// `IMAGE_ID`, else `ID`, of os-release.
    pub os: String,
    /// migd's own version.
    pub migd: String,
}

impl Release {
    /// Reads `/proc/cmdline` and `/etc/os-release` and `/usr/lib/os-release`. Anything
    /// missing is `unknown`, never an error: metrics must not stop migd.
    pub fn read() -> Release {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        // /etc first (it takes precedence), then /usr/lib, where the image build appends
        // IMAGE_VERSION; on Debian one is a link to the other.
        let os_release = ["/etc/os-release", "/usr/lib/os-release"]
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .join("\n");
        Release::parse(&cmdline, &os_release)
    }

    /// From the kernel command line and os-release text.
    pub fn parse(cmdline: &str, os_release: &str) -> Release {
        let slot = cmdline
            .split_whitespace()
            .find_map(|word| word.strip_prefix("rauc.slot="));
        let field = |key: &str| {
            os_release.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.strip_prefix('=')?;
                let value = value.trim().trim_matches('"').trim_matches('\'');
                (!value.is_empty()).then(|| value.to_owned())
            })
        };
        let unknown = || "unknown".to_owned();
        Release {
            slot: slot.map_or_else(unknown, str::to_owned),
            version: field("IMAGE_VERSION")
                .or_else(|| field("VERSION_ID"))
                .unwrap_or_else(unknown),
            os: field("IMAGE_ID")
                .or_else(|| field("ID"))
                .unwrap_or_else(unknown),
            migd: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Values read at scrape time (each `None` when it could not be read; the series is then left
/// out rather than reported as zero).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub now: i64,
    pub healthy: bool,
    pub ready: bool,
    pub registry_files_not_applied: u64,
    pub audit_queue_depth: u64,
    pub audit_alerts_unacknowledged: Option<u64>,
    pub appliance_cert_not_after: Option<i64>,
    /// (CRL file name, nextUpdate) for each installed CRL.
    pub crls: Vec<(String, Option<i64>)>,
    pub replica_bytes: Option<u64>,
    pub replica_patients: Option<u64>,
    pub replica_resources: Option<u64>,
    pub replica_last_write: Option<i64>,
}

impl Gauges {
    /// The replica's size on disk (database and write-ahead log) and last write time.
    pub fn replica_files(&mut self, database: &Path) {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let mut bytes = None;
        let mut last = None;
        for path in [database, Path::new(&wal)] {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            *bytes.get_or_insert(0) += meta.len();
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_secs()).ok());
            last = last.max(modified);
        }
        self.replica_bytes = bytes;
        self.replica_last_write = last;
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (buckets, count, sum) = h.snapshot();
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: Option<impl std::fmt::Display>) {
    if let Some(value) = value {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The whole exposition: hot-path counters from [`METRICS`], then `gauges` and `release`.
pub fn render(gauges: &Gauges, release: &Release) -> String {
    render_from(&METRICS, gauges, release)
}

fn render_from(m: &Metrics, g: &Gauges, release: &Release) -> String {
    let mut out = String::with_capacity(16 * 1024);
    family(
        &mut out,
        "mig_requests_total",
        "counter",
        "Partner API requests answered, by interaction, outcome and HTTP status.",
    );
    for interaction in Interaction::ALL {
        let row = &m.requests[interaction as usize];
        for (slot, count) in row.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let (status, outcome) = match STATUSES.get(slot) {
                Some(s) => (s.to_string(), super::outcome_of(*s)),
                None => ("other".to_owned(), "other"),
            };
            let _ = writeln!(
                out,
                "mig_requests_total{{interaction=\"{}\",outcome=\"{outcome}\",status=\"{status}\"}} {count}",
                interaction.label()
            );
        }
    }
    family(
        &mut out,
        "mig_request_duration_seconds",
        "histogram",
        "Time from a partner request's head to its answer (audit included), by interaction.",
    );
    for interaction in Interaction::ALL {
        histogram(
            &mut out,
            "mig_request_duration_seconds",
            &format!("interaction=\"{}\"", interaction.label()),
            &m.latency[interaction as usize],
        );
    }
    family(
        &mut out,
        "mig_tpm_operation_duration_seconds",
        "histogram",
        "Time the TPM worker took per operation (queueing excluded).",
    );
    for operation in TpmOperation::ALL {
        histogram(
            &mut out,
            "mig_tpm_operation_duration_seconds",
            &format!("operation=\"{}\"", operation.label()),
            &m.tpm[operation as usize],
        );
    }

    family(
        &mut out,
        "mig_audit_queue_depth",
        "gauge",
        "Audit records and alert acknowledgements waiting for the audit writer.",
    );
    let _ = writeln!(out, "mig_audit_queue_depth {}", g.audit_queue_depth);
    let last = m.audit_last_checkpoint.load(Ordering::Relaxed);
    gauge(
        &mut out,
        "mig_audit_last_checkpoint_timestamp_seconds",
        "Unix time of the last audit checkpoint migd stored (absent before the first).",
        (last > 0).then_some(last),
    );
    gauge(
        &mut out,
        "mig_audit_last_checkpoint_age_seconds",
        "Seconds since the last audit checkpoint migd stored (absent before the first).",
        (last > 0).then(|| (g.now - last).max(0)),
    );
    let uncovered = m.audit_uncovered_since.load(Ordering::Relaxed);
    family(
        &mut out,
        "mig_audit_uncovered_seconds",
        "gauge",
        "Age of the oldest committed audit record no checkpoint covers yet (0: all covered).",
    );
    let _ = writeln!(
        out,
        "mig_audit_uncovered_seconds {}",
        if uncovered > 0 {
            (g.now - uncovered).max(0)
        } else {
            0
        }
    );
    gauge(
        &mut out,
        "mig_audit_alerts_unacknowledged",
        "Override alerts waiting for the privacy officer's acknowledgement.",
        g.audit_alerts_unacknowledged,
    );

    gauge(
        &mut out,
        "mig_certificate_expiry_seconds",
        "Seconds until the appliance's TLS certificate expires (negative: expired).",
        g.appliance_cert_not_after.map(|t| t - g.now),
    );
    if !g.crls.is_empty() {
        family(
            &mut out,
            "mig_crl_expiry_seconds",
            "gauge",
            "Seconds until each installed CRL's nextUpdate (negative: stale), by file.",
        );
        for (file, next_update) in &g.crls {
            if let Some(next) = next_update {
                let _ = writeln!(
                    out,
                    "mig_crl_expiry_seconds{{crl=\"{}\"}} {}",
                    escape(file),
                    next - g.now
                );
            }
        }
    }
    family(
        &mut out,
        "mig_registry_files_not_applied",
        "gauge",
        "Registry files in the state directory that are not applied (see `migctl check`).",
    );
    let _ = writeln!(
        out,
        "mig_registry_files_not_applied {}",
        g.registry_files_not_applied
    );

    gauge(
        &mut out,
        "mig_replica_size_bytes",
        "Bytes the replica takes on disk (database and write-ahead log).",
        g.replica_bytes,
    );
    gauge(
        &mut out,
        "mig_replica_patients",
        "Patients in the replica.",
        g.replica_patients,
    );
    gauge(
        &mut out,
        "mig_replica_resources",
        "FHIR resources in the replica.",
        g.replica_resources,
    );
    gauge(
        &mut out,
        "mig_replica_last_import_timestamp_seconds",
        "Unix time of the replica's last write (an import or an upstream batch).",
        g.replica_last_write,
    );

    family(
        &mut out,
        "mig_health_status",
        "gauge",
        "1 when the TPM, replica, audit and registry checks pass, 0 otherwise.",
    );
    let _ = writeln!(out, "mig_health_status {}", u8::from(g.healthy));
    family(
        &mut out,
        "mig_ready",
        "gauge",
        "1 once migd has started serving.",
    );
    let _ = writeln!(out, "mig_ready {}", u8::from(g.ready));
    family(
        &mut out,
        "mig_build_info",
        "gauge",
        "Always 1; the labels say which image and A/B slot are running.",
    );
    let _ = writeln!(
        out,
        "mig_build_info{{slot=\"{}\",version=\"{}\",os=\"{}\",migd=\"{}\"}} 1",
        escape(&release.slot),
        escape(&release.version),
        escape(&release.os),
        escape(&release.migd)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn release_reads_the_rauc_slot_and_image_version() {
        let r = Release::parse(
            "root=/dev/sda2 rauc.slot=B quiet",
            "ID=debian\nVERSION_ID=\"12\"\n\nID=debian\nIMAGE_ID=mig-appliance\nIMAGE_VERSION=1.2.0\n",
        );
        assert_eq!((r.slot.as_str(), r.version.as_str()), ("B", "1.2.0"));
        assert_eq!(r.os, "mig-appliance");
        let none = Release::parse("", "");
        assert_eq!(
            (none.slot.as_str(), none.version.as_str()),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn exposition_has_help_and_type_before_samples_and_escapes_labels() {
        let m = Metrics {
            requests: Default::default(),
            latency: [Histogram::NEW; Interaction::ALL.len()],
            tpm: [Histogram::NEW; TpmOperation::ALL.len()],
            audit_last_checkpoint: Default::default(),
            audit_uncovered_since: Default::default(),
        };
        m.request(Interaction::Metadata, 200, Duration::from_millis(3));
        m.request(Interaction::Other, 418, Duration::from_millis(3));
        let gauges = Gauges {
            now: 1000,
            crls: vec![("a\"b.crl".into(), Some(1600))],
            ..Gauges::default()
        };
        let text = render_from(&m, &gauges, &Release::parse("", ""));
        assert!(text.contains(
            "mig_requests_total{interaction=\"metadata\",outcome=\"released\",status=\"200\"} 1"
        ));
        assert!(text.contains("status=\"other\"} 1"));
        assert!(text.contains("mig_crl_expiry_seconds{crl=\"a\\\"b.crl\"} 600"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {name} "))
                    || text.contains(&format!("# TYPE {base} ")),
                "{line}"
            );
        }
    }
}
