//! The encrypted replica of the practice's record: SQLCipher pages keyed by the TPM-sealed
//! secret, one writer for ingest, and read connections for the API.
//!
//! What it guarantees: nothing is readable without the key (a wrong key fails at open), each
//! ingest batch commits whole or not at all, and purged patients are overwritten
//! (`secure_delete`). What it does not: decide who may read (that is `policy`).

mod ingest;
mod pool;
mod schema;
mod store;

pub use ingest::{ImportSummary, IngestError, NdjsonImport};
pub use pool::ReaderPool;
pub use store::{PatientRow, Replica, ReplicaError, ReplicaReader, ReplicaStats, StoredItem};
