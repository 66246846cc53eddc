//! The partner FHIR API (SPEC §3): routing, the `Ssp-*` headers and access token, the access
//! decision, the audit record, and the consent-filtered response.
//!
//! One request is one pipeline: route, read the headers, token and body or query, decide once,
//! render; it ends in `Result<Release, Refused>`. The audit event is built once from that typed
//! outcome and written durably before the response leaves; if the audit cannot be written the
//! partner gets 503 and no record data. Refusals carry only the SPEC §5 code and the name of
//! what was wrong; the reason goes to the audit.

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
use time::OffsetDateTime;

use crate::replica::{ReaderPool, ReplicaError};
use capability::{PATIENT_SEARCH_INTERACTION, STRUCTURED_RECORD_INTERACTION};
use mig_policy::fhir::{Section, NHS_NUMBER_SYSTEM};
use mig_policy::{
    decide, AccessRequest, Agreement, Basis, Decision, ErrorCode, OverrideReason, Permission,
    Refusal, SensitiveCodes,
};

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

/// What a permitted request was released on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// `None` for the capability statement, which needs no permission to view.
    pub basis: Option<Basis>,
    /// The sections released, in release order.
    pub sections: Vec<Section>,
    /// A permitted override: an alert goes to the privacy officer with the record.
    pub alert: bool,
}

/// Why a request got no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A request error (SPEC §5 step 2) or the access decision, with its GP Connect code.
    Refusal(Refusal),
    /// A malformed access token (BAD_REQUEST): the partner is told which claim is wrong.
    Token(jwt::JwtError),
    /// At the HTTP layer: unknown route or method, a listener limit, a withdrawn certificate.
    Http(outcome::HttpRefusal),
    /// The replica or the request's task failed (500, no GP Connect code); says which.
    Failed(&'static str),
}

impl Refused {
    fn status(&self) -> StatusCode {
        let code = match self {
            Refused::Refusal(r) => r.code.http_status(),
            Refused::Token(_) => ErrorCode::BadRequest.http_status(),
            Refused::Http(r) => r.status(),
            Refused::Failed(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN)
    }

    /// The OperationOutcome the partner gets: it names the header, claim, parameter or rule at
    /// fault, and never holds record data.
    fn body(&self) -> Bytes {
        let outcome = match self {
            Refused::Refusal(r) => outcome::operation_outcome_saying(
                r.code,
                patient_diagnostics(r.code).unwrap_or(&r.reason),
            ),
            Refused::Token(e) => outcome::operation_outcome_saying(
                ErrorCode::BadRequest,
                &format!("The access token is malformed: {}.", e.0),
            ),
            Refused::Http(r) => r.outcome(),
            Refused::Failed(_) => outcome::unavailable_outcome("exception", "Internal error."),
        };
        Bytes::from(outcome.to_string())
    }
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused::Refusal(refusal)
    }
}

/// One partner request as the audit trail records it: built once, from what the request said
/// and its typed outcome.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    /// When the request arrived (UTC, whole seconds): also the response's `lastUpdated`.
    pub time: OffsetDateTime,
    pub interaction: String,
    pub trace_id: Option<String>,
    /// `Ssp-From`, when well-formed.
    pub from_asid: Option<String>,
    pub partner_ods: Option<String>,
    pub certificate_sha256: String,
    /// The access token's claims, once it was read.
    pub claims: Option<jwt::Claims>,
    /// The NHS number asked for, once the body or query was read.
    pub nhs_number: Option<String>,
    pub outcome: Result<Grant, Refused>,
}

impl AccessEvent {
    pub fn permitted(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The GP Connect code of a refusal, if it has one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match &self.outcome {
            Err(Refused::Refusal(r)) => Some(r.code),
            Err(Refused::Token(_)) => Some(ErrorCode::BadRequest),
            Err(Refused::Http(outcome::HttpRefusal::CertificateWithdrawn)) => {
                Some(ErrorCode::AccessDenied)
            }
            Ok(_) | Err(Refused::Http(_) | Refused::Failed(_)) => None,
        }
    }

    /// The Spine code the partner was sent (and the audit records).
    pub fn spine_code(&self) -> Option<&'static str> {
        match &self.outcome {
            Err(Refused::Http(r)) => Some(r.code().0),
            _ => self.error_code().map(ErrorCode::code),
        }
    }

    pub fn http_refusal(&self) -> Option<outcome::HttpRefusal> {
        match &self.outcome {
            Err(Refused::Http(r)) => Some(*r),
            _ => None,
        }
    }

    /// Why it was refused, in plain words; never sent to the partner.
    pub fn refusal_reason(&self) -> Option<String> {
        match self.outcome.as_ref().err()? {
            Refused::Refusal(r) => Some(r.reason.clone()),
            Refused::Token(e) => Some(e.to_string()),
            Refused::Http(r) => Some(format!("refused at the HTTP layer: {r:?}")),
            Refused::Failed(what) => Some((*what).to_owned()),
        }
    }

    pub fn basis(&self) -> Option<&Basis> {
        self.outcome.as_ref().ok()?.basis.as_ref()
    }

    pub fn sections(&self) -> &[Section] {
        self.outcome.as_ref().map_or(&[], |g| &g.sections)
    }

    /// A permitted override: an alert goes to the privacy officer with the record.
    pub fn alert(&self) -> bool {
        self.outcome.as_ref().is_ok_and(|g| g.alert)
    }
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

