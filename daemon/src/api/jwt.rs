//! The GP Connect access token: an unsigned JWT (`alg: none`) saying who asks and why.
//!
//! What it validates: structure, the `none` algorithm with an empty signature, no repeated key
//! in header or claims, every required claim and its shape, audience, lifetime (≤ 300 s) and
//! clock skew (60 s), that every string recorded in the audit is printable and bounded, and
//! that `requested_record` names one NHS number (the API compares it with the request's).
//! What it does not:
//! authenticity, which rests on the partner's client certificate; and whether the claims are
//! allowed (organisation, role, override), which is the policy's job.

use base64::Engine;
use serde_json::{Map, Value};

use mig_policy::fhir::{NHS_NUMBER_SYSTEM, ODS_SYSTEM};

pub const SDS_USER_ID_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
pub const SDS_ROLE_PROFILE_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
pub const JOB_ROLE_SYSTEM: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName";
/// The DSTU2-era systems GP Connect asks providers to accept as synonyms.
pub const DSTU2_ODS_SYSTEM: &str = "http://fhir.nhs.net/Id/ods-organization-code";
pub const DSTU2_SDS_USER_ID_SYSTEM: &str = "http://fhir.nhs.net/sds-user-id";
/// The job role of a token without one (an STU3 Practitioner has no `practitionerRole`).
pub use mig_policy::UNKNOWN_JOB_ROLE;
/// Longest token accepted, before decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest lifetime (`exp - iat`).
const MAX_LIFETIME_SECONDS: i64 = 300;
/// Clock skew allowed before `iat`.
const SKEW_SECONDS: i64 = 60;
/// Longest string taken from the token and recorded, in characters (SPEC §3).
const MAX_RECORDED_CHARS: usize = 256;
/// Longest `requesting_device` as recorded (compact JSON), in bytes.
const MAX_DEVICE_BYTES: usize = 2048;

/// The claims the appliance uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub sds_user_id: String,
    /// Not every consumer sends it (GP Connect 1.6: "not always present").
    pub sds_role_profile_id: Option<String>,
    /// The SDS job role code, or `UNK` when the token has none.
    pub job_role: String,
    pub practitioner_name: String,
    pub organisation_ods: String,
    /// `requesting_device` as compact JSON, for the audit trail.
    pub device: Option<String>,
    /// `permission_to_view`: `granted`, `override`, or absent.
    pub permission_to_view: Option<String>,
    pub override_reason: Option<String>,
    pub override_justification: Option<String>,
    /// The NHS number `requested_record` names, when the token has one.
    pub requested_nhs_number: Option<String>,
}

/// Why a token was refused (the partner sees only BAD_REQUEST; this goes to the audit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JWT: {0}")]
pub struct JwtError(pub String);

fn bad<T>(reason: impl Into<String>) -> Result<T, JwtError> {
    Err(JwtError(reason.into()))
}

