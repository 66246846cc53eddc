//! The `Ssp-*` headers GP Connect clients send on every interaction.

use http::HeaderMap;

use mig_policy::{ErrorCode, Refusal};

/// The checked headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SspHeaders {
    pub trace_id: String,
    pub from_asid: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The trace id, if the request carries a well-formed one (used even on refusals).
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    header(headers, "ssp-traceid")
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .map(|u| u.hyphenated().to_string())
}

/// The caller's ASID (`Ssp-From`), if the request carries a well-formed one (12 digits); for
/// the audit, even on refusals.
pub fn from_asid(headers: &HeaderMap) -> Option<String> {
    header(headers, "ssp-from")
        .filter(|v| v.len() == 12 && v.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

/// Checks the headers for an interaction; a refusal names the header at fault.
pub fn check(
    headers: &HeaderMap,
    expected_interaction: &str,
    appliance_asid: &str,
) -> Result<SspHeaders, Refusal> {
    let refused = |code, reason: &str| Refusal {
        code,
        reason: reason.to_owned(),
    };
    let bad = |reason| refused(ErrorCode::BadRequest, reason);
    let trace_id = trace_id(headers).ok_or_else(|| bad("Ssp-TraceID missing or not a UUID"))?;
    let from_asid =
        from_asid(headers).ok_or_else(|| bad("Ssp-From missing or not a 12-digit ASID"))?;
    let to = header(headers, "ssp-to").ok_or_else(|| bad("Ssp-To missing"))?;
    if to != appliance_asid {
        return Err(refused(
            ErrorCode::AccessDenied,
            "Ssp-To is not this appliance's ASID",
        ));
    }
    let interaction =
        header(headers, "ssp-interactionid").ok_or_else(|| bad("Ssp-InteractionID missing"))?;
    if interaction != expected_interaction {
        return Err(bad("Ssp-InteractionID does not match the route"));
    }
    Ok(SspHeaders {
        trace_id,
        from_asid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASID: &str = "200000000123";
    const INTERACTION: &str = "urn:nhs:names:services:gpconnect:fhir:rest:search:patient-1";

    fn good() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Ssp-TraceID",
            "0f8fad5b-d9cb-469f-a165-70867728950e".parse().unwrap(),
        );
        headers.insert("Ssp-From", "200000000999".parse().unwrap());
        headers.insert("Ssp-To", ASID.parse().unwrap());
        headers.insert("Ssp-InteractionID", INTERACTION.parse().unwrap());
        headers
    }

    #[test]
    fn accepts_good_headers() {
        let checked = check(&good(), INTERACTION, ASID).unwrap();
        assert_eq!(checked.from_asid, "200000000999");
    }

    #[test]
    fn maps_each_bad_header_to_its_code() {
        let cases: [(&str, Option<&str>, ErrorCode); 7] = [
            ("Ssp-TraceID", None, ErrorCode::BadRequest),
            ("Ssp-TraceID", Some("trace-1"), ErrorCode::BadRequest),
            ("Ssp-From", Some("12345"), ErrorCode::BadRequest),
            ("Ssp-To", None, ErrorCode::BadRequest),
            ("Ssp-To", Some("200000000124"), ErrorCode::AccessDenied),
            ("Ssp-InteractionID", None, ErrorCode::BadRequest),
            (
                "Ssp-InteractionID",
                Some("urn:nhs:names:services:gpconnect:fhir:operation:gpc.getstructuredrecord-1"),
                ErrorCode::BadRequest,
            ),
        ];
        for (name, value, expected) in cases {
            let mut headers = good();
            match value {
                Some(v) => {
                    headers.insert(name, v.parse().unwrap());
                }
                None => {
                    headers.remove(name);
                }
            }
            assert_eq!(
                check(&headers, INTERACTION, ASID).unwrap_err().code,
                expected,
                "{name}={value:?}"
            );
        }
    }
}
