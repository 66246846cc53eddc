//! Patients as the API reads them from the replica, kept in the replica's record cache
//! (`replica::RecordCache`). The access decision and the Bundle are still made for every
//! request; only the replica read is shared.

use std::sync::{Arc, OnceLock};

use crate::replica::{Bodies, Cached, PatientAndItems, PatientRow, ReplicaError, ReplicaReader};
use mig_policy::fhir::{ItemFacts, SHARED_TYPES};
use mig_policy::PatientData;

/// One patient's record as read from one replica snapshot.
#[derive(Debug)]
pub struct PatientRecord {
    pub patient: PatientRow,
    /// Facts of the patient's items and of the shared resources they reference.
    pub data: PatientData,
    /// Bodies of `data.items`, in the same order.
    pub item_bodies: Bodies,
    /// Bodies of `data.shared`, in the same order.
    pub shared_bodies: Vec<String>,
    /// What the care-record page shows of it, made on the first request for the page.
    page: OnceLock<super::html::PageCache>,
    /// Its Bundle entries as written for earlier requests, by what they released.
    pub written: super::bundle::WrittenEntries,
}

impl PatientRecord {
    /// Reads the patient, their items and the shared resources those reference.
    pub fn read(
        reader: &ReplicaReader,
        nhs_number: &str,
    ) -> Result<Option<PatientRecord>, ReplicaError> {
        let Some(PatientAndItems {
            patient,
            items,
            bodies: item_bodies,
        }) = reader.patient_record(nhs_number)?
        else {
            return Ok(None);
        };
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
            written: Default::default(),
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
}

impl Cached for PatientRecord {
    /// Roughly what the record holds on the heap, for the cache's budget.
    fn approximate_bytes(&self) -> usize {
        const PER_ITEM: usize = 512;
        let bodies: usize = self.item_bodies.heap_bytes()
            + self.shared_bodies.iter().map(String::len).sum::<usize>();
        // The page view, if a page is asked for, is about a quarter of the bodies; each set of
        // written entries about the bodies again.
        self.patient.body.len()
            + bodies
            + bodies / 4
            + bodies * super::bundle::WRITTEN_VARIANTS
            + PER_ITEM * (self.item_bodies.len() + self.shared_bodies.len())
    }
}

/// The API's record cache.
pub type RecordCache = crate::replica::RecordCache<PatientRecord>;

/// The patient's record at `generation`, from the cache or else read (and kept).
pub fn get_or_read(
    cache: &RecordCache,
    reader: &ReplicaReader,
    generation: i64,
    nhs_number: &str,
) -> Result<Option<Arc<PatientRecord>>, ReplicaError> {
    cache.get_or_read(generation, nhs_number, || {
        PatientRecord::read(reader, nhs_number)
    })
}
