//! Patients as the API reads them from the replica, and a small cache of the most recently read
//! ones: a burst of requests for one patient (a crew's two tablets, a handover, a clinician
//! moving between sections) reads and decodes their record once. The access decision and the
//! Bundle are still made for every request; only the replica read is shared.
//!
//! Each entry is tied to the replica generation it was read at, and every committed import,
//! upsert or purge raises the generation, so nothing stale (or purged) is ever served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::replica::{PatientRow, ReplicaError, ReplicaReader};
use mig_policy::fhir::{ItemFacts, SHARED_TYPES};
use mig_policy::PatientData;

/// One patient's record as read from one replica snapshot.
#[derive(Debug)]
pub struct PatientRecord {
    pub patient: PatientRow,
    /// Facts of the patient's items and of the shared resources they reference.
    pub data: PatientData,
    /// Bodies of `data.items`, in the same order.
    pub item_bodies: Vec<String>,
    /// Bodies of `data.shared`, in the same order.
    pub shared_bodies: Vec<String>,
    /// What the care-record page shows of it, made on the first request for the page.
    page: OnceLock<super::html::PageCache>,
}

impl PatientRecord {
    /// Reads the patient, their items and the shared resources those reference.
    pub fn read(
        reader: &ReplicaReader,
        nhs_number: &str,
    ) -> Result<Option<PatientRecord>, ReplicaError> {
        let Some(patient) = reader.patient_by_nhs_number(nhs_number)? else {
            return Ok(None);
        };
        let (items, item_bodies): (Vec<ItemFacts>, Vec<String>) = reader
            .patient_items(&patient.id)?
            .into_iter()
            .map(|item| (item.facts, item.body))
            .unzip();
        let mut shared_refs: Vec<&str> = items
            .iter()
            .flat_map(|facts| facts.references.iter().map(String::as_str))
            .filter(|r| {
                r.split_once('/')
                    .is_some_and(|(t, _)| SHARED_TYPES.contains(&t))
            })
            .collect();
        shared_refs.sort_unstable();
        shared_refs.dedup();
        let (shared, shared_bodies): (Vec<ItemFacts>, Vec<String>) = reader
            .resources(shared_refs)?
            .into_iter()
            .map(|item| (item.facts, item.body))
            .unzip();
        let data = PatientData::from_items(patient.facts.clone(), items, shared);
        Ok(Some(PatientRecord {
            patient,
            data,
            item_bodies,
            shared_bodies,
            page: OnceLock::new(),
        }))
    }

    /// The care-record page's view of this record.
    pub fn page(&self) -> &super::html::PageCache {
        self.page.get_or_init(|| {
            super::html::PageCache::new(
                &self.patient.body,
                &self.data.items,
                &self.item_bodies,
                self.data
                    .shared
                    .iter()
                    .zip(self.shared_bodies.iter().map(String::as_str)),
            )
        })
    }

    /// Roughly what the record holds on the heap, for the cache's budget.
    fn approximate_bytes(&self) -> usize {
        const PER_ITEM: usize = 512;
        let bodies: usize = self
            .item_bodies
            .iter()
            .chain(&self.shared_bodies)
            .map(String::len)
            .sum();
        // The page view, if a page is asked for, is about a quarter of the bodies.
        self.patient.body.len()
            + bodies
            + bodies / 4
            + PER_ITEM * (self.item_bodies.len() + self.shared_bodies.len())
    }
}

/// The most recently read patients, within a memory budget, least recently used out first.
#[derive(Debug)]
pub struct RecordCache {
    budget: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_nhs_number: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    generation: i64,
    record: Arc<PatientRecord>,
    bytes: usize,
    last_used: u64,
}

/// Enough for a few dozen typical patients; decrypted records are kept no longer than needed.
pub const DEFAULT_BUDGET: usize = 8 << 20;

impl Default for RecordCache {
    fn default() -> RecordCache {
        RecordCache::new(DEFAULT_BUDGET)
    }
}

impl RecordCache {
    pub fn new(budget: usize) -> RecordCache {
        RecordCache {
            budget,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The patient's record at `generation`, from the cache or else read (and kept).
    pub fn get_or_read(
        &self,
        reader: &ReplicaReader,
        generation: i64,
        nhs_number: &str,
    ) -> Result<Option<Arc<PatientRecord>>, ReplicaError> {
        if let Some(record) = self.get(nhs_number, generation) {
            return Ok(Some(record));
        }
        let Some(record) = PatientRecord::read(reader, nhs_number)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.insert(nhs_number, generation, record.clone());
        Ok(Some(record))
    }

    fn get(&self, nhs_number: &str, generation: i64) -> Option<Arc<PatientRecord>> {
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

    fn insert(&self, nhs_number: &str, generation: i64, record: Arc<PatientRecord>) {
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

    fn record(body_bytes: usize) -> Arc<PatientRecord> {
        Arc::new(PatientRecord {
            patient: PatientRow {
                id: "p".into(),
                nhs_number: "9990000018".into(),
                body: "x".repeat(body_bytes),
                facts: ItemFacts::default(),
            },
            data: PatientData::default(),
            item_bodies: Vec::new(),
            shared_bodies: Vec::new(),
            page: OnceLock::new(),
        })
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
