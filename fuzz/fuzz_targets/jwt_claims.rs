//! `api::jwt::parse` on mostly valid tokens built from structured input: each claim is the
//! good value, another string, missing, or of the wrong JSON type, and the times are near the
//! clock or anywhere in i64. An independent oracle, written from SPEC §3, says whether the
//! token must be accepted; parse must agree, and what it returns must be what was sent.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mig::api::jwt::{
    encode_unsigned, parse, JOB_ROLE_SYSTEM, SDS_ROLE_PROFILE_SYSTEM, SDS_USER_ID_SYSTEM,
};
use serde_json::{json, Map, Value};

const AUDIENCE: &str = "https://mig.example.nhs.uk/fhir";
const NOW: i64 = 1_800_000_000;
const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// One string claim.
#[derive(Arbitrary, Debug, Clone)]
enum Field {
    Good,
    Text(String),
    Missing,
    Null,
    Number(i32),
}

impl Field {
    /// The JSON for this claim, or None to leave it out.
    fn value(&self, good: &str) -> Option<Value> {
        match self {
            Field::Good => Some(json!(good)),
            Field::Text(text) => Some(json!(text)),
            Field::Missing => None,
            Field::Null => Some(Value::Null),
            Field::Number(n) => Some(json!(n)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// Seconds from the reference point (now for iat, iat for exp).
    Near(i16),
    Anywhere(i64),
    NotANumber(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    iss: Field,
    aud: Field,
    sub_is_practitioner_id: bool,
    sub: Field,
    iat: Time,
    exp: Time,
    clock_offset: i16,
    reason: Field,
    scope: Field,
    practitioner_id: Field,
    sds_user_id: Field,
    role_profile: Field,
    family: Field,
    given: Vec<String>,
    job_role: Field,
    ods: Field,
    permission: Field,
    override_reason: Field,
    justification: Field,
    device: Option<bool>,
}

fn insert(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn identifier(system: &str, value: Option<Value>) -> Vec<Value> {
    match value {
        Some(value) => vec![json!({"system": system, "value": value})],
        None => vec![],
    }
}

fn time(time: &Time, from: i64) -> Value {
    match time {
        Time::Near(offset) => json!(from.saturating_add(i64::from(*offset))),
        Time::Anywhere(seconds) => json!(seconds),
        Time::NotANumber(text) => json!(text),
    }
}

/// A required, non-blank string.
fn text(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// Absent, null or a string.
fn optional_text(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null | Value::String(_)))
}

/// SPEC §3: no control characters (nor line separators or bidirectional overrides).
fn printable(text: &str) -> bool {
    !text.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

/// A string the audit records: printable and at most 256 characters.
fn recordable(value: Option<&Value>) -> bool {
    value
        .and_then(Value::as_str)
        .is_some_and(|text| printable(text) && text.chars().count() <= 256)
}

/// `patient/*.read` once, with at most one of `conf/N`, `conf/R`, single-space separated.
fn scope_ok(scope: &str) -> bool {
    let values: Vec<&str> = scope.split(' ').collect();
    let read = values.iter().filter(|v| **v == "patient/*.read").count();
    let conf = values
        .iter()
        .filter(|v| matches!(**v, "conf/N" | "conf/R"))
        .count();
    read == 1 && conf <= 1 && read + conf == values.len()
}

/// The job role code the token carries, if any (none: the request's role is UNK).
fn job_role_code(practitioner: &Value) -> Option<&str> {
    practitioner["practitionerRole"][0]["role"]["coding"][0]
        .get("code")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
}

/// SPEC §3, restated: whether these claims make an acceptable token at `now`.
fn acceptable(claims: &Map<String, Value>, now: i64) -> bool {
    let practitioner = &claims["requesting_practitioner"];
    let id_value = |resource: &Value, system: &str| {
        let value = resource["identifier"].as_array().and_then(|ids| {
            ids.iter()
                .find(|i| i["system"] == system)
                .map(|i| &i["value"])
        });
        text(value).is_some() && recordable(value)
    };
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return false;
    };
    // Widened, so no overflow can make a bad token look good.
    let (iat, exp, now) = (i128::from(iat), i128::from(exp), i128::from(now));
    let times = exp > iat && exp - iat <= 300 && now >= iat - 60 && now <= exp;
    let family = practitioner["name"][0].get("family");
    let role_profile = practitioner["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == SDS_ROLE_PROFILE_SYSTEM))
        .map(|i| &i["value"])
        .filter(|v| text(Some(v)).is_some());
    let role = practitioner["practitionerRole"][0]["role"]["coding"][0].get("code");
    let permission = claims.get("permission_to_view");
    text(claims.get("iss")).is_some()
        && text(claims.get("aud")) == Some(AUDIENCE)
        && times
        && text(claims.get("reason_for_request")) == Some("directcare")
        && text(claims.get("requested_scope")).is_some_and(scope_ok)
        && text(practitioner.get("id")).is_some()
        && text(claims.get("sub")) == text(practitioner.get("id"))
        && id_value(practitioner, SDS_USER_ID_SYSTEM)
        // Optional: absent (or blank) is no role profile; present, it is recorded.
        && (role_profile.is_none() || recordable(role_profile))
        && text(family).is_some()
        // The job role may be any code, or none (UNK): the policy refuses codes it does not know.
        && (job_role_code(practitioner).is_none() || recordable(role))
        && id_value(&claims["requesting_organization"], ODS_SYSTEM)
        && (matches!(permission, None | Some(Value::Null))
            || matches!(permission.and_then(Value::as_str), Some("granted" | "override")))
        && optional_text(claims.get("override_reason"))
        && optional_text(claims.get("override_justification"))
        && claims
            .get("override_justification")
            .and_then(Value::as_str)
            .is_none_or(printable)
}

fn build(input: &Input) -> (Map<String, Value>, i64) {
    let practitioner_id = input.practitioner_id.value("practitioner-1");
    let mut practitioner = Map::new();
    practitioner.insert("resourceType".into(), json!("Practitioner"));
    insert(&mut practitioner, "id", practitioner_id.clone());
    let mut ids = identifier(SDS_USER_ID_SYSTEM, input.sds_user_id.value("111222333444"));
    ids.extend(identifier(
        SDS_ROLE_PROFILE_SYSTEM,
        input.role_profile.value("444555666777"),
    ));
    practitioner.insert("identifier".into(), Value::Array(ids));
    let mut name = Map::new();
    insert(&mut name, "family", input.family.value("Khan"));
    name.insert("given".into(), json!(input.given));
    practitioner.insert("name".into(), json!([name]));
    let mut coding = Map::new();
    coding.insert("system".into(), json!(JOB_ROLE_SYSTEM));
    insert(&mut coding, "code", input.job_role.value("R8000"));
    practitioner.insert(
        "practitionerRole".into(),
        json!([{"role": {"coding": [coding]}}]),
    );

    let mut claims = Map::new();
    insert(
        &mut claims,
        "iss",
        input.iss.value("https://partner.example.nhs.uk"),
    );
    insert(&mut claims, "aud", input.aud.value(AUDIENCE));
    let sub = if input.sub_is_practitioner_id {
        practitioner_id
    } else {
        input.sub.value("practitioner-1")
    };
    insert(&mut claims, "sub", sub);
    let iat = time(&input.iat, NOW);
    let exp = time(&input.exp, iat.as_i64().unwrap_or(NOW));
    claims.insert("iat".into(), iat);
    claims.insert("exp".into(), exp);
    insert(
        &mut claims,
        "reason_for_request",
        input.reason.value("directcare"),
    );
    insert(
        &mut claims,
        "requested_scope",
        input.scope.value("patient/*.read"),
    );
    claims.insert(
        "requesting_practitioner".into(),
        Value::Object(practitioner),
    );
    claims.insert(
        "requesting_organization".into(),
        json!({"resourceType": "Organization",
               "identifier": identifier(ODS_SYSTEM, input.ods.value("RX8"))}),
    );
    match input.device {
        Some(true) => {
            claims.insert(
                "requesting_device".into(),
                json!({"resourceType": "Device", "model": "ePCR"}),
            );
        }
        Some(false) => {
            claims.insert("requesting_device".into(), json!("tablet"));
        }
        None => {}
    }
    insert(
        &mut claims,
        "permission_to_view",
        input.permission.value("granted"),
    );
    insert(
        &mut claims,
        "override_reason",
        input.override_reason.value("emergency"),
    );
    insert(
        &mut claims,
        "override_justification",
        input.justification.value("Unconscious patient in resus"),
    );
    (claims, NOW.saturating_add(i64::from(input.clock_offset)))
}

fuzz_target!(|input: Input| {
    let (claims, now) = build(&input);
    let device_ok = input.device != Some(false);
    let expected = device_ok && acceptable(&claims, now);
    let token = encode_unsigned(&Value::Object(claims.clone()));
    let result = parse(&token, AUDIENCE, now);
    if token.len() > 8 * 1024 {
        assert!(result.is_err(), "accepted an over-long token");
        return;
    }
    match result {
        Ok(parsed) => {
            assert!(
                expected,
                "accepted a token the rules refuse: {claims:?} at {now}"
            );
            let practitioner = &claims["requesting_practitioner"];
            assert_eq!(Some(parsed.issuer.as_str()), claims["iss"].as_str());
            assert_eq!(
                parsed.job_role.as_str(),
                job_role_code(practitioner).unwrap_or("UNK")
            );
            assert_eq!(
                Some(parsed.organisation_ods.as_str()),
                claims["requesting_organization"]["identifier"][0]["value"].as_str()
            );
            assert_eq!(
                parsed.permission_to_view.as_deref(),
                claims.get("permission_to_view").and_then(Value::as_str)
            );
        }
        Err(error) => assert!(
            !expected,
            "refused a token the rules accept ({error}): {claims:?} at {now}"
        ),
    }
});
