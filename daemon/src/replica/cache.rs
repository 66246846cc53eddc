//! A small cache of the most recently read patients' records, next to the replica they are
//! read from: a burst of requests for one patient (a crew's two tablets, a handover, a
//! clinician moving between sections) reads and decodes their record once.
//!
//! Each entry is tied to the replica generation it was read at, and every committed import,
//! upsert or purge raises the generation, so nothing stale (or purged) is ever served, and a
//! newer generation drops every older entry at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the cache holds: it counts each value's size against its budget.
pub trait Cached {
    /// Roughly what the value holds on the heap.
    fn approximate_bytes(&self) -> usize;
}

/// The most recently read patients, within a memory budget, least recently used out first.
#[derive(Debug)]
pub struct RecordCache<V> {
    budget: usize,
    inner: Mutex<Entries<V>>,
}

#[derive(Debug)]
struct Entries<V> {
    by_nhs_number: HashMap<String, Entry<V>>,
    bytes: usize,
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    generation: i64,
    record: Arc<V>,
    bytes: usize,
    last_used: u64,
}

/// Enough for about a dozen typical patients with their written Bundle entries (a burst for one
/// patient needs one); decrypted records are kept no longer than needed, and under a load of
/// many patients a larger cache only holds records that leave it unused (12 MiB cost ~8 MiB
/// more resident memory under the uncached load, for no hit).
pub const DEFAULT_BUDGET: usize = 6 << 20;

impl<V: Cached> Default for RecordCache<V> {
    fn default() -> RecordCache<V> {
        RecordCache::new(DEFAULT_BUDGET)
    }
}

impl<V: Cached> RecordCache<V> {
    pub fn new(budget: usize) -> RecordCache<V> {
        RecordCache {
            budget,
            inner: Mutex::new(Entries {
                by_nhs_number: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
        }
    }

    /// The patient's record at `generation`, from the cache or else read (and kept).
    pub fn get_or_read<E>(
        &self,
        generation: i64,
        nhs_number: &str,
        read: impl FnOnce() -> Result<Option<V>, E>,
    ) -> Result<Option<Arc<V>>, E> {
        if let Some(record) = self.get(nhs_number, generation) {
            return Ok(Some(record));
        }
        let Some(record) = read()? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.insert(nhs_number, generation, record.clone());
        Ok(Some(record))
    }

    fn get(&self, nhs_number: &str, generation: i64) -> Option<Arc<V>> {
        let mut entries = self.inner.lock().ok()?;
        entries.clock += 1;
        let now = entries.clock;
        let entry = entries.by_nhs_number.get_mut(nhs_number)?;
        if entry.generation != generation {
            return None;
        }
        entry.last_used = now;
        Some(entry.record.clone())
    }

    fn insert(&self, nhs_number: &str, generation: i64, record: Arc<V>) {
        let bytes = record.approximate_bytes();
        if bytes > self.budget {
            return;
        }
        // Records leave the cache here but are freed after the lock is released: freeing one
        // is thousands of deallocations, and other requests are waiting on the lock.
        let mut leaving = Vec::new();
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let entries = &mut *guard;
        // Anything from an older generation is stale for good.
        let stale: Vec<String> = entries
            .by_nhs_number
            .iter()
            .filter(|(nhs, e)| e.generation < generation || *nhs == nhs_number)
            .map(|(nhs, _)| nhs.clone())
            .collect();
        for nhs in stale {
            leaving.extend(entries.by_nhs_number.remove(&nhs));
        }
        entries.bytes = entries.by_nhs_number.values().map(|e| e.bytes).sum();
        while entries.bytes + bytes > self.budget {
            let Some(oldest) = entries
                .by_nhs_number
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(nhs, _)| nhs.clone())
            else {
                break;
            };
            if let Some(evicted) = entries.by_nhs_number.remove(&oldest) {
                entries.bytes -= evicted.bytes;
                leaving.push(evicted);
            }
        }
        entries.clock += 1;
        let last_used = entries.clock;
        entries.bytes += bytes;
        entries.by_nhs_number.insert(
            nhs_number.to_owned(),
            Entry {
                generation,
                record,
                bytes,
                last_used,
            },
        );
        drop(guard);
        drop(leaving);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sized(usize);

    impl Cached for Sized {
        fn approximate_bytes(&self) -> usize {
            self.0
        }
    }

    fn record(bytes: usize) -> Arc<Sized> {
        Arc::new(Sized(bytes))
    }

    #[test]
    fn an_entry_serves_only_its_own_generation() {
        let cache = RecordCache::new(1 << 20);
        cache.insert("9990000018", 3, record(10));
        assert!(cache.get("9990000018", 3).is_some());
        assert!(cache.get("9990000018", 4).is_none(), "newer replica");
        assert!(cache.get("9990000026", 3).is_none());
        // A read at a newer generation drops every older entry.
        cache.insert("9990000026", 4, record(10));
        assert!(cache.get("9990000018", 3).is_none());
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let cache = RecordCache::new(1000);
        cache.insert("a", 1, record(400));
        cache.insert("b", 1, record(400));
        assert!(cache.get("a", 1).is_some());
        cache.insert("c", 1, record(400));
        assert!(cache.get("b", 1).is_none(), "b was least recently used");
        assert!(cache.get("a", 1).is_some() && cache.get("c", 1).is_some());
        cache.insert("huge", 1, record(5000));
        assert!(
            cache.get("huge", 1).is_none(),
            "larger than the whole budget"
        );
        let bytes = cache.inner.lock().unwrap().bytes;
        assert!(bytes <= 1000, "{bytes}");
    }
}
