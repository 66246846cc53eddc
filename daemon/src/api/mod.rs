//! The partner FHIR API (SPEC §3): routing, the `Ssp-*` headers and access token, the access
//! decision, the audit record, and the consent-filtered response.
//!
//! Every partner request ends in exactly one audit event, written durably before the response
//! leaves; if the audit cannot be written the partner gets 503 and no record data. Refusals
//! carry only the SPEC §5 code; the reason goes to the audit.

pub mod audit_sink;
pub mod bundle;
pub mod capability;
mod edge;
pub mod filters;
pub mod headers;
pub mod html;
pub mod jwt;
pub mod outcome;
pub mod parameters;
pub mod records;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};

use crate::fhir::{RecordList, Section, NHS_NUMBER_SYSTEM};
use crate::policy::{
    decide, AccessRequest, Agreement, Basis, Decision, ErrorCode, OverrideReason, Permission,
    SensitiveCodes,
};
use crate::replica::{ReaderPool, ReplicaError};
use capability::{PATIENT_SEARCH_INTERACTION, STRUCTURED_RECORD_INTERACTION};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const METADATA_INTERACTION: &str = "urn:nhs:names:services:gpconnect:fhir:rest:read:metadata-1";
/// The audit's name for the structured record served as the care-record page (SPEC §3, "HTML
/// view"); the partner still sends the structured record's `Ssp-InteractionID`.
pub const HTML_VIEW_INTERACTION: &str = "urn:mig:interaction:gpc.getstructuredrecord-html-1";

/// Who this appliance is, as partners see it.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub ods: String,
    pub name: String,
    pub asid: String,
    /// The FHIR base URL: the JWT audience.
    pub fhir_base: String,
}

/// The authenticated client: the agreement its certificate maps to, if any.
#[derive(Debug, Clone)]
pub struct Caller {
    pub agreement: Option<Arc<Agreement>>,
    /// SHA-256 of the client certificate (hex).
    pub certificate_sha256: String,
}

/// Everything the audit trail needs about one partner request.
#[derive(Debug, Clone, Default)]
pub struct AccessEvent {
    pub time: String,
    pub interaction: String,
    pub trace_id: Option<String>,
    /// `Ssp-From`, when well-formed.
    pub from_asid: Option<String>,
    pub partner_ods: Option<String>,
    pub certificate_sha256: String,
    pub claims: Option<jwt::Claims>,
    pub nhs_number: Option<String>,
    pub basis: Option<String>,
    pub override_reason: Option<String>,
    pub override_justification: Option<String>,
    pub permitted: bool,
    pub error_code: Option<ErrorCode>,
    /// A refusal at the HTTP layer (its Spine code goes to the audit when `error_code` is None).
    pub http_refusal: Option<outcome::HttpRefusal>,
    /// Why it was refused, in plain words; never sent to the partner.
    pub refusal_reason: Option<String>,
    pub sections: Vec<Section>,
    /// A permitted override: an alert goes to the privacy officer with the record.
    pub alert: bool,
}

/// The audit could not be written; nothing may be released.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit trail cannot be written")]
pub struct AuditUnavailable;

/// Where access events go. `record` resolves only once the event is durable.
pub trait AuditSink: Send + Sync {
    fn record(
        &self,
        event: AccessEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), AuditUnavailable>> + Send + '_>>;
}

/// The API service.
pub struct Api {
    pub appliance: Appliance,
    pub replica: Arc<ReaderPool>,
    /// Recently read patients (see `records`).
    pub records: Arc<records::RecordCache>,
    pub audit: Arc<dyn AuditSink>,
    pub sensitive: Arc<SensitiveCodes>,
    /// Whether TPM, replica, listeners and every registry file are healthy, for `/healthz`;
    /// `Err` says what is not (naming registry files).
    pub health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("appliance", &self.appliance)
            .finish()
    }
}

/// A response on its way out, with the event that must be audited first.
struct Outcome {
    status: StatusCode,
    body: Bytes,
    event: AccessEvent,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn fhir_response(status: StatusCode, body: Bytes, trace_id: Option<&str>) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(FHIR_JSON),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Some(value) = trace_id.and_then(|t| header::HeaderValue::from_str(t).ok()) {
        headers.insert("ssp-traceid", value);
    }
    response
}

