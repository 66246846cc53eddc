//! `api::parameters::parse` (the `$gpc.getstructuredrecord` body) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig::api::parameters::{parse, MAX_BODY_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse(data, 1_800_000_000) {
        // Whatever is accepted names a valid patient and came in under the size limit.
        assert!(data.len() <= MAX_BODY_BYTES);
        assert!(mig_policy::fhir::is_valid_nhs_number(&request.nhs_number));
    }
});
