//! `api::headers::check` (the `Ssp-*` headers) on header maps built from the input: one
//! `name: value` per line, lines hyper would not accept as a header skipped.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mig::api::headers::{check, trace_id};

const ASID: &str = "200000000123";
const INTERACTION: &str = "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let trace = trace_id(&headers);
    if let Some(trace) = &trace {
        // Echoed back to the partner: always the canonical hyphenated form.
        assert_eq!(trace.len(), 36);
        assert!(trace.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    }
    if let Ok(ssp) = check(&headers, INTERACTION, ASID) {
        assert_eq!(Some(&ssp.trace_id), trace.as_ref());
        assert_eq!(ssp.from_asid.len(), 12);
        assert!(ssp.from_asid.bytes().all(|b| b.is_ascii_digit()));
    }
});
