//! The structured-record Bundle (SPEC §4): Patient, the practice Organization, one List per
//! requested section (two for allergies when ended ones are asked for), the released items and
//! the shared resources they reference. Every entry has the `fullUrl` `{base}/{Type}/{id}`
//! (the Lists' ids are fresh UUIDs), so that the relative references between them (List
//! entries, a MedicationRequest's Medication) resolve inside the Bundle by FHIR R4's rules.
//!
//! Nothing in it may point at what was withheld: a reference to anything not in the Bundle
//! (a withheld item, or one outside the released sections) is removed from the copy we send,
//! and no count of withheld items appears anywhere.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::parameters::RecordRequest;
use super::records::PatientRecord;
use super::{filters, Appliance};
use mig_policy::fhir::{ItemFacts, RecordList, Section, NHS_NUMBER_SYSTEM, ODS_SYSTEM};
use mig_policy::Release;

pub const WARNING_EXTENSION: &str =
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-CareConnect-GPC-ListWarningCode-1";
pub const WITHHELD_NOTE: &str = "Items excluded due to confidentiality and/or patient preferences.";
const EMPTY_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/list-empty-reason";
/// The note GP Connect puts on a List with nothing recorded.
pub const EMPTY_NOTE: &str = "Information not available";

/// A stored resource on its way into the Bundle.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub facts: &'a ItemFacts,
    /// The resource as received (JSON).
    pub body: &'a str,
}

/// One List of a requested section.
#[derive(Debug)]
pub struct SectionList<'a> {
    pub list: RecordList,
    pub items: Vec<Entry<'a>>,
    /// Something was withheld from this List (or all of its section was).
    pub withheld: bool,
}

/// Everything the Bundle is made of.
#[derive(Debug)]
pub struct RecordParts<'a> {
    /// The FHIR base URL (config), for the entries' `fullUrl`.
    pub fhir_base: &'a str,
    pub patient_id: &'a str,
    pub patient_nhs_number: &'a str,
    pub patient_body: &'a str,
    pub practice_ods: &'a str,
    pub practice_name: &'a str,
    pub lists: Vec<SectionList<'a>>,
    /// Shared resources (Medication, Practitioner, …) referenced by released items.
    pub shared: Vec<Entry<'a>>,
    /// GP Connect 1.6 parameters and parts asked for but not implemented (`name` or
    /// `name.part`): one NOT_IMPLEMENTED warning each, in one OperationOutcome.
    pub not_implemented: &'a [String],
    /// RFC 3339 time the record was assembled.
    pub assembled_at: &'a str,
    /// The record's entries as written for earlier requests, if it is kept in the cache.
    pub written: Option<&'a WrittenEntries>,
}

/// A cached record's Patient and item entries as written for earlier requests, by exactly
/// what was in their Bundle: a request whose decision released the same entries in the same
/// order copies these bytes instead of writing them again (the per-request parts, the Bundle
/// and List ids, times and Lists, are always written anew). Any other set of entries is a
/// different key, so bytes written for one decision never reach a request that the decision
/// did not make identical.
#[derive(Debug, Default)]
pub struct WrittenEntries {
    variants: Mutex<Vec<Arc<Written>>>,
    /// Bundles written from this record so far.
    bundles: std::sync::atomic::AtomicU32,
}

/// How many sets of entries one record keeps (two partners asking in turn both hit).
pub const WRITTEN_VARIANTS: usize = 2;

#[derive(Debug)]
struct Written {
    /// What the bytes depend on: base URL, practice, patient, then every entry's `Type/id`.
    key: Vec<u8>,
    patient: Vec<u8>,
    entries: Vec<u8>,
}