/// The care-record page: no caching, no script, no external resource, no sniffing.
fn html_response(body: Bytes, trace_id: Option<&str>) -> Response<Bytes> {
    let mut response = fhir_response(StatusCode::OK, body, trace_id);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(html::CONTENT_TYPE),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(html::CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A refusal whose `diagnostics` is `reason`: it names the header, claim or parameter at fault
/// (or the rule that refused), and never holds record data.
fn refusal(code: ErrorCode, reason: impl Into<String>, mut event: AccessEvent) -> Outcome {
    let reason = reason.into();
    event.permitted = false;
    event.error_code = Some(code);
    let body = outcome::operation_outcome_saying(code, &reason).to_string();
    event.refusal_reason = Some(reason);
    Outcome {
        status: StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::FORBIDDEN),
        body: Bytes::from(body),
        event,
    }
}

/// A refused access token: the partner is told which claim is wrong (never record data).
fn bad_token(error: jwt::JwtError, event: AccessEvent) -> Outcome {
    let diagnostics = format!("The access token is malformed: {}.", error.0);
    let mut outcome = refusal(ErrorCode::BadRequest, error.to_string(), event);
    outcome.body = Bytes::from(
        outcome::operation_outcome_saying(ErrorCode::BadRequest, &diagnostics).to_string(),
    );
    outcome
}

/// A fixed response outside the GP Connect codes (404 route, 405, 500, 503).
pub fn plain_outcome(status: StatusCode, issue: &str, diagnostics: &str) -> Response<Bytes> {
    fhir_response(
        status,
        Bytes::from(outcome::unavailable_outcome(issue, diagnostics).to_string()),
        None,
    )
}

impl Api {
    /// Serves one request from an authenticated client.
    pub async fn handle(&self, caller: &Caller, request: Request<Bytes>) -> Response<Bytes> {
        let path = request.uri().path();
        let method = request.method().clone();
        if path == "/healthz" && method == Method::GET {
            return self.healthz();
        }
        let interaction = match route(&method, path) {
            Ok(interaction) => interaction,
            Err(refusal) => {
                let (parts, _) = request.into_parts();
                let head = Request::from_parts(parts, ());
                return self.refuse_http(caller, Some(&head), refusal).await;
            }
        };
        let now = now_unix();
        let trace_id = headers::trace_id(request.headers());
        let format = if interaction == STRUCTURED_RECORD_INTERACTION
            && html::prefers_html(request.headers())
        {
            Format::Html
        } else {
            Format::Json
        };
        let event = AccessEvent {
            time: rfc3339(now),
            interaction: match format {
                Format::Html => HTML_VIEW_INTERACTION,
                Format::Json => interaction,
            }
            .to_owned(),
            trace_id: trace_id.clone(),
            from_asid: headers::from_asid(request.headers()),
            partner_ods: caller.agreement.as_ref().map(|a| a.ods.clone()),
            certificate_sha256: caller.certificate_sha256.clone(),
            ..AccessEvent::default()
        };
        let outcome = match caller.agreement.clone() {
            // SPEC §5 step 1 comes before anything about the request.
            None => refusal(
                ErrorCode::AccessDenied,
                "client certificate matches no registered partner",
                event,
            ),
            Some(agreement) if interaction == METADATA_INTERACTION => {
                self.metadata(&agreement, event, now)
            }
            Some(agreement) => {
                self.clinical(agreement, request, interaction, format, event, now)
                    .await
            }
        };
        let Outcome {
            status,
            body,
            event,
        } = outcome;
        let permitted = event.permitted;
        if self.audit.record(event).await.is_err() {
            tracing::error!("audit unavailable: refusing a partner request with 503");
            return plain_outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "The service is temporarily unavailable.",
            );
        }
        if permitted {
            tracing::debug!(interaction, "released");
        }
        if permitted && format == Format::Html {
            return html_response(body, trace_id.as_deref());
        }
        fhir_response(status, body, trace_id.as_deref())
    }

    /// Answers a refusal at the HTTP layer (unknown route or method, a listener limit, a
    /// certificate withdrawn on an open connection) after auditing it like any other request;
    /// 503 if the audit cannot be written.
    pub async fn refuse_http(
        &self,
        caller: &Caller,
        request: Option<&Request<()>>,
        refusal: outcome::HttpRefusal,
    ) -> Response<Bytes> {
        let trace_id = request.and_then(|r| headers::trace_id(r.headers()));
        let interaction = match request {
            Some(r) => route(r.method(), r.uri().path())
                .map(str::to_owned)
                .unwrap_or_else(|_| printable_request_line(r)),
            None => String::new(),
        };
        let event = AccessEvent {
            time: rfc3339(now_unix()),
            interaction,
            trace_id: trace_id.clone(),
            partner_ods: caller.agreement.as_ref().map(|a| a.ods.clone()),
            certificate_sha256: caller.certificate_sha256.clone(),
            error_code: (refusal == outcome::HttpRefusal::CertificateWithdrawn)
                .then_some(ErrorCode::AccessDenied),
            http_refusal: Some(refusal),
            refusal_reason: Some(format!("refused at the HTTP layer: {refusal:?}")),
            ..AccessEvent::default()
        };
        if self.audit.record(event).await.is_err() {
            tracing::error!("audit unavailable: refusing a partner request with 503");
            return plain_outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "The service is temporarily unavailable.",
            );
        }
        fhir_response(
            StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST),
            Bytes::from(refusal.outcome().to_string()),
            trace_id.as_deref(),
        )
    }

    fn healthz(&self) -> Response<Bytes> {
        let (status, body) = match (self.health)() {
            Ok(()) => (StatusCode::OK, "ok".to_owned()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {why}\n"),
            ),
        };
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    fn metadata(&self, agreement: &Agreement, mut event: AccessEvent, now: i64) -> Outcome {
        if !agreement.in_force(now) {
            return refusal(
                ErrorCode::AccessDenied,
                "data sharing agreement expired",
                event,
            );
        }
        event.permitted = true;
        let statement = capability::capability_statement(
            &self.appliance.fhir_base,
            &self.appliance.name,
            &event.time,
        );
        Outcome {
            status: StatusCode::OK,
            body: Bytes::from(statement.to_string()),
            event,
        }
    }

    async fn clinical(
        &self,
        agreement: Arc<Agreement>,
        request: Request<Bytes>,
        interaction: &'static str,
        format: Format,
        mut event: AccessEvent,
        now: i64,
    ) -> Outcome {
        // SPEC §5 step 2: headers, token, then the body or query.
        if let Err((code, reason)) =
            headers::check(request.headers(), interaction, &self.appliance.asid)
        {
            return refusal(code, reason, event);
        }
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = token else {
            return refusal(
                ErrorCode::BadRequest,
                "Authorization Bearer token missing",
                event,
            );
        };
        let claims = match jwt::parse(token.trim(), &self.appliance.fhir_base, now) {
            Ok(claims) => claims,
            Err(e) => return bad_token(e, event),
        };
        event.claims = Some(claims.clone());
        let wanted = if interaction == STRUCTURED_RECORD_INTERACTION {
            parameters::parse(request.body(), now).map_err(|e| {
                let code = match &e {
                    parameters::ParametersError::Malformed(_) => ErrorCode::BadRequest,
                    parameters::ParametersError::IdentifierSystem => {
                        ErrorCode::InvalidIdentifierSystem
                    }
                    parameters::ParametersError::NhsNumber => ErrorCode::InvalidNhsNumber,
                    parameters::ParametersError::Parameter(_) => ErrorCode::InvalidParameter,
                };
                (code, e.to_string())
            })
        } else {
            patient_search_query(request.uri().query())
        };
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err((code, reason)) => return refusal(code, reason, event),
        };
        event.nhs_number = Some(wanted.nhs_number.clone());
        if claims
            .requested_nhs_number
            .as_ref()
            .is_some_and(|named| *named != wanted.nhs_number)
        {
            let reason = "requested_record names another NHS number than the request";
            return bad_token(jwt::JwtError(reason.into()), event);
        }
        let access = AccessRequest {
            requesting_ods: claims.organisation_ods.clone(),
            job_role: claims.job_role.clone(),
            permission: permission(&claims),
            sections: wanted.sections.clone(),
            now,
        };

        let replica = self.replica.clone();
        let records = self.records.clone();
        let sensitive = self.sensitive.clone();
        let appliance = self.appliance.clone();
        let assembled_at = event.time.clone();
        let search = interaction == PATIENT_SEARCH_INTERACTION;
        let trace_id = event.trace_id.clone();
        let work = tokio::task::spawn_blocking(move || {
            assemble(
                &replica,
                &records,
                &sensitive,
                &appliance,
                &agreement,
                &access,
                &wanted,
                &assembled_at,
                search,
                format,
                trace_id.as_deref(),
            )
        })
        .await;
        let assembled = match work {
            Ok(Ok(assembled)) => assembled,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "replica read failed");
                event.refusal_reason = Some("replica unavailable".into());
                return Outcome {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: Bytes::from(
                        outcome::unavailable_outcome("exception", "Internal error.").to_string(),
                    ),
                    event,
                };
            }
            Err(_) => {
                event.refusal_reason = Some("request task failed".into());
                return Outcome {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: Bytes::from(
                        outcome::unavailable_outcome("exception", "Internal error.").to_string(),
                    ),
                    event,
                };
            }
        };
        match assembled {
            Assembled::Refused { code, reason } => {
                let mut outcome = refusal(code, reason, event);
                if let Some(fixed) = patient_diagnostics(code) {
                    outcome.body =
                        Bytes::from(outcome::operation_outcome_saying(code, fixed).to_string());
                }
                outcome
            }
            Assembled::Released {
                basis,
                sections,
                alert,
                body,
            } => {
                event.permitted = true;
                event.basis = Some(basis.name().to_owned());
                if let Basis::Override {
                    reason,
                    justification,
                } = &basis
                {
                    event.override_reason = Some(reason.name().to_owned());
                    event.override_justification = Some(justification.clone());
                }
                event.sections = sections;
                event.alert = alert;
                Outcome {
                    status: StatusCode::OK,
                    body: Bytes::from(body),
                    event,
                }
            }
        }
    }
}

