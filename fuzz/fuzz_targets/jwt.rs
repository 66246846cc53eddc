//! `api::jwt::parse` on arbitrary text. The first byte picks the mode: even, the rest is the
//! whole bearer token; odd, the rest is the claims payload, wrapped as partners do (`alg: none`
//! header, base64url, empty signature) so the fuzzer reaches the claim checks, which base64
//! would otherwise hide from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mig::api::jwt::{parse, Claims};

const AUDIENCE: &str = "https://mig.example.nhs.uk/fhir";
/// The seeds are issued at this time, so they pass the lifetime checks.
const NOW: i64 = 1_800_000_000;

fn check(claims: &Claims) {
    for field in [
        &claims.issuer,
        &claims.sds_user_id,
        &claims.sds_role_profile_id,
        &claims.practitioner_name,
        &claims.organisation_ods,
    ] {
        assert!(
            !field.trim().is_empty(),
            "accepted a blank claim: {claims:?}"
        );
    }
    assert!(!claims.job_role.is_empty());
    assert!(matches!(
        claims.permission_to_view.as_deref(),
        None | Some("granted" | "override")
    ));
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
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(text)
        )
    };
    if let Ok(claims) = parse(&token, AUDIENCE, NOW) {
        check(&claims);
    }
});