/// A permitted request's answer: what the audit records, and the body sent once it has.
#[derive(Debug)]
struct Release {
    grant: Grant,
    body: Bytes,
    format: Format,
}

/// What the request told us before it was answered (for the audit), and the answer.
struct Answer {
    claims: Option<jwt::Claims>,
    nhs_number: Option<String>,
    result: Result<Release, Refused>,
}

impl Answer {
    /// An answer given before the token was read.
    fn without_claims(result: Result<Release, Refused>) -> Answer {
        Answer {
            claims: None,
            nhs_number: None,
            result,
        }
    }
}

/// What a request is, once routed: known before anything can refuse it.
#[derive(Debug, Clone)]
struct Received {
    time: OffsetDateTime,
    interaction: &'static str,
    format: Format,
    trace_id: Option<String>,
}

/// Now, to the second: the time a request is audited and its response stamped with.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn refusal(code: ErrorCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
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
        let received = Received {
            time: now(),
            interaction,
            format: if interaction == STRUCTURED_RECORD_INTERACTION
                && html::prefers_html(request.headers())
            {
                Format::Html
            } else {
                Format::Json
            },
            trace_id: headers::trace_id(request.headers()),
        };
        let from_asid = headers::from_asid(request.headers());
        let answer = match caller.agreement.clone() {
            // SPEC §5 step 1 comes before anything about the request.
            None => Answer::without_claims(Err(refusal(
                ErrorCode::AccessDenied,
                "client certificate matches no registered partner",
            )
            .into())),
            Some(agreement) if interaction == METADATA_INTERACTION => {
                Answer::without_claims(self.metadata(&agreement, received.time))
            }
            Some(agreement) => self.clinical(agreement, request, &received).await,
        };
        let event = AccessEvent {
            time: received.time,
            interaction: match received.format {
                Format::Html => HTML_VIEW_INTERACTION,
                Format::Json => interaction,
            }
            .to_owned(),
            trace_id: received.trace_id,
            from_asid,
            partner_ods: caller.agreement.as_ref().map(|a| a.ods.clone()),
            certificate_sha256: caller.certificate_sha256.clone(),
            claims: answer.claims,
            nhs_number: answer.nhs_number,
            outcome: audited(&answer.result),
        };
        self.conclude(event, answer.result).await
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
        let interaction = match request {
            Some(r) => route(r.method(), r.uri().path())
                .map(str::to_owned)
                .unwrap_or_else(|_| printable_request_line(r)),
            None => String::new(),
        };
        let event = AccessEvent {
            time: now(),
            interaction,
            trace_id: request.and_then(|r| headers::trace_id(r.headers())),
            from_asid: None,
            partner_ods: caller.agreement.as_ref().map(|a| a.ods.clone()),
            certificate_sha256: caller.certificate_sha256.clone(),
            claims: None,
            nhs_number: None,
            outcome: Err(Refused::Http(refusal)),
        };
        self.conclude(event, Err(Refused::Http(refusal))).await
    }

    /// Audits the event, then answers: 503 and nothing else if the audit cannot be written.
    async fn conclude(
        &self,
        event: AccessEvent,
        result: Result<Release, Refused>,
    ) -> Response<Bytes> {
        let trace_id = event.trace_id.clone();
        let interaction = event.interaction.clone();
        if self.audit.record(event).await.is_err() {
            tracing::error!("audit unavailable: refusing a partner request with 503");
            return plain_outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "The service is temporarily unavailable.",
            );
        }
        match result {
            Ok(Release { body, format, .. }) => {
                tracing::debug!(interaction, "released");
                match format {
                    Format::Html => html_response(body, trace_id.as_deref()),
                    Format::Json => fhir_response(StatusCode::OK, body, trace_id.as_deref()),
                }
            }
            Err(refused) => fhir_response(refused.status(), refused.body(), trace_id.as_deref()),
        }
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

    fn metadata(&self, agreement: &Agreement, time: OffsetDateTime) -> Result<Release, Refused> {
        if !agreement.in_force(time.unix_timestamp()) {
            return Err(refusal(ErrorCode::AccessDenied, "data sharing agreement expired").into());
        }
        let statement = capability::capability_statement(
            &self.appliance.fhir_base,
            &self.appliance.name,
            &rfc3339(time),
        );
        Ok(Release {
            grant: Grant::default(),
            body: Bytes::from(statement.to_string()),
            format: Format::Json,
        })
    }

    /// SPEC §5 step 2 (headers, token, then the body or query), then the decision and the
    /// response body.
    async fn clinical(
        &self,
        agreement: Arc<Agreement>,
        request: Request<Bytes>,
        received: &Received,
    ) -> Answer {
        let now = received.time.unix_timestamp();
        let claims = match self.token(&request, received.interaction, now) {
            Ok(claims) => claims,
            Err(refused) => return Answer::without_claims(Err(refused)),
        };
        let wanted = if received.interaction == STRUCTURED_RECORD_INTERACTION {
            parameters::parse(request.body(), now).map_err(parameters_refusal)
        } else {
            patient_search_query(request.uri().query())
        };
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(refused) => {
                return Answer {
                    claims: Some(claims),
                    nhs_number: None,
                    result: Err(refused.into()),
                }
            }
        };
        let nhs_number = Some(wanted.nhs_number.clone());
        let result = self.release(agreement, &claims, wanted, received).await;
        Answer {
            claims: Some(claims),
            nhs_number,
            result,
        }
    }

    /// The `Ssp-*` headers, then the access token's claims.
    fn token(
        &self,
        request: &Request<Bytes>,
        interaction: &str,
        now: i64,
    ) -> Result<jwt::Claims, Refused> {
        headers::check(request.headers(), interaction, &self.appliance.asid)?;
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| refusal(ErrorCode::BadRequest, "Authorization Bearer token missing"))?;
        jwt::parse(token.trim(), &self.appliance.fhir_base, now).map_err(Refused::Token)
    }

    /// Decides (once) and renders what may be released, off the async threads (SQLite).
    async fn release(
        &self,
        agreement: Arc<Agreement>,
        claims: &jwt::Claims,
        wanted: parameters::RecordRequest,
        received: &Received,
    ) -> Result<Release, Refused> {
        if claims
            .requested_nhs_number
            .as_ref()
            .is_some_and(|named| *named != wanted.nhs_number)
        {
            return Err(Refused::Token(jwt::JwtError(
                "requested_record names another NHS number than the request".into(),
            )));
        }
        let access = AccessRequest {
            requesting_ods: claims.organisation_ods.clone(),
            job_role: claims.job_role.clone(),
            permission: permission(claims),
            sections: wanted.sections.clone(),
            now: received.time.unix_timestamp(),
        };
        let replica = self.replica.clone();
        let records = self.records.clone();
        let sensitive = self.sensitive.clone();
        let appliance = self.appliance.clone();
        let format = received.format;
        let received = received.clone();
        let work = tokio::task::spawn_blocking(move || {
            assemble(
                &replica, &records, &sensitive, &appliance, &agreement, &access, &wanted, &received,
            )
        })
        .await;
        match work {
            Ok(Ok(Ok((grant, body)))) => Ok(Release {
                grant,
                body: Bytes::from(body),
                format,
            }),
            Ok(Ok(Err(refusal))) => Err(refusal.into()),
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error::Chain(&e), "replica read failed");
                Err(Refused::Failed("replica unavailable"))
            }
            Err(_) => Err(Refused::Failed("request task failed")),
        }
    }
}