impl WrittenEntries {
    /// Whether entries written now are worth a copy: not for a record's first Bundle, since
    /// most records are asked for once before they leave the cache (an uncached read), and the
    /// copy costs as much memory again as the entries.
    fn worth_keeping(&self) -> bool {
        self.bundles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    fn get(&self, key: &[u8]) -> Option<Arc<Written>> {
        let variants = self.variants.lock().ok()?;
        variants.iter().find(|w| w.key == key).cloned()
    }

    fn keep(&self, written: Arc<Written>) {
        if let Ok(mut variants) = self.variants.lock() {
            if variants.len() >= WRITTEN_VARIANTS {
                variants.remove(0);
            }
            variants.push(written);
        }
    }
}

/// The key of `WrittenEntries`: everything the Patient and item entries' bytes depend on
/// besides the record itself (whose one generation the cache entry already is).
fn written_key(parts: &RecordParts<'_>) -> Vec<u8> {
    let entries = parts
        .lists
        .iter()
        .flat_map(|l| l.items.iter())
        .chain(&parts.shared);
    let mut key = Vec::with_capacity(64 * (parts.shared.len() + 16));
    for field in [
        parts.fhir_base,
        parts.practice_ods,
        parts.patient_id,
        parts.patient_nhs_number,
    ] {
        key.extend_from_slice(field.as_bytes());
        key.push(b'\n');
    }
    for entry in entries {
        key.extend_from_slice(entry.facts.resource_type.as_bytes());
        key.push(b'/');
        key.extend_from_slice(entry.facts.id.as_bytes());
        key.push(b'\n');
    }
    key
}

impl<'a> RecordParts<'a> {
    /// What goes into the patient's record: the items policy released that the request's
    /// filters keep, each requested section's List, and the shared resources those items
    /// reference.
    pub fn compose(
        appliance: &'a Appliance,
        record: &'a PatientRecord,
        release: &Release,
        wanted: &'a RecordRequest,
        assembled_at: &'a str,
    ) -> RecordParts<'a> {
        let PatientRecord {
            patient,
            data,
            item_bodies,
            shared_bodies,
            ..
        } = record;
        // Released items with their Lists (every released item has one).
        let released: Vec<(RecordList, Entry<'a>)> = release
            .released_items
            .iter()
            .filter_map(|&i| {
                let entry = Entry {
                    facts: data.items.get(i)?,
                    body: item_bodies.get(i)?,
                };
                Some(((*release.item_lists.get(i)?)?, entry))
            })
            .collect();
        let released = filters::apply(released, |list| Some(list.section()), wanted);
        // Shared resources go out only if a released item references them and policy kept them.
        let referenced = Included::new(
            released.iter().map(|(_, e)| e.facts.references.len()).sum(),
            released
                .iter()
                .flat_map(|(_, e)| e.facts.references.iter())
                .filter_map(|r| r.split_once('/')),
        );
        let shared = release
            .released_shared
            .iter()
            .filter_map(|&i| {
                Some(Entry {
                    facts: data.shared.get(i)?,
                    body: shared_bodies.get(i)?,
                })
            })
            .filter(|e| referenced.contains(e.facts))
            .collect();
        // Each requested section's List, and the Ended allergies List right after allergies
        // when asked for.
        let lists = wanted
            .sections
            .iter()
            .flat_map(|&section| {
                let ended = section == Section::Allergies && wanted.include_resolved_allergies;
                std::iter::once(RecordList::Section(section))
                    .chain(ended.then_some(RecordList::EndedAllergies))
            })
            .map(|list| SectionList {
                list,
                items: released
                    .iter()
                    .filter(|(l, _)| *l == list)
                    .map(|&(_, entry)| entry)
                    .collect(),
                withheld: release.list_has_warning(list),
            })
            .collect();
        RecordParts {
            fhir_base: &appliance.fhir_base,
            patient_id: &patient.id,
            patient_nhs_number: &patient.nhs_number,
            patient_body: &patient.body,
            practice_ods: &appliance.ods,
            practice_name: &appliance.name,
            lists,
            shared,
            not_implemented: &wanted.not_implemented,
            assembled_at,
            written: Some(&record.written),
        }
    }
}

/// A Patient search's `searchset`: the patient, or none. `patient`: the stored body and the
/// NHS number.
pub fn searchset(patient: Option<(&str, &str)>, fhir_base: &str, assembled_at: &str) -> String {
    let parsed = patient.and_then(|(body, nhs_number)| {
        Some((serde_json::from_str::<Value>(body).ok()?, nhs_number))
    });
    let entries = match parsed {
        Some((mut patient, nhs_number)) => {
            let id = patient["id"].as_str().unwrap_or_default().to_owned();
            strip_outside_references(
                &mut patient,
                &Included::new(1, [("Patient", id.as_str())]).for_patient(nhs_number),
            );
            let full_url = format!("{}/Patient/{id}", fhir_base.trim_end_matches('/'));
            vec![
                serde_json::json!({"fullUrl": full_url, "resource": patient, "search": {"mode": "match"}}),
            ]
        }
        None => Vec::new(),
    };
    serde_json::json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": assembled_at},
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })
    .to_string()
}