/// The interaction a method and path name, or why there is none.
fn route(method: &Method, path: &str) -> Result<&'static str, outcome::HttpRefusal> {
    match (method, path) {
        (&Method::GET, "/fhir/metadata") => Ok(METADATA_INTERACTION),
        (&Method::POST, "/fhir/Patient/$gpc.getstructuredrecord") => {
            Ok(STRUCTURED_RECORD_INTERACTION)
        }
        (&Method::GET, "/fhir/Patient") => Ok(PATIENT_SEARCH_INTERACTION),
        (
            _,
            "/fhir/metadata"
            | "/fhir/Patient/$gpc.getstructuredrecord"
            | "/fhir/Patient"
            | "/healthz",
        ) => Err(outcome::HttpRefusal::MethodNotAllowed),
        _ => Err(outcome::HttpRefusal::UnknownRoute),
    }
}

/// `METHOD /path` of a request no route names, for the audit: printable ASCII only (anything
/// else as `?`) and at most 128 characters, so it cannot forge output where it is printed.
fn printable_request_line(request: &Request<()>) -> String {
    format!("{} {}", request.method(), request.uri().path())
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The partner's words for a refusal about the patient: fixed, so that a deceased, ended or
/// restricted record reads exactly as an unknown one, and a dissent is not told apart from a
/// missing permission. Other refusals name their header, claim, parameter or agreement rule.
fn patient_diagnostics(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::PatientNotFound => Some("No patient with that NHS number is registered here."),
        ErrorCode::NoPatientConsent => Some(
            "The patient has not consented to this record being shared with this organisation \
             (permission_to_view absent and no standing consent, or the patient has dissented).",
        ),
        _ => None,
    }
}

