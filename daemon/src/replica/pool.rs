//! A small pool of read connections, so a request does not pay the open-and-key cost.

use std::path::PathBuf;
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::{ReplicaError, ReplicaReader};

/// Idle connections kept; more are opened under load and closed after use.
const MAX_IDLE: usize = 16;

pub struct ReaderPool {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
    // Guards only the idle list; connections are used outside the lock.
    idle: Mutex<Vec<ReplicaReader>>,
}

impl std::fmt::Debug for ReaderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderPool")
            .field("path", &self.path)
            .finish()
    }
}

impl ReaderPool {
    /// Opens one connection at once, so a wrong key or missing file shows at start-up.
    pub fn new(path: PathBuf, key: Zeroizing<[u8; 32]>) -> Result<ReaderPool, ReplicaError> {
        let first = ReplicaReader::open(&path, &key)?;
        Ok(ReaderPool {
            path,
            key,
            idle: Mutex::new(vec![first]),
        })
    }

    /// Runs `read` in one read transaction on a pooled connection, returning the connection
    /// afterwards.
    pub fn with<T>(
        &self,
        read: impl FnOnce(&ReplicaReader) -> Result<T, ReplicaError>,
    ) -> Result<T, ReplicaError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let reader = match idle {
            Some(reader) => reader,
            None => ReplicaReader::open(&self.path, &self.key)?,
        };
        let result = reader.snapshot(read);
        if !reader.is_idle() {
            return result;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(reader);
            }
        }
        result
    }
}
