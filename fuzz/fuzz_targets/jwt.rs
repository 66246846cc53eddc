//! `api::jwt::parse` on arbitrary text. The first byte picks the mode: even, the rest is the
//! whole bearer token; odd, the rest is the claims payload, wrapped as partners do (`alg: none`
//! header, base64url, empty signature) so the fuzzer reaches the claim checks, which base64
//! would otherwise hide from it. An accepted token repeats no key, and every string it gives
//! the audit is printable and bounded (SPEC §3).
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mig::api::jwt::{parse, Claims};

#[path = "../common/json.rs"]
mod json;

const AUDIENCE: &str = "https://mig.example.nhs.uk/fhir";
/// The seeds are issued at this time, so they pass the lifetime checks.
const NOW: i64 = 1_800_000_000;

fn check(claims: &Claims) {
    for field in [
        Some(&claims.issuer),
        Some(&claims.sds_user_id),
        claims.sds_role_profile_id.as_ref(),
        Some(&claims.practitioner_name),
        Some(&claims.organisation_ods),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            !field.trim().is_empty(),
            "accepted a blank claim: {claims:?}"
        );
    }
    assert!(!claims.job_role.is_empty());
    // SPEC §3: printable (no control characters, line separators or bidi overrides) and at
    // most 256 characters; the device at most 2 KiB.
    let printable = |text: &str| {
        !text.chars().any(|c| {
            c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
    };
    for field in [
        Some(&claims.sds_user_id),
        claims.sds_role_profile_id.as_ref(),
        Some(&claims.job_role),
        Some(&claims.organisation_ods),
    ]
    .into_iter()
    .flatten()
    {
        assert!(printable(field) && field.chars().count() <= 256, "{claims:?}");
    }
    if let Some(device) = &claims.device {
        assert!(device.len() <= 2048, "{claims:?}");
        let value: serde_json::Value = serde_json::from_str(device).expect("device is JSON");
        assert!(strings(&value).all(|s| printable(&s)), "{claims:?}");
    }
    if let Some(justification) = &claims.override_justification {
        assert!(printable(justification), "{claims:?}");
    }
    assert!(matches!(
        claims.permission_to_view.as_deref(),
        None | Some("granted" | "override")
    ));
}

/// Every key and string in a JSON value.
fn strings(value: &serde_json::Value) -> Box<dyn Iterator<Item = String> + '_> {
    match value {
        serde_json::Value::String(text) => Box::new(std::iter::once(text.clone())),
        serde_json::Value::Array(items) => Box::new(items.iter().flat_map(strings)),
        serde_json::Value::Object(map) => Box::new(
            map.iter()
                .flat_map(|(k, v)| std::iter::once(k.clone()).chain(strings(v))),
        ),
        _ => Box::new(std::iter::empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let token = if mode % 2 == 0 {
        text.to_owned()
    } else {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(text)
        )
    };
    if let Ok(claims) = parse(&token, AUDIENCE, NOW) {
        check(&claims);
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for part in token.split('.').take(2) {
            let decoded = engine
                .decode(part.trim_end_matches('='))
                .expect("an accepted token decodes");
            assert_eq!(
                json::has_repeated_key(&decoded),
                Some(false),
                "accepted a token with a repeated key"
            );
        }
    }
});