fn permission(claims: &jwt::Claims) -> Option<Permission> {
    match claims.permission_to_view.as_deref() {
        Some("granted") => Some(Permission::Granted),
        Some("override") => Some(Permission::Override {
            reason: claims
                .override_reason
                .as_deref()
                .and_then(OverrideReason::from_name),
            justification: claims.override_justification.clone(),
        }),
        _ => None,
    }
}

/// `GET /fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN`.
fn patient_search_query(
    query: Option<&str>,
) -> Result<parameters::RecordRequest, (ErrorCode, String)> {
    let mut identifier = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or((
            ErrorCode::BadRequest,
            "query is not valid percent-encoding".to_owned(),
        ))?;
        match name {
            "identifier" if identifier.is_none() => identifier = Some(value),
            "identifier" => {
                return Err((ErrorCode::InvalidParameter, "identifier is repeated".into()))
            }
            other => {
                return Err((
                    ErrorCode::InvalidParameter,
                    format!("unknown search parameter {other:?}"),
                ))
            }
        }
    }
    let identifier = identifier.ok_or((
        ErrorCode::InvalidParameter,
        "identifier is missing".to_owned(),
    ))?;
    let Some((system, value)) = identifier.split_once('|') else {
        return Err((
            ErrorCode::InvalidIdentifierSystem,
            "identifier has no system".into(),
        ));
    };
    if system != NHS_NUMBER_SYSTEM {
        return Err((
            ErrorCode::InvalidIdentifierSystem,
            format!("identifier system {system:?}"),
        ));
    }
    if !crate::fhir::is_valid_nhs_number(value) {
        return Err((
            ErrorCode::InvalidNhsNumber,
            "identifier value is not a valid NHS number".into(),
        ));
    }
    Ok(parameters::RecordRequest::patient_only(value.to_owned()))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// How a released structured record is rendered, chosen by the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Html,
}

