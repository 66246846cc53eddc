//! The GP Connect access token: an unsigned JWT (`alg: none`) saying who asks and why.
//!
//! What it validates: structure, the `none` algorithm with an empty signature, every required
//! claim and its shape, audience, lifetime (≤ 300 s) and clock skew (60 s). What it does not:
//! authenticity, which rests on the partner's client certificate; and whether the claims are
//! allowed (organisation, role, override), which is the policy's job.

use base64::Engine;
use serde_json::{Map, Value};

use crate::fhir::ODS_SYSTEM;

pub const SDS_USER_ID_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-user-id";
pub const SDS_ROLE_PROFILE_SYSTEM: &str = "https://fhir.nhs.uk/Id/sds-role-profile-id";
pub const JOB_ROLE_SYSTEM: &str = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SDSJobRoleName";
/// Longest token accepted, before decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest lifetime (`exp - iat`).
const MAX_LIFETIME_SECONDS: i64 = 300;
/// Clock skew allowed before `iat`.
const SKEW_SECONDS: i64 = 60;

/// The claims the appliance uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub sds_user_id: String,
    pub sds_role_profile_id: String,
    pub job_role: String,
    pub practitioner_name: String,
    pub organisation_ods: String,
    /// `requesting_device` as compact JSON, for the audit trail.
    pub device: Option<String>,
    /// `permission_to_view`: `granted`, `override`, or absent.
    pub permission_to_view: Option<String>,
    pub override_reason: Option<String>,
    pub override_justification: Option<String>,
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
    let sds_user_id = identifier(practitioner, SDS_USER_ID_SYSTEM, "requesting_practitioner")?;
    let sds_role_profile_id = identifier(
        practitioner,
        SDS_ROLE_PROFILE_SYSTEM,
        "requesting_practitioner",
    )?;
    let practitioner_name = practitioner_name(practitioner)?;
    let job_role = job_role(practitioner)?;

    let organisation = object(&claims, "requesting_organization")?;
    if organisation.get("resourceType").and_then(Value::as_str) != Some("Organization") {
        return bad("requesting_organization is not an Organization");
    }
    let organisation_ods = identifier(organisation, ODS_SYSTEM, "requesting_organization")?;

    let device = match claims.get("requesting_device") {
        None => None,
        Some(Value::Object(device)) => Some(Value::Object(device.clone()).to_string()),
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
    Ok(Claims {
        issuer: text(&claims, "iss", "iss")?.to_owned(),
        sds_user_id,
        sds_role_profile_id,
        job_role,
        practitioner_name,
        organisation_ods,
        device,
        permission_to_view,
        override_reason,
        override_justification: optional_text(&claims, "override_justification")?,
    })
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
    if text(claims, "requested_scope", "requested_scope")? != "patient/*.read" {
        return bad("requested_scope must be patient/*.read");
    }
    Ok(())
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| JwtError(format!("{what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => bad(format!("{what} is not a JSON object")),
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

fn identifier(resource: &Map<String, Value>, system: &str, what: &str) -> Result<String, JwtError> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(system))
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

fn job_role(practitioner: &Map<String, Value>) -> Result<String, JwtError> {
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
        .ok_or_else(|| {
            JwtError(format!(
                "requesting_practitioner has no job role code in {JOB_ROLE_SYSTEM}"
            ))
        })
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
                Box::new(|c| c["requesting_practitioner"]["practitionerRole"] = json!([])),
                "job role",
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
}