/// A set of resources as (type, id): what the Bundle contains (anything else may not be
/// referenced), or what released items reference. Built for every record, so with a fast
/// hash (the keys are our own stored ids, not chosen per request by a partner).
pub(crate) struct Included<'a> {
    members: rustc_hash::FxHashSet<(&'a str, &'a str)>,
    /// The patient's NHS number: a Reference by any other NHS number names another patient.
    nhs_number: Option<&'a str>,
}

impl<'a> Included<'a> {
    /// `capacity`: how many members to expect (duplicates included), so the set is sized once.
    pub(crate) fn new(
        capacity: usize,
        members: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Included<'a> {
        let mut set = rustc_hash::FxHashSet::with_capacity_and_hasher(capacity, Default::default());
        set.extend(members);
        Included {
            members: set,
            nhs_number: None,
        }
    }

    /// The Bundle is this patient's, known by this NHS number.
    pub(crate) fn for_patient(mut self, nhs_number: &'a str) -> Included<'a> {
        self.nhs_number = Some(nhs_number);
        self
    }

    fn has(&self, member: (&str, &str)) -> bool {
        self.members.contains(&member)
    }

    /// Whether an NHS number is not the patient's (without a patient, every one is another's).
    fn is_another_patient(&self, nhs_number: &str) -> bool {
        self.nhs_number != Some(nhs_number)
    }

    /// Whether a released item's facts name anything outside the Bundle.
    fn names_outside(&self, facts: &ItemFacts) -> bool {
        facts.references.iter().any(|r| !self.has_reference(r))
            || facts.nhs_numbers.iter().any(|n| self.is_another_patient(n))
    }

    pub(crate) fn contains(&self, facts: &ItemFacts) -> bool {
        self.has((facts.resource_type.as_str(), facts.id.as_str()))
    }

    /// Whether a `Type/id` reference points inside.
    fn has_reference(&self, reference: &str) -> bool {
        reference
            .split_once('/')
            .is_some_and(|member| self.has(member))
    }
}

/// Renders the Bundle as JSON. Item bodies are copied as stored unless they reference
/// something outside the Bundle; the rest is written directly, as this runs for every record.
pub fn structured_record(parts: &RecordParts<'_>) -> Vec<u8> {
    let item_count: usize = parts.lists.iter().map(|l| l.items.len()).sum();
    let keyed = parts.written.map(|cache| (cache, written_key(parts)));
    // Entries not written before are written straight into the Bundle.
    let source = match keyed.as_ref().and_then(|(cache, key)| cache.get(key)) {
        Some(written) => Source::Kept(written),
        None => Source::Fresh(EntryWriter::new(parts, item_count)),
    };

    // Room for the entries and each List's own fields, so the buffer is allocated once:
    // growing a 100+ KB buffer copies it each time.
    const LIST_ENTRY: usize = 96;
    const FULL_URL: usize = 128;
    let entries = match &source {
        Source::Kept(written) => written.patient.len() + written.entries.len(),
        Source::Fresh(_) => {
            parts.patient_body.len()
                + entries(parts)
                    .map(|e| e.body.len() + FULL_URL)
                    .sum::<usize>()
        }
    };
    let capacity = entries + LIST_ENTRY * item_count + 1024 * (parts.lists.len() + 2);
    let base = escaped_base(parts.fhir_base);
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(br#"{"resourceType":"Bundle","id":""#);
    push_uuid(&mut out);
    out.extend_from_slice(br#"","meta":{"lastUpdated":"#);
    push_str(&mut out, parts.assembled_at);
    out.extend_from_slice(br#"},"type":"collection","entry":["#);
    full_url(&mut out, &base, "Patient", parts.patient_id);
    let patient_start = out.len();
    match &source {
        Source::Kept(written) => out.extend_from_slice(&written.patient),
        Source::Fresh(writer) => writer.patient(&mut out, parts),
    }
    let patient_end = out.len();
    out.extend_from_slice(b"},");
    // The practice's ODS code (config checks it is alphanumeric) is the Organization's id.
    full_url(&mut out, &base, "Organization", parts.practice_ods);
    out.extend_from_slice(br#"{"resourceType":"Organization","id":"#);
    push_str(&mut out, parts.practice_ods);
    out.extend_from_slice(br#","identifier":[{"system":"#);
    push_str(&mut out, ODS_SYSTEM);
    out.extend_from_slice(br#","value":"#);
    push_str(&mut out, parts.practice_ods);
    out.extend_from_slice(br#"}],"name":"#);
    push_str(&mut out, parts.practice_name);
    out.extend_from_slice(b"}}");
    for list in &parts.lists {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
        out.push(b',');
        full_url(&mut out, &base, "List", id);
        push_section_list(&mut out, list, id, parts);
        out.push(b'}');
    }
    let entries_start = out.len();
    match &source {
        Source::Kept(written) => out.extend_from_slice(&written.entries),
        Source::Fresh(writer) => writer.entries(&mut out, parts, &base),
    }
    if let (Source::Fresh(_), Some((cache, key))) = (&source, keyed) {
        if cache.worth_keeping() {
            cache.keep(Arc::new(Written {
                key,
                patient: out[patient_start..patient_end].to_vec(),
                entries: out[entries_start..].to_vec(),
            }));
        }
    }
    if !parts.not_implemented.is_empty() {
        let outcome = not_implemented_outcome(parts.not_implemented);
        let id = outcome["id"].as_str().unwrap_or_default();
        out.push(b',');
        full_url(&mut out, &base, "OperationOutcome", id);
        push_value(&mut out, &outcome);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// The base, escaped once, without its closing quote: each fullUrl continues it.
fn escaped_base(fhir_base: &str) -> Vec<u8> {
    let mut quoted = Vec::with_capacity(fhir_base.len() + 8);
    push_str(&mut quoted, fhir_base.trim_end_matches('/'));
    quoted.pop();
    quoted
}

/// `{"fullUrl":"{base}/{type}/{id}","resource":` (the entry is closed by the caller).
fn full_url(out: &mut Vec<u8>, base: &[u8], resource_type: &str, id: &str) {
    out.extend_from_slice(br#"{"fullUrl":"#);
    out.extend_from_slice(base);
    out.push(b'/');
    // Type and id were checked at ingest ([A-Za-z]+ and [A-Za-z0-9.-]+): nothing to escape.
    out.extend_from_slice(resource_type.as_bytes());
    out.push(b'/');
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#"","resource":"#);
}

/// Every item and shared resource in the Bundle, in order.
fn entries<'p>(parts: &'p RecordParts<'_>) -> impl Iterator<Item = &'p Entry<'p>> {
    parts
        .lists
        .iter()
        .flat_map(|l| l.items.iter())
        .chain(&parts.shared)
}

/// Where a Bundle's Patient and item entries come from.
enum Source<'p> {
    /// Written for an earlier request that released the same entries.
    Kept(Arc<Written>),
    Fresh(EntryWriter<'p>),
}

/// Writes the Patient resource and the `,{entry}` of every item and shared resource: what
/// depends only on which entries the Bundle holds (`written_key`), not on the request.
struct EntryWriter<'p> {
    included: Included<'p>,
}

impl<'p> EntryWriter<'p> {
    fn new(parts: &'p RecordParts<'_>, item_count: usize) -> EntryWriter<'p> {
        let included = Included::new(
            item_count + parts.shared.len() + 2,
            entries(parts)
                .map(|e| (e.facts.resource_type.as_str(), e.facts.id.as_str()))
                .chain([
                    ("Patient", parts.patient_id),
                    ("Organization", parts.practice_ods),
                ]),
        )
        .for_patient(parts.patient_nhs_number);
        EntryWriter { included }
    }

    fn patient(&self, out: &mut Vec<u8>, parts: &RecordParts<'_>) {
        push_stripped(out, parts.patient_body, &self.included);
    }

    /// `base` is `escaped_base` of the parts' FHIR base.
    fn entries(&self, out: &mut Vec<u8>, parts: &RecordParts<'_>, base: &[u8]) {
        for entry in entries(parts) {
            if self.included.names_outside(entry.facts) {
                // Bodies were parsed at ingest; one that no longer parses is left out.
                let Ok(mut value) = serde_json::from_str::<Value>(entry.body) else {
                    continue;
                };
                strip_outside_references(&mut value, &self.included);
                out.push(b',');
                full_url(out, base, &entry.facts.resource_type, &entry.facts.id);
                push_value(out, &value);
            } else {
                out.push(b',');
                full_url(out, base, &entry.facts.resource_type, &entry.facts.id);
                out.extend_from_slice(entry.body.as_bytes());
            }
            out.push(b'}');
        }
    }
}

/// GP Connect 1.6 version compatibility: one OperationOutcome with a warning per parameter or
/// part asked for but not implemented, worded as the specification gives it.
pub fn not_implemented_outcome(names: &[String]) -> Value {
    let issues: Vec<Value> = names
        .iter()
        .map(|name| {
            serde_json::json!({
                "severity": "warning",
                "code": "not-supported",
                "details": {
                    "coding": [{
                        "system": super::outcome::ERROR_CODE_SYSTEM,
                        "code": "NOT_IMPLEMENTED",
                        "display": "Not implemented"
                    }],
                    "text": format!("{name} is an unrecognised parameter")
                },
                "diagnostics": name
            })
        })
        .collect();
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "id": uuid::Uuid::new_v4().to_string(),
        "issue": issues
    })
}

/// Copies a stored resource without the references that leave the Bundle.
fn push_stripped(out: &mut Vec<u8>, body: &str, included: &Included<'_>) {
    match serde_json::from_str::<Value>(body) {
        Ok(mut value) => {
            strip_outside_references(&mut value, included);
            push_value(out, &value);
        }
        Err(_) => out.extend_from_slice(body.as_bytes()),
    }
}

fn push_value(out: &mut Vec<u8>, value: &Value) {
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A JSON string, quoted and escaped.
fn push_str(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

fn push_uuid(out: &mut Vec<u8>) {
    let mut buffer = uuid::Uuid::encode_buffer();
    out.extend_from_slice(
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut buffer)
            .as_bytes(),
    );
}

fn push_section_list(out: &mut Vec<u8>, list: &SectionList<'_>, id: &str, parts: &RecordParts<'_>) {
    let (system, code, display) = list.list.code();
    out.extend_from_slice(br#"{"resourceType":"List","id":""#);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#"","status":"current","mode":"snapshot","title":"#);
    push_str(out, display);
    out.extend_from_slice(br#","code":{"coding":[{"system":"#);
    push_str(out, system);
    out.extend_from_slice(br#","code":"#);
    push_str(out, code);
    out.extend_from_slice(br#","display":"#);
    push_str(out, display);
    out.extend_from_slice(br#"}]},"subject":{"reference":"#);
    push_str(out, &format!("Patient/{}", parts.patient_id));
    out.extend_from_slice(br#"},"date":"#);
    push_str(out, parts.assembled_at);
    if list.withheld {
        out.extend_from_slice(br#","extension":[{"url":"#);
        push_str(out, WARNING_EXTENSION);
        out.extend_from_slice(br#","valueCode":"confidential-items"}],"note":[{"text":"#);
        push_str(out, WITHHELD_NOTE);
        out.extend_from_slice(b"}]");
    }
    if list.items.is_empty() {
        let (reason, reason_display, text) = if list.withheld {
            ("withheld", "Information Withheld", "Information withheld")
        } else {
            // GP Connect's assurance suite expects a note on every empty List.
            out.extend_from_slice(br#","note":[{"text":"#);
            push_str(out, EMPTY_NOTE);
            out.extend_from_slice(b"}]");
            ("nilknown", "Nil Known", "No content recorded")
        };
        out.extend_from_slice(br#","emptyReason":{"coding":[{"system":"#);
        push_str(out, EMPTY_REASON_SYSTEM);
        out.extend_from_slice(br#","code":"#);
        push_str(out, reason);
        out.extend_from_slice(br#","display":"#);
        push_str(out, reason_display);
        out.extend_from_slice(br#"}],"text":"#);
        push_str(out, text);
        out.push(b'}');
    } else {
        out.extend_from_slice(br#","entry":["#);
        for (n, item) in list.items.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"item":{"reference":""#);
            // Type and id were checked at ingest ([A-Za-z]+ and [A-Za-z0-9.-]+): nothing to escape.
            out.extend_from_slice(item.facts.resource_type.as_bytes());
            out.push(b'/');
            out.extend_from_slice(item.facts.id.as_bytes());
            out.extend_from_slice(br#""}}"#);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Removes every Reference whose target is not in `included` (contained `#` references stay),
/// and every Reference by identifier to another patient's NHS number.
pub(crate) fn strip_outside_references(value: &mut Value, included: &Included<'_>) {
    let is_outside = |v: &Value| -> bool {
        let another_patient = v.get("identifier").is_some_and(|i| {
            i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM)
                && i.get("value")
                    .and_then(Value::as_str)
                    .is_none_or(|n| included.is_another_patient(n))
        });
        another_patient
            || match v.get("reference").and_then(Value::as_str) {
                Some(r) if r.starts_with('#') => false,
                Some(r) => match mig_policy::fhir::split_reference(r) {
                    Some(member) => !included.has(member),
                    None => true,
                },
                None => false,
            }
    };
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !(v.is_object() && is_outside(v)));
            for v in map.values_mut() {
                if let Value::Array(items) = v {
                    items.retain(|item| !(item.is_object() && is_outside(item)));
                }
            }
            map.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
            map.values_mut()
                .for_each(|v| strip_outside_references(v, included));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| strip_outside_references(v, included)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mig_policy::fhir::{extract_facts, Section};
    use serde_json::json;

    fn stored(value: Value) -> (ItemFacts, String) {
        (extract_facts(&value).unwrap(), value.to_string())
    }

    fn entry((facts, body): &(ItemFacts, String)) -> Entry<'_> {
        Entry { facts, body }
    }

    #[test]
    fn removes_references_to_anything_outside_the_bundle() {
        let condition = stored(
            json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}}),
        );
        let request = stored(json!({"resourceType": "MedicationRequest", "id": "m1",
            "subject": {"reference": "Patient/p"},
            "reasonReference": [{"reference": "Condition/secret"}, {"reference": "Condition/c1"}],
            "basedOn": [{"reference": "CarePlan/hidden"}],
            "recorder": {"reference": "Practitioner/gp"}}));
        let parts = RecordParts {
            fhir_base: "https://mig.example/fhir/",
            patient_id: "p",
            patient_nhs_number: "9434765919",
            patient_body: r#"{"resourceType":"Patient","id":"p","managingOrganization":{"reference":"Organization/elsewhere"}}"#,
            practice_ods: "A81001",
            practice_name: "The Surgery",
            lists: vec![
                SectionList {
                    list: RecordList::Section(Section::Problems),
                    items: vec![entry(&condition)],
                    withheld: false,
                },
                SectionList {
                    list: RecordList::Section(Section::Medications),
                    items: vec![entry(&request)],
                    withheld: true,
                },
                SectionList {
                    list: RecordList::Section(Section::Allergies),
                    items: vec![],
                    withheld: false,
                },
                SectionList {
                    list: RecordList::Section(Section::EndOfLife),
                    items: vec![],
                    withheld: true,
                },
            ],
            shared: vec![],
            not_implemented: &["includeDiaryEntries".into()],
            assembled_at: "2026-11-27T10:00:00Z",
            written: None,
        };
        let bundle: Value = serde_json::from_slice(&structured_record(&parts)).unwrap();
        let text = bundle.to_string();
        for gone in [
            "Condition/secret",
            "CarePlan/hidden",
            "Practitioner/gp",
            "Organization/elsewhere",
            "basedOn",
        ] {
            assert!(!text.contains(gone), "{gone} leaked");
        }
        assert!(text.contains("Condition/c1"));
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2 + 4 + 2 + 1);
        let warning = &entries.last().unwrap()["resource"];
        assert_eq!(warning["resourceType"], "OperationOutcome");
        assert_eq!(warning["issue"][0]["severity"], "warning");
        assert_eq!(
            warning["issue"][0]["details"]["coding"][0]["code"],
            "NOT_IMPLEMENTED"
        );
        assert_eq!(warning["issue"][0]["diagnostics"], "includeDiaryEntries");
        let lists: Vec<&Value> = entries
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "List")
            .collect();
        assert!(lists[0].get("extension").is_none() && lists[0].get("emptyReason").is_none());
        assert_eq!(lists[1]["extension"][0]["valueCode"], "confidential-items");
        assert!(lists[1].get("emptyReason").is_none());
        assert_eq!(lists[2]["emptyReason"]["coding"][0]["code"], "nilknown");
        assert_eq!(lists[2]["note"][0]["text"], EMPTY_NOTE);
        assert_eq!(lists[3]["emptyReason"]["coding"][0]["code"], "withheld");
        assert_eq!(lists[3]["note"][0]["text"], WITHHELD_NOTE);
        // Every entry has an absolute fullUrl that names its resource.
        for entry in entries {
            let resource = &entry["resource"];
            let expected = format!(
                "https://mig.example/fhir/{}/{}",
                resource["resourceType"].as_str().unwrap(),
                resource["id"].as_str().unwrap()
            );
            assert_eq!(entry["fullUrl"], expected.as_str());
        }
    }
}
