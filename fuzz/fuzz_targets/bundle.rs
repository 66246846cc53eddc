//! `Replica::apply_bundle` on arbitrary bytes. Checks the batch promise: a rejected Bundle
//! changes nothing that is committed, and an accepted one accounts for every entry, repeats no
//! key and leaves no item without its patient (SPEC §6).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../common/json.rs"]
mod json;
#[path = "../common/replica.rs"]
mod replica;

fuzz_target!(|data: &[u8]| {
    let mut scratch = replica::scratch();
    let before = scratch.digest();
    let result = scratch.replica.apply_bundle(data);
    let after = scratch.digest();
    match result {
        Err(_) => assert_eq!(before, after, "a rejected Bundle changed the replica"),
        Ok(summary) => {
            assert_eq!(
                json::has_repeated_key(data),
                Some(false),
                "accepted a Bundle with a repeated key"
            );
            assert_eq!(scratch.orphans(), 0, "accepted an item without its patient");
            let bundle: serde_json::Value =
                serde_json::from_slice(data).expect("an accepted Bundle is JSON");
            let entries = bundle
                .get("entry")
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len) as u64;
            assert_eq!(
                summary.upserted + summary.deleted + summary.purged_patients,
                entries,
                "the summary does not account for every entry"
            );
            if summary.deleted == 0 && summary.purged_patients == 0 {
                assert!(after.resources >= before.resources);
                assert!(after.resources - before.resources <= summary.upserted as i64);
            }
        }
    }
    let stats = scratch.replica.stats().expect("stats after a Bundle");
    assert_eq!(stats.resources as i64, after.resources);
    assert_eq!(stats.patients as i64, after.patients);
    scratch.trim(&after);
});
