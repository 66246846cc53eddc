//! `fhir::is_valid_nhs_number` against a plain reference implementation of the NHS number rule:
//! exactly ten ASCII digits; weights 10 down to 2 on the first nine; check = 11 - (sum mod 11),
//! where 11 means 0 and 10 means no valid number.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn reference(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() != 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, b) in bytes[..9].iter().enumerate() {
        sum += u32::from(b - b'0') * (10 - i as u32);
    }
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => return false,
        c => c,
    };
    u32::from(bytes[9] - b'0') == check
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(
        mig_policy::fhir::is_valid_nhs_number(text),
        reference(text),
        "disagreement on {text:?}"
    );
});
