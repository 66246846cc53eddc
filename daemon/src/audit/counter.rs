//! The monotonic counter every checkpoint carries (SPEC §8): on the appliance the TPM's NV
//! counter (`tpm::Tpm::audit_counter`); in memory for tests of the code above it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why the counter could not be read or incremented.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CounterError {
    /// The counter's holder (the TPM) refused or failed.
    #[error("the audit counter failed: {0}")]
    Failed(String),
    /// The counter's holder is gone (the TPM thread stopped).
    #[error("the audit counter is not available")]
    Unavailable,
}

/// A counter that only ever goes up and that the audit database's owner cannot reset.
pub trait Counter: Send + Sync + std::fmt::Debug {
    /// The current value. Blocking.
    fn read(&self) -> Result<u64, CounterError>;
    /// Adds one and returns the new value. Blocking.
    fn increment(&self) -> Result<u64, CounterError>;
}

/// A counter in process memory, for tests only: it resets with the process, so it proves
/// nothing about rollback on the appliance.
#[derive(Debug, Default)]
pub struct InMemoryCounter {
    value: AtomicU64,
}

impl InMemoryCounter {
    /// A counter starting at `value`.
    pub fn new(value: u64) -> InMemoryCounter {
        InMemoryCounter {
            value: AtomicU64::new(value),
        }
    }
}

impl Counter for InMemoryCounter {
    fn read(&self) -> Result<u64, CounterError> {
        Ok(self.value.load(Ordering::SeqCst))
    }

    fn increment(&self) -> Result<u64, CounterError> {
        Ok(self.value.fetch_add(1, Ordering::SeqCst) + 1)
    }
}