/// The audit's view of an answer: everything but the body.
fn audited(result: &Result<Release, Refused>) -> Result<Grant, Refused> {
    result
        .as_ref()
        .map(|release| release.grant.clone())
        .map_err(Clone::clone)
}

fn parameters_refusal(error: parameters::ParametersError) -> Refusal {
    use parameters::ParametersError;
    let code = match &error {
        ParametersError::Malformed(_) => ErrorCode::BadRequest,
        ParametersError::IdentifierSystem => ErrorCode::InvalidIdentifierSystem,
        ParametersError::NhsNumber => ErrorCode::InvalidNhsNumber,
        ParametersError::Parameter(_) => ErrorCode::InvalidParameter,
    };
    refusal(code, error.to_string())
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
fn patient_search_query(query: Option<&str>) -> Result<parameters::RecordRequest, Refusal> {
    let query = query.unwrap_or_default();
    // form_urlencoded passes a stray `%` through and replaces bad UTF-8: both are refused here.
    let bad_encoding = || refusal(ErrorCode::BadRequest, "query is not valid percent-encoding");
    let strict = query.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !strict {
        return Err(bad_encoding());
    }
    let mut identifier = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name.contains(char::REPLACEMENT_CHARACTER) || value.contains(char::REPLACEMENT_CHARACTER)
        {
            return Err(bad_encoding());
        }
        match &*name {
            "identifier" if identifier.is_none() => identifier = Some(value),
            "identifier" => {
                return Err(refusal(
                    ErrorCode::InvalidParameter,
                    "identifier is repeated",
                ))
            }
            other => {
                return Err(refusal(
                    ErrorCode::InvalidParameter,
                    format!("unknown search parameter {other:?}"),
                ))
            }
        }
    }
    let identifier =
        identifier.ok_or_else(|| refusal(ErrorCode::InvalidParameter, "identifier is missing"))?;
    let Some((system, value)) = identifier.split_once('|') else {
        return Err(refusal(
            ErrorCode::InvalidIdentifierSystem,
            "identifier has no system",
        ));
    };
    if system != NHS_NUMBER_SYSTEM {
        return Err(refusal(
            ErrorCode::InvalidIdentifierSystem,
            format!("identifier system {system:?}"),
        ));
    }
    if !mig_policy::fhir::is_valid_nhs_number(value) {
        return Err(refusal(
            ErrorCode::InvalidNhsNumber,
            "identifier value is not a valid NHS number",
        ));
    }
    Ok(parameters::RecordRequest::patient_only(value.to_owned()))
}