/// Parses and checks a bearer token against this appliance's FHIR base URL at time `now`.
pub fn parse(token: &str, audience: &str, now: i64) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return bad("token too long");
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("not three dot-separated parts");
    };
    if !signature.is_empty() {
        return bad("signature must be empty for alg none");
    }
    let header = decode_object(header, "header")?;
    if header.get("alg").and_then(Value::as_str) != Some("none") {
        return bad("header alg must be none");
    }
    if header.get("typ").and_then(Value::as_str) != Some("JWT") {
        return bad("header typ must be JWT");
    }
    let claims = decode_object(payload, "payload")?;
    check_standard_claims(&claims, audience, now)?;

    let practitioner = object(&claims, "requesting_practitioner")?;
    if practitioner.get("resourceType").and_then(Value::as_str) != Some("Practitioner") {
        return bad("requesting_practitioner is not a Practitioner");
    }
    let practitioner_id = text(practitioner, "id", "requesting_practitioner.id")?;
    if text(&claims, "sub", "sub")? != practitioner_id {
        return bad("sub does not equal requesting_practitioner.id");
    }
    let sds_user_id = identifier(
        practitioner,
        &[SDS_USER_ID_SYSTEM, DSTU2_SDS_USER_ID_SYSTEM],
        "requesting_practitioner",
    )?;
    let sds_role_profile_id = identifier(
        practitioner,
        &[SDS_ROLE_PROFILE_SYSTEM],
        "requesting_practitioner",
    )
    .ok();
    let practitioner_name = practitioner_name(practitioner)?;
    let job_role = job_role(practitioner).unwrap_or_else(|| UNKNOWN_JOB_ROLE.to_owned());

    let organisation = object(&claims, "requesting_organization")?;
    if organisation.get("resourceType").and_then(Value::as_str) != Some("Organization") {
        return bad("requesting_organization is not an Organization");
    }
    let organisation_ods = identifier(
        organisation,
        &[ODS_SYSTEM, DSTU2_ODS_SYSTEM],
        "requesting_organization",
    )?;

    let device = match claims.get("requesting_device") {
        None => None,
        Some(device @ Value::Object(_)) => Some(recorded_device(device)?),
        Some(_) => return bad("requesting_device is not an object"),
    };
    let permission_to_view = optional_text(&claims, "permission_to_view")?;
    if let Some(permission) = &permission_to_view {
        if permission != "granted" && permission != "override" {
            return bad("permission_to_view must be granted or override");
        }
    }
    // An unknown reason is the policy's to refuse (403), not a malformed token.
    let override_reason = optional_text(&claims, "override_reason")?;
    // Its length is the override rule's (10 to 500 characters, refused by the policy).
    let override_justification = optional_text(&claims, "override_justification")?;
    if let Some(justification) = &override_justification {
        printable(justification, "override_justification")?;
    }
    let requested_nhs_number = match claims.get("requested_record") {
        None | Some(Value::Null) => None,
        Some(record) => Some(requested_record(record)?),
    };
    Ok(Claims {
        issuer: text(&claims, "iss", "iss")?.to_owned(),
        sds_user_id: recorded(sds_user_id, "sds-user-id")?,
        sds_role_profile_id: sds_role_profile_id
            .map(|id| recorded(id, "sds-role-profile-id"))
            .transpose()?,
        job_role: recorded(job_role, "job role code")?,
        practitioner_name,
        organisation_ods: recorded(organisation_ods, "requesting_organization ODS code")?,
        device,
        permission_to_view,
        override_reason,
        override_justification,
        requested_nhs_number,
    })
}

/// A string that goes into the audit trail: printable, and at most 256 characters.
fn recorded(value: String, what: &str) -> Result<String, JwtError> {
    printable(&value, what)?;
    if value.chars().count() > MAX_RECORDED_CHARS {
        return bad(format!(
            "{what} is longer than {MAX_RECORDED_CHARS} characters"
        ));
    }
    Ok(value)
}

/// Refuses control characters, and the line separators and bidirectional overrides that can
/// make a terminal or viewer show something other than the text.
fn printable(value: &str, what: &str) -> Result<(), JwtError> {
    let unprintable = |c: char| {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if value.chars().any(unprintable) {
        return bad(format!(
            "{what} is not printable text (it has control characters)"
        ));
    }
    Ok(())
}

/// `requesting_device` as recorded: compact JSON of at most 2 KiB, every key and string in it
/// printable.
fn recorded_device(device: &Value) -> Result<String, JwtError> {
    fn strings_printable(value: &Value) -> Result<(), JwtError> {
        match value {
            Value::String(text) => printable(text, "requesting_device"),
            Value::Array(items) => items.iter().try_for_each(strings_printable),
            Value::Object(map) => map.iter().try_for_each(|(key, value)| {
                printable(key, "requesting_device")?;
                strings_printable(value)
            }),
            _ => Ok(()),
        }
    }
    strings_printable(device)?;
    let compact = device.to_string();
    if compact.len() > MAX_DEVICE_BYTES {
        return bad(format!(
            "requesting_device is longer than {MAX_DEVICE_BYTES} bytes"
        ));
    }
    Ok(compact)
}

/// The NHS number a `requested_record` Patient names: exactly one, in the NHS number system.
fn requested_record(record: &Value) -> Result<String, JwtError> {
    if record.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        return bad("requested_record is not a Patient");
    }
    let mut numbers = record
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.get("system").and_then(Value::as_str) == Some(NHS_NUMBER_SYSTEM))
        .map(|i| i.get("value").and_then(Value::as_str));
    match (numbers.next(), numbers.next()) {
        (Some(Some(number)), None) => Ok(number.to_owned()),
        (Some(_), Some(_)) => bad("requested_record has more than one NHS number"),
        _ => bad(format!(
            "requested_record has no identifier value in {NHS_NUMBER_SYSTEM}"
        )),
    }
}

