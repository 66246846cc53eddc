//! Shared helpers for the audit integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mig::audit::{
    AuditLog, AuditOptions, AuditRecord, Counter, CounterError, Decision, PermissionBasis,
    RecordKind,
};
use mig::keys::{InMemorySigner, Signer};

pub const KEY: [u8; 32] = [7u8; 32];

pub fn signer() -> Arc<InMemorySigner> {
    InMemorySigner::generate().unwrap()
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("audit.db")
}

/// Opens the trail at `path`, creating it if missing, with `counter_for(path)`.
pub fn open(path: &Path, signer: Arc<InMemorySigner>, options: AuditOptions) -> AuditLog {
    try_open(path, signer, options).unwrap()
}

pub fn try_open(
    path: &Path,
    signer: Arc<InMemorySigner>,
    options: AuditOptions,
) -> Result<AuditLog, mig::audit::AuditError> {
    let signer: Arc<dyn Signer> = signer;
    let counter = counter_for(path);
    if path.exists() {
        AuditLog::open(path, &KEY, signer, counter, options)
    } else {
        AuditLog::create(path, &KEY, signer, counter, options)
    }
}

/// The stand-in for the TPM's counter that goes with the trail at `path`: a file beside it
/// (`audit.counter`), so it outlives a reopen or a killed process, as the TPM's does.
pub fn counter_for(path: &Path) -> Arc<FileCounter> {
    Arc::new(FileCounter(path.with_extension("counter")))
}

#[derive(Debug)]
pub struct FileCounter(pub PathBuf);

impl FileCounter {
    pub fn set(&self, value: u64) {
        std::fs::write(&self.0, value.to_string()).unwrap();
    }
}

impl Counter for FileCounter {
    fn read(&self) -> Result<u64, CounterError> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => Ok(text.trim().parse().unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(CounterError::Failed(e.to_string())),
        }
    }

    fn increment(&self) -> Result<u64, CounterError> {
        let value = self.read()? + 1;
        let temp = self.0.with_extension("counter.tmp");
        std::fs::write(&temp, value.to_string())
            .map_err(|e| CounterError::Failed(e.to_string()))?;
        std::fs::rename(&temp, &self.0).map_err(|e| CounterError::Failed(e.to_string()))?;
        Ok(value)
    }
}

/// A permitted structured-record request with every field filled.
pub fn partner_request(n: u64) -> AuditRecord {
    let mut r = AuditRecord::new(RecordKind::PartnerRequest, Decision::Permit);
    r.partner_ods = Some("RX9".into());
    r.partner_cert_sha256 = Some("ab".repeat(32));
    r.sds_user_id = Some(format!("{:012}", 100000000000u64 + n));
    r.sds_role_profile_id = Some("555021935107".into());
    r.job_role = Some("R8000".into());
    r.requesting_org_ods = Some("RX9".into());
    r.requesting_device =
        Some(r#"{"resourceType":"Device","identifier":[{"value":"tablet-7"}]}"#.into());
    r.nhs_number = Some("9000000009".into());
    r.interaction_id =
        Some("urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1".into());
    r.trace_id = Some(format!("3f2a1b4c-0000-4000-8000-{:012}", n));
    r.from_asid = Some("200000000999".into());
    r.basis = PermissionBasis::Granted;
    r.sections = vec!["allergies".into(), "medications".into()];
    r
}

pub fn override_request(n: u64) -> AuditRecord {
    let mut r = partner_request(n);
    r.basis = PermissionBasis::Override;
    r.override_reason = Some("emergency".into());
    r.override_justification = Some("Unconscious patient brought in by ambulance".into());
    r
}

pub fn refused_request(n: u64) -> AuditRecord {
    let mut r = partner_request(n);
    r.decision = Decision::Refuse;
    r.error_code = Some("NO_PATIENT_CONSENT".into());
    r.basis = PermissionBasis::None;
    r.sections.clear();
    r
}

/// Options that checkpoint only when asked (shutdown), so tests control coverage.
pub fn manual_checkpoints() -> AuditOptions {
    AuditOptions {
        checkpoint_every: u64::MAX / 2,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..AuditOptions::default()
    }
}

/// Opens the raw database with the key, for tampering.
pub fn raw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
        hex::encode(KEY)
    ))
    .unwrap();
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
        .unwrap();
    conn
}
