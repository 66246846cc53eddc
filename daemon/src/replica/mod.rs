//! The encrypted replica of the practice's record: SQLCipher pages keyed by the TPM-sealed
//! secret, one writer for ingest, and read connections for the API.
//!
//! What it guarantees: nothing is readable without the key (a wrong key fails at open), each
//! ingest batch commits whole or not at all, and purged patients are overwritten
//! (`secure_delete`). What it does not: decide who may read (that is `policy`).

mod cache;
mod ingest;
mod packed;
mod pool;
mod schema;
mod store;

pub use cache::{Cached, RecordCache, DEFAULT_BUDGET as RECORD_CACHE_BUDGET};
pub use ingest::{ImportSummary, IngestError, NdjsonImport};
pub use packed::{spawn_packer, Packer};
pub use pool::ReaderPool;
pub use store::{
    Bodies, PatientAndItems, PatientRow, Replica, ReplicaError, ReplicaReader, ReplicaStats,
    StoredItem,
};

/// The `.ndjson` files of a Bulk Data export directory in the order to import them: Patient
/// first (items find their patient by NHS number), then the rest by name.
pub fn ndjson_import_order(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort_by_key(|p| {
        (
            p.file_name().is_none_or(|n| n != "Patient.ndjson"),
            p.clone(),
        )
    });
    Ok(files)
}
