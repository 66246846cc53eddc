//! `Replica::import_ndjson` on arbitrary bytes. Checks the batch promise: a rejected batch
//! changes nothing that is committed, and an accepted one upserts exactly its non-blank lines,
//! none of which repeats a key, and leaves no item without its patient (SPEC §6).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/json.rs"]
mod json;
#[path = "../common/replica.rs"]
mod replica;

/// Lines that ingest should store: every line, split at `\n`, that is not blank once trimmed.
fn non_blank_lines(data: &[u8]) -> Option<u64> {
    let mut count = 0;
    for line in data.split(|b| *b == b'\n') {
        // A batch with a non-UTF-8 line must be refused, so there is no count for it.
        if !std::str::from_utf8(line).ok()?.trim().is_empty() {
            count += 1;
        }
    }
    Some(count)
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = replica::scratch();
    let before = scratch.digest();
    let result = scratch.replica.import_ndjson(data);
    let after = scratch.digest();
    match result {
        Err(_) => assert_eq!(before, after, "a rejected batch changed the replica"),
        Ok(summary) => {
            assert_eq!(
                Some(summary.upserted),
                non_blank_lines(data),
                "upserted count differs from the non-blank lines"
            );
            for line in data.split(|b| *b == b'\n') {
                assert_ne!(
                    json::has_repeated_key(line),
                    Some(true),
                    "accepted a line with a repeated key"
                );
            }
            assert_eq!(scratch.orphans(), 0, "accepted an item without its patient");
            assert_eq!(summary.deleted, 0);
            assert_eq!(summary.purged_patients, 0);
            // Upserts never remove; each adds at most one resource.
            assert!(after.resources >= before.resources);
            assert!(after.resources - before.resources <= summary.upserted as i64);
        }
    }
    let stats = scratch.replica.stats().expect("stats after an import");
    assert_eq!(stats.resources as i64, after.resources);
    assert_eq!(stats.patients as i64, after.patients);
    scratch.trim(&after);
});