/// How a released structured record is rendered, chosen by the request's `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Html,
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
    received: &Received,
) -> Result<Result<(Grant, Vec<u8>), Refusal>, ReplicaError> {
    replica.with(|reader| {
        let generation = reader.generation()?;
        let record = records::get_or_read(records, reader, generation, &wanted.nhs_number)?;
        let decision = decide(
            Some(agreement),
            access,
            record.as_ref().map(|r| &r.data),
            sensitive,
        );
        let assembled_at = rfc3339(received.time);
        let search = received.interaction == PATIENT_SEARCH_INTERACTION;
        let release = match decision {
            // GP Connect: an unknown patient (or one answered as unknown: deceased, ended,
            // restricted) is an empty searchset, not an error.
            Decision::Refused(r) if search && r.code == ErrorCode::PatientNotFound => {
                let grant = Grant {
                    basis: Some(Basis::Granted),
                    ..Grant::default()
                };
                let body = bundle::searchset(None, &appliance.fhir_base, &assembled_at);
                return Ok(Ok((grant, body.into_bytes())));
            }
            Decision::Refused(r) => return Ok(Err(r)),
            Decision::Permitted(release) => release,
        };
        let Some(record) = record else {
            return Ok(Err(refusal(
                ErrorCode::PatientNotFound,
                "patient not in the replica",
            )));
        };
        let patient = &record.patient;
        if search {
            let grant = Grant {
                basis: Some(release.basis),
                sections: Vec::new(),
                alert: release.alert,
            };
            let body = bundle::searchset(
                Some((&patient.body, &patient.nhs_number)),
                &appliance.fhir_base,
                &assembled_at,
            );
            return Ok(Ok((grant, body.into_bytes())));
        }
        let parts =
            bundle::RecordParts::compose(appliance, &record, &release, wanted, &assembled_at);
        let body = match received.format {
            Format::Json => bundle::structured_record(&parts),
            Format::Html => html::structured_record_page(
                &parts,
                &html::PageContext {
                    basis: &release.basis,
                    trace_id: received.trace_id.as_deref(),
                },
                record.page(),
            ),
        };
        let grant = Grant {
            basis: Some(release.basis),
            sections: release.released_sections.into_iter().collect(),
            alert: release.alert,
        };
        Ok(Ok((grant, body)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_search_refuses_each_bad_percent_encoding() {
        let system = "identifier=https://fhir.nhs.uk/Id/nhs-number";
        for bad in ["%+F", "%G0", "%7", "%", "%ff", "%C3%28"] {
            let query = format!("{system}%7C9434765919&_count={bad}");
            let refusal = patient_search_query(Some(&query)).map(|r| r.nhs_number);
            let refusal = refusal.unwrap_err();
            assert_eq!(refusal.code, ErrorCode::BadRequest, "{bad}");
            assert_eq!(
                refusal.reason, "query is not valid percent-encoding",
                "{bad}"
            );
        }
        let plus_is_space = patient_search_query(Some(&format!("{system}+%7C9434765919")));
        assert_eq!(
            plus_is_space.map(|r| r.nhs_number).unwrap_err().reason,
            "identifier system \"https://fhir.nhs.uk/Id/nhs-number \""
        );
    }

    #[test]
    fn patient_search_needs_exactly_one_nhs_identifier() {
        let ok = patient_search_query(Some(
            "identifier=https://fhir.nhs.uk/Id/nhs-number%7C9434765919",
        ))
        .unwrap();
        assert_eq!(ok.nhs_number, "9434765919");
        let code = |q: &str| patient_search_query(Some(q)).unwrap_err().code;
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