fn check_standard_claims(
    claims: &Map<String, Value>,
    audience: &str,
    now: i64,
) -> Result<(), JwtError> {
    text(claims, "iss", "iss")?;
    if text(claims, "aud", "aud")? != audience {
        return bad("aud is not this appliance's FHIR base URL");
    }
    let iat = integer(claims, "iat")?;
    let exp = integer(claims, "exp")?;
    // Checked: with far-apart times a wrapping `exp - iat` looks short, and the token would
    // never expire (found by fuzz/fuzz_targets/jwt_claims.rs).
    match exp.checked_sub(iat) {
        Some(lifetime) if lifetime > 0 && lifetime <= MAX_LIFETIME_SECONDS => {}
        _ => return bad("exp must be after iat and at most 300 seconds later"),
    }
    if now < iat.saturating_sub(SKEW_SECONDS) {
        return bad("iat is in the future");
    }
    if now > exp {
        return bad("token has expired");
    }
    if text(claims, "reason_for_request", "reason_for_request")? != "directcare" {
        return bad("reason_for_request must be directcare");
    }
    requested_scope(text(claims, "requested_scope", "requested_scope")?)
}

/// `patient/*.read`, with at most one confidentiality scope (`conf/N` or `conf/R`) beside it,
/// space separated, as GP Connect 1.6 sends it. A confidentiality scope never widens what
/// policy releases, so it is checked and then not used.
fn requested_scope(scope: &str) -> Result<(), JwtError> {
    let mut read = 0;
    let mut confidentiality = 0;
    for value in scope.split(' ') {
        match value {
            "patient/*.read" => read += 1,
            "conf/N" | "conf/R" => confidentiality += 1,
            _ => {
                return bad(
                    "requested_scope must be patient/*.read, optionally with conf/N or conf/R",
                )
            }
        }
    }
    if read != 1 || confidentiality > 1 {
        return bad("requested_scope must be patient/*.read, optionally with conf/N or conf/R");
    }
    Ok(())
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError(format!("{what} is not base64url")))?;
    match mig_policy::json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bad(format!("{what} is not a JSON object")),
        // Names a repeated key: "payload is not valid JSON: repeated key \"sub\" at ...".
        Err(e) => bad(format!("{what} is not valid JSON: {e}")),
    }
}

fn object<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a Map<String, Value>, JwtError> {
    claims
        .get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| JwtError(format!("{name} is missing or not an object")))
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str, what: &str) -> Result<&'a str, JwtError> {
    match claims.get(name).and_then(Value::as_str) {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => bad(format!("{what} is missing or empty")),
    }
}

fn optional_text(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => bad(format!("{name} is not a string")),
    }
}

fn integer(claims: &Map<String, Value>, name: &str) -> Result<i64, JwtError> {
    claims
        .get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| JwtError(format!("{name} is missing or not an integer")))
}