enum Assembled {
    Refused {
        code: ErrorCode,
        reason: String,
    },
    Released {
        basis: Basis,
        sections: Vec<Section>,
        alert: bool,
        body: Vec<u8>,
    },
}

/// Reads the patient (or takes them from the cache), decides, and renders the response body.
/// Blocking (SQLite).
#[allow(clippy::too_many_arguments)]
fn assemble(
    replica: &ReaderPool,
    records: &records::RecordCache,
    sensitive: &SensitiveCodes,
    appliance: &Appliance,
    agreement: &Agreement,
    access: &AccessRequest,
    wanted: &parameters::RecordRequest,
    assembled_at: &str,
    search: bool,
    format: Format,
    trace_id: Option<&str>,
) -> Result<Assembled, ReplicaError> {
    replica.with(|reader| {
        let generation = reader.generation()?;
        let Some(record) = records::get_or_read(records, reader, generation, &wanted.nhs_number)?
        else {
            let decision = decide(Some(agreement), access, None, sensitive);
            return Ok(match decision {
                // GP Connect: an unknown patient is an empty searchset, not an error.
                Decision::Refused(r) if search && r.code == ErrorCode::PatientNotFound => {
                    Assembled::Released {
                        basis: Basis::Granted,
                        sections: Vec::new(),
                        alert: false,
                        body: searchset(None, &appliance.fhir_base, assembled_at).into_bytes(),
                    }
                }
                Decision::Refused(r) => Assembled::Refused {
                    code: r.code,
                    reason: r.reason,
                },
                Decision::Permitted(_) => Assembled::Refused {
                    code: ErrorCode::PatientNotFound,
                    reason: "patient not in the replica".into(),
                },
            });
        };
        let records::PatientRecord {
            patient,
            data,
            item_bodies,
            shared_bodies,
            ..
        } = &*record;
        let release = match decide(Some(agreement), access, Some(data), sensitive) {
            // A patient answered as unknown (deceased, ended, restricted) is, in a search too.
            Decision::Refused(r) if search && r.code == ErrorCode::PatientNotFound => {
                return Ok(Assembled::Released {
                    basis: Basis::Granted,
                    sections: Vec::new(),
                    alert: false,
                    body: searchset(None, &appliance.fhir_base, assembled_at).into_bytes(),
                })
            }
            Decision::Refused(r) => {
                return Ok(Assembled::Refused {
                    code: r.code,
                    reason: r.reason,
                })
            }
            Decision::Permitted(release) => release,
        };
        if search {
            return Ok(Assembled::Released {
                basis: release.basis,
                sections: Vec::new(),
                alert: release.alert,
                body: searchset(
                    Some((&patient.body, &patient.nhs_number)),
                    &appliance.fhir_base,
                    assembled_at,
                )
                .into_bytes(),
            });
        }
        // Released items with their Lists (every released item has one).
        let released: Vec<(RecordList, bundle::Entry<'_>)> = release
            .released_items
            .iter()
            .filter_map(|&i| {
                let entry = bundle::Entry {
                    facts: data.items.get(i)?,
                    body: item_bodies.get(i)?,
                };
                Some(((*release.item_lists.get(i)?)?, entry))
            })
            .collect();
        let released = filters::apply(released, |list| Some(list.section()), wanted);
        // Shared resources go out only if a released item references them and policy kept them.
        let referenced = bundle::Included::new(
            released.iter().map(|(_, e)| e.facts.references.len()).sum(),
            released
                .iter()
                .flat_map(|(_, e)| e.facts.references.iter())
                .filter_map(|r| r.split_once('/')),
        );
        let shared_out = release
            .released_shared
            .iter()
            .filter_map(|&i| {
                Some(bundle::Entry {
                    facts: data.shared.get(i)?,
                    body: shared_bodies.get(i)?,
                })
            })
            .filter(|e| referenced.contains(e.facts))
            .collect();
        // Each requested section's List, and the Ended allergies List right after allergies
        // when asked for.
        let lists = wanted
            .sections
            .iter()
            .flat_map(|&section| {
                let ended = section == Section::Allergies && wanted.include_resolved_allergies;
                std::iter::once(RecordList::Section(section))
                    .chain(ended.then_some(RecordList::EndedAllergies))
            })
            .map(|list| bundle::SectionList {
                list,
                items: released
                    .iter()
                    .filter(|(l, _)| *l == list)
                    .map(|&(_, entry)| entry)
                    .collect(),
                withheld: release.list_has_warning(list),
            })
            .collect();
        let parts = bundle::RecordParts {
            fhir_base: &appliance.fhir_base,
            patient_id: &patient.id,
            patient_nhs_number: &patient.nhs_number,
            patient_body: &patient.body,
            practice_ods: &appliance.ods,
            practice_name: &appliance.name,
            lists,
            shared: shared_out,
            not_implemented: &wanted.not_implemented,
            assembled_at,
            written: Some(&record.written),
        };
        let body = match format {
            Format::Json => bundle::structured_record(&parts),
            Format::Html => html::structured_record_page(
                &parts,
                &html::PageContext {
                    basis: &release.basis,
                    trace_id,
                },
                record.page(),
            ),
        };
        Ok(Assembled::Released {
            basis: release.basis,
            sections: release.released_sections.into_iter().collect(),
            alert: release.alert,
            body,
        })
    })
}

/// `patient`: the stored body and the NHS number.
fn searchset(patient: Option<(&str, &str)>, fhir_base: &str, assembled_at: &str) -> String {
    let parsed = patient.and_then(|(body, nhs_number)| {
        Some((
            serde_json::from_str::<serde_json::Value>(body).ok()?,
            nhs_number,
        ))
    });
    let entries = match parsed {
        Some((mut patient, nhs_number)) => {
            let id = patient["id"].as_str().unwrap_or_default().to_owned();
            bundle::strip_outside_references(
                &mut patient,
                &bundle::Included::new(1, [("Patient", id.as_str())]).for_patient(nhs_number),
            );
            let full_url = format!("{}/Patient/{id}", fhir_base.trim_end_matches('/'));
            vec![
                serde_json::json!({"fullUrl": full_url, "resource": patient, "search": {"mode": "match"}}),
            ]
        }
        None => Vec::new(),
    };
    serde_json::json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": assembled_at},
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_takes_only_two_hex_digits() {
        assert_eq!(percent_decode("a%7Cb+c").as_deref(), Some("a|b c"));
        for bad in ["%+F", "%G0", "%7", "%", "%ff"] {
            assert_ne!(percent_decode(bad).as_deref(), Some("\u{f}"), "{bad}");
        }
        assert_eq!(percent_decode("%+F"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn patient_search_needs_exactly_one_nhs_identifier() {
        let ok = patient_search_query(Some(
            "identifier=https://fhir.nhs.uk/Id/nhs-number%7C9434765919",
        ))
        .unwrap();
        assert_eq!(ok.nhs_number, "9434765919");
        let code = |q: &str| patient_search_query(Some(q)).unwrap_err().0;
        assert_eq!(code(""), ErrorCode::InvalidParameter);
        assert_eq!(
            code("identifier=9434765919"),
            ErrorCode::InvalidIdentifierSystem
        );
        assert_eq!(
            code("identifier=https://fhir.nhs.uk/Id/nhs-number|9434765918"),
            ErrorCode::InvalidNhsNumber
        );
        assert_eq!(
            code("identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919&_count=1"),
            ErrorCode::InvalidParameter
        );
    }
}