/// The value of the first identifier in one of `systems` (the first is the one named in errors).
fn identifier(
    resource: &Map<String, Value>,
    systems: &[&str],
    what: &str,
) -> Result<String, JwtError> {
    let system = systems.first().copied().unwrap_or_default();
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| {
            i.get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| systems.contains(&s))
        })
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .filter(|v| !v.trim().is_empty())
        .map(str::to_owned)
        .ok_or_else(|| JwtError(format!("{what} has no identifier in {system}")))
}

fn practitioner_name(practitioner: &Map<String, Value>) -> Result<String, JwtError> {
    let name = practitioner
        .get("name")
        .and_then(Value::as_array)
        .and_then(|names| names.first());
    let family = name.and_then(|n| n.get("family")).and_then(Value::as_str);
    let given = name
        .and_then(|n| n.get("given"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    match family {
        Some(family) if !family.trim().is_empty() => {
            Ok(format!("{given} {family}").trim().to_owned())
        }
        _ => bad("requesting_practitioner has no name with a family name"),
    }
}

/// The SDS job role code from `practitionerRole`, a field an STU3 Practitioner does not have:
/// most GP Connect consumers send none.
fn job_role(practitioner: &Map<String, Value>) -> Option<String> {
    practitioner
        .get("practitionerRole")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|role| role.get("role")?.get("coding")?.as_array())
        .flatten()
        .find(|c| c.get("system").and_then(Value::as_str) == Some(JOB_ROLE_SYSTEM))
        .and_then(|c| c.get("code").and_then(Value::as_str))
        .filter(|code| !code.is_empty())
        .map(str::to_owned)
}

/// Builds a token as partner systems do; used by tests, the demo and the load tool.
pub fn encode_unsigned(claims: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = engine.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A complete, valid claim set for the given caller; tests and the demo adjust fields.
pub fn example_claims(audience: &str, organisation_ods: &str, job_role: &str, now: i64) -> Value {
    serde_json::json!({
        "iss": "https://partner.example.nhs.uk",
        "sub": "practitioner-1",
        "aud": audience,
        "iat": now,
        "exp": now + 300,
        "reason_for_request": "directcare",
        "requested_scope": "patient/*.read",
        "requesting_device": {"resourceType": "Device", "identifier": [{"system": "https://partner.example.nhs.uk/Id/device", "value": "crew-tablet-7"}], "model": "ePCR", "version": "4.2"},
        "requesting_organization": {"resourceType": "Organization",
            "identifier": [{"system": ODS_SYSTEM, "value": organisation_ods}], "name": "Partner"},
        "requesting_practitioner": {"resourceType": "Practitioner", "id": "practitioner-1",
            "identifier": [
                {"system": SDS_USER_ID_SYSTEM, "value": "111222333444"},
                {"system": SDS_ROLE_PROFILE_SYSTEM, "value": "444555666777"}],
            "name": [{"family": "Khan", "given": ["Amira"], "prefix": ["Dr"]}],
            "practitionerRole": [{"role": {"coding": [{"system": JOB_ROLE_SYSTEM, "code": job_role}]}}]},
        "permission_to_view": "granted"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const AUD: &str = "https://mig.example.nhs.uk/fhir";
    const NOW: i64 = 1_800_000_000;

    fn claims() -> Value {
        example_claims(AUD, "RX8", "R8000", NOW)
    }

    #[test]
    fn accepts_a_well_formed_token() {
        let parsed = parse(&encode_unsigned(&claims()), AUD, NOW + 10).unwrap();
        assert_eq!(parsed.job_role, "R8000");
        assert_eq!(parsed.organisation_ods, "RX8");
        assert_eq!(parsed.sds_user_id, "111222333444");
        assert_eq!(parsed.practitioner_name, "Amira Khan");
        assert_eq!(parsed.permission_to_view.as_deref(), Some("granted"));
        assert!(parsed.device.unwrap().contains("crew-tablet-7"));
    }

    #[test]
    fn accepts_tokens_as_gp_connect_1_6_consumers_build_them() {
        // An STU3 Practitioner: no practitionerRole; the role profile id "not always present".
        let mut c = claims();
        let practitioner = c["requesting_practitioner"].as_object_mut().unwrap();
        practitioner.remove("practitionerRole");
        practitioner["identifier"] = json!([{"system": SDS_USER_ID_SYSTEM, "value": "UNK"}]);
        let parsed = parse(&encode_unsigned(&c), AUD, NOW).unwrap();
        assert_eq!(parsed.job_role, UNKNOWN_JOB_ROLE);
        assert_eq!(parsed.sds_role_profile_id, None);
        assert_eq!(parsed.sds_user_id, "UNK");

        // The DSTU2-era systems, still sent by older consumers.
        let mut c = claims();
        c["requesting_organization"]["identifier"] =
            json!([{"system": DSTU2_ODS_SYSTEM, "value": "RX8"}]);
        c["requesting_practitioner"]["identifier"] =
            json!([{"system": DSTU2_SDS_USER_ID_SYSTEM, "value": "G13579135"}]);
        let parsed = parse(&encode_unsigned(&c), AUD, NOW).unwrap();
        assert_eq!(parsed.organisation_ods, "RX8");
        assert_eq!(parsed.sds_user_id, "G13579135");

        // A confidentiality scope beside the read scope, either way round.
        for scope in [
            "patient/*.read conf/N",
            "patient/*.read conf/R",
            "conf/N patient/*.read",
        ] {
            let mut c = claims();
            c["requested_scope"] = json!(scope);
            assert!(parse(&encode_unsigned(&c), AUD, NOW).is_ok(), "{scope}");
        }
    }

    #[test]
    fn refuses_each_malformed_claim() {
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|c| c["aud"] = json!("https://elsewhere/fhir")),
                "aud",
            ),
            (Box::new(|c| c["exp"] = json!(NOW + 301)), "at most 300"),
            (Box::new(|c| c["exp"] = json!(NOW)), "exp must be after"),
            (
                Box::new(|c| {
                    c["iat"] = json!(NOW + 100);
                    c["exp"] = json!(NOW + 200)
                }),
                "future",
            ),
            (
                Box::new(|c| {
                    c["iat"] = json!(NOW - 400);
                    c["exp"] = json!(NOW - 200)
                }),
                "expired",
            ),
            (
                Box::new(|c| c["reason_for_request"] = json!("secondaryuses")),
                "reason_for_request",
            ),
            (
                Box::new(|c| c["requested_scope"] = json!("patient/*.write")),
                "requested_scope",
            ),
            (
                Box::new(|c| c["sub"] = json!("someone-else")),
                "sub does not equal",
            ),
            (
                Box::new(|c| c["iat"] = json!("yesterday")),
                "iat is missing",
            ),
            (
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
                "iss",
            ),
            (
                Box::new(|c| c["requesting_organization"]["identifier"] = json!([])),
                "ods-organization-code",
            ),
            (
                Box::new(|c| c["requesting_practitioner"]["identifier"] = json!([])),
                "sds-user-id",
            ),
            (
                Box::new(|c| c["requested_scope"] = json!("patient/*.read conf/X")),
                "requested_scope",
            ),
            (
                Box::new(|c| c["requested_scope"] = json!("patient/*.read conf/N conf/R")),
                "requested_scope",
            ),
            (
                Box::new(|c| c["requested_scope"] = json!("conf/N")),
                "requested_scope",
            ),
            (
                Box::new(|c| c["requested_scope"] = json!("patient/*.read  conf/N")),
                "requested_scope",
            ),
            (
                Box::new(|c| c["requesting_practitioner"]["name"] = json!([])),
                "name",
            ),
            (
                Box::new(|c| c["requesting_practitioner"]["resourceType"] = json!("Patient")),
                "not a Practitioner",
            ),
            (
                Box::new(|c| c["permission_to_view"] = json!("maybe")),
                "permission_to_view",
            ),
            (
                Box::new(|c| c["override_reason"] = json!(3)),
                "override_reason",
            ),
            (
                Box::new(|c| c["requesting_device"] = json!("tablet")),
                "requesting_device",
            ),
        ];
        for (mutate, expected) in cases {
            let mut c = claims();
            mutate(&mut c);
            let error = parse(&encode_unsigned(&c), AUD, NOW + 10).unwrap_err();
            assert!(
                error.0.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }

    #[test]
    fn refuses_times_whose_difference_overflows() {
        // A wrapping `exp - iat` made these look short-lived: an everlasting token.
        for (iat, exp) in [
            (i64::MIN + 100, i64::MAX),
            (i64::MIN, NOW + 10),
            (i64::MIN, i64::MIN + 1),
        ] {
            let mut c = claims();
            c["iat"] = json!(iat);
            c["exp"] = json!(exp);
            assert!(
                parse(&encode_unsigned(&c), AUD, NOW).is_err(),
                "{iat}..{exp}"
            );
        }
    }

    #[test]
    fn refuses_signed_or_malformed_tokens() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = engine.encode(claims().to_string());
        let signed_header = engine.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let none_header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let cases = [
            (format!("{signed_header}.{payload}."), "alg must be none"),
            (
                format!("{none_header}.{payload}.c2ln"),
                "signature must be empty",
            ),
            (format!("{none_header}.{payload}"), "three"),
            (format!("{none_header}.%%%."), "not base64url"),
            (
                format!("{none_header}.{}.", engine.encode("[1]")),
                "not a JSON object",
            ),
            ("a".repeat(MAX_TOKEN_BYTES + 1), "too long"),
        ];
        for (token, expected) in cases {
            let error = parse(&token, AUD, NOW).unwrap_err();
            assert!(
                error.0.contains(expected),
                "{error} should mention {expected}"
            );
        }
    }
    #[test]
    fn refuses_a_repeated_key_in_header_or_claims() {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let good = claims().to_string();
        assert!(
            good.starts_with(r#"{"aud":"#),
            "serde_json sorts the keys: {good}"
        );
        let repeated_header = engine.encode(br#"{"alg":"none","alg":"HS256","typ":"JWT"}"#);
        let payload = engine.encode(&good);
        // Two organisations: one the policy checks, one another reader might record.
        let org = r#""requesting_organization":{"resourceType":"Organization","identifier":[{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"RYY"}]},"#;
        let two_orgs = good.replacen(
            r#""requesting_organization":"#,
            &format!("{org}\"requesting_organization\":"),
            1,
        );
        let nested = good.replacen(
            r#""system":"https://fhir.nhs.uk/Id/sds-user-id","#,
            r#""system":"https://fhir.nhs.uk/Id/sds-user-id","value":"999","#,
            1,
        );
        let cases = [
            (
                format!("{repeated_header}.{payload}."),
                "header is not valid JSON: repeated key \"alg\"",
            ),
            (
                format!("{header}.{}.", engine.encode(&two_orgs)),
                "payload is not valid JSON: repeated key \"requesting_organization\"",
            ),
            (
                format!("{header}.{}.", engine.encode(&nested)),
                "payload is not valid JSON: repeated key \"value\"",
            ),
        ];
        for (token, expected) in cases {
            let error = parse(&token, AUD, NOW).unwrap_err();
            assert!(error.0.contains(expected), "{error} should say {expected}");
        }
    }

    #[test]
    fn recorded_strings_are_printable_and_bounded() {
        let long = "1".repeat(MAX_RECORDED_CHARS + 1);
        // 256 characters, 512 bytes: the bound counts characters.
        let longest = "é".repeat(MAX_RECORDED_CHARS);
        type Field = fn(&mut Value) -> &mut Value;
        let fields: [(Field, &str); 4] = [
            (
                |c| &mut c["requesting_practitioner"]["identifier"][0]["value"],
                "sds-user-id",
            ),
            (
                |c| &mut c["requesting_practitioner"]["identifier"][1]["value"],
                "sds-role-profile-id",
            ),
            (
                |c| {
                    &mut c["requesting_practitioner"]["practitionerRole"][0]["role"]["coding"][0]
                        ["code"]
                },
                "job role",
            ),
            (
                |c| &mut c["requesting_organization"]["identifier"][0]["value"],
                "requesting_organization",
            ),
        ];
        for (field, name) in fields {
            for bad in [
                "111\n2024-01-01 forged line",
                "R8000\u{1b}[2K",
                "abc\u{202e}cba",
                "a\u{7f}",
                "a\u{85}b",
                long.as_str(),
            ] {
                let mut c = claims();
                *field(&mut c) = json!(bad);
                let error = parse(&encode_unsigned(&c), AUD, NOW).unwrap_err();
                assert!(
                    error.0.contains(name),
                    "{error} should name {name} for {bad:?}"
                );
            }
            let mut c = claims();
            *field(&mut c) = json!(longest);
            assert!(parse(&encode_unsigned(&c), AUD, NOW).is_ok(), "{name}");
        }

        let mut c = claims();
        c["requesting_device"]["model"] = json!("ePCR\r\nforged");
        let error = parse(&encode_unsigned(&c), AUD, NOW).unwrap_err();
        assert!(
            error.0.contains("requesting_device is not printable"),
            "{error}"
        );
        let mut c = claims();
        c["requesting_device"] = json!({"resourceType": "Device", "note\u{1b}": "x"});
        assert!(
            parse(&encode_unsigned(&c), AUD, NOW).is_err(),
            "keys count too"
        );
        let mut c = claims();
        c["requesting_device"]["version"] = json!("v".repeat(MAX_DEVICE_BYTES));
        let error = parse(&encode_unsigned(&c), AUD, NOW).unwrap_err();
        assert!(
            error
                .0
                .contains("requesting_device is longer than 2048 bytes"),
            "{error}"
        );
        let mut c = claims();
        c["requesting_device"]["version"] = json!("v".repeat(1500));
        assert!(
            parse(&encode_unsigned(&c), AUD, NOW).is_ok(),
            "a 2 KiB device is fine"
        );

        let mut c = claims();
        c["permission_to_view"] = json!("override");
        c["override_justification"] = json!("Unconscious at scene\nOVERRIDE approved by DPO");
        let error = parse(&encode_unsigned(&c), AUD, NOW).unwrap_err();
        assert!(
            error.0.contains("override_justification is not printable"),
            "{error}"
        );
    }

    #[test]
    fn requested_record_must_name_one_nhs_number() {
        let record =
            |identifiers: Value| json!({"resourceType": "Patient", "identifier": identifiers});
        let nhs = |value: &str| json!({"system": NHS_NUMBER_SYSTEM, "value": value});
        let mut c = claims();
        c["requested_record"] =
            record(json!([{"system": "urn:other", "value": "x"}, nhs("9434765919")]));
        let parsed = parse(&encode_unsigned(&c), AUD, NOW).unwrap();
        assert_eq!(parsed.requested_nhs_number.as_deref(), Some("9434765919"));
        assert_eq!(
            parse(&encode_unsigned(&claims()), AUD, NOW)
                .unwrap()
                .requested_nhs_number,
            None
        );

        let cases = [
            (json!({"resourceType": "Organization"}), "not a Patient"),
            (json!("9434765919"), "not a Patient"),
            (record(json!([])), "no identifier value"),
            (
                record(json!([{"system": NHS_NUMBER_SYSTEM}])),
                "no identifier value",
            ),
            (
                record(json!([nhs("9434765919"), nhs("9990000018")])),
                "more than one NHS number",
            ),
        ];
        for (value, expected) in cases {
            let mut c = claims();
            c["requested_record"] = value;
            let error = parse(&encode_unsigned(&c), AUD, NOW).unwrap_err();
            assert!(error.0.contains(expected), "{error} should say {expected}");
        }
    }
}
