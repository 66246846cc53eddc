//! The TCP accept loop for the partner and upstream listeners: connection and handshake limits,
//! the mTLS handshake, HTTP/1.1 or HTTP/2 by ALPN (hyper), and hand-off of each request, with
//! its body collected within the limit, to a `Handler` together with the peer's identity.
//!
//! Validates: limits (connections overall, per source address and per partner; a complete
//! ClientHello before any handshake slot; full handshakes per source; header size and time,
//! body size and time, per-partner concurrency; connection age), and, at every request, that
//! the client's certificate still verifies under the current snapshot (a CRL, CA removal or
//! expiry after the handshake refuses the request with 403 and closes the connection).
//! Does not validate: what the request asks for, nor whether an identified
//! partner's agreement is in force (the handler's job; an unregistered certificate arrives as
//! `partner: None`).

mod edge;
mod limits;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::LazyConfigAcceptor;

use crate::registry::{cert_identity, CertIdentity, Partner, Upstream};
use crate::tls::{with_full_handshake_gate, FullHandshakeGate, Snapshot};
use edge::{Buckets, Counter};

pub use limits::ListenerLimits;

/// Why the listener could not start. (Per-connection failures are logged, never returned:
/// one bad client must not stop the others.)
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding the listening socket failed.
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a TCP listener (a convenience for migd and tests).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ListenerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenerError::Bind { address, source })
}

/// HTTP version negotiated by ALPN (no ALPN means HTTP/1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Who sent a request, as established by the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The registered partner the client certificate belongs to (partner listener only),
    /// looked up in the snapshot current when the request arrived. `None`: a certificate from
    /// a trusted CA that no partner record claims; the handler answers 403 `ACCESS_DENIED`.
    pub partner: Option<Arc<Partner>>,
    /// The registered clinical system (upstream listener only).
    pub upstream: Option<Arc<Upstream>>,
    /// SHA-256 of the client's leaf certificate (its fingerprint, for the audit).
    pub leaf_cert_sha256: [u8; 32],
    pub remote: SocketAddr,
    pub protocol: Protocol,
}

/// The future a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Response<Bytes>> + Send + 'a>>;

/// A request the listener refuses itself, before the handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client certificate no longer holds (revoked by a CRL, its CA removed, expired, or
    /// otherwise no longer verifying) since the connection was opened: 403, and the
    /// connection is closed.
    CertificateWithdrawn,
    /// Headers (HTTP/1.1) or body not received in time: 408.
    Timeout,
    /// Body over the limit: 413.
    BodyTooLarge,
    /// Header block over the limit (HTTP/1.1; hyper has already answered 431): audit only.
    HeadersTooLarge,
    /// The partner's in-flight requests are at the limit: 429.
    TooManyRequests,
    /// The body's framing is broken: 400.
    MalformedBody,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::CertificateWithdrawn => StatusCode::FORBIDDEN,
            Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Refusal::MalformedBody => StatusCode::BAD_REQUEST,
        }
    }
}

/// What serves requests once the listener has authenticated the peer and read the body.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Request<Bytes>) -> HandlerFuture<'_>;

    /// Answers (and, for the API, audits) a request the listener refused itself. `request` is
    /// the request's head when one was read (not for an HTTP/1.1 header timeout). The default
    /// is a minimal FHIR OperationOutcome; the API overrides it to audit and keep one format.
    fn refuse(
        &self,
        _peer: Peer,
        _request: Option<Request<()>>,
        refusal: Refusal,
    ) -> HandlerFuture<'_> {
        Box::pin(std::future::ready(default_refusal(refusal.status())))
    }
}

/// A minimal OperationOutcome for a listener-level refusal.
pub fn default_refusal(status: StatusCode) -> Response<Bytes> {
    let code = match status {
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "too-costly",
        StatusCode::TOO_MANY_REQUESTS => "throttled",
        StatusCode::SERVICE_UNAVAILABLE => "transient",
        _ => "invalid",
    };
    let body = format!(
        r#"{{"resourceType":"OperationOutcome","issue":[{{"severity":"error","code":"{code}","diagnostics":"{}"}}]}}"#,
        status.canonical_reason().unwrap_or("refused")
    );
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    response
}

/// Which listener this is: it picks the server configuration and registry from each snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Partner,
    Upstream,
}

/// Where the listener gets its current snapshot (from `tls::Reloader::subscribe`).
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub role: Role,
}

impl SnapshotSource {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, role: Role) -> SnapshotSource {
        SnapshotSource { snapshots, role }
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
}

/// State shared by every connection of one listener.
struct Shared {
    source: SnapshotSource,
    limits: ListenerLimits,
    handler: Arc<dyn Handler>,
    /// Bounds concurrent handshakes (each full one costs a TPM signature and, while it waits,
    /// a blocking thread) so a burst of new clients cannot starve established ones. Taken only
    /// once a whole ClientHello has arrived.
    handshakes: Semaphore,
    /// In-flight requests per partner (or per unregistered certificate), for the 429 limit.
    in_flight: Counter<ClientKey>,
    /// Open connections per source address, counted from accept.
    per_source: Counter<IpAddr>,
    /// Open connections per partner (or unregistered certificate), counted after the handshake.
    per_partner: Counter<ClientKey>,
    /// Full handshakes per source address.
    full_handshakes: Arc<Buckets>,
}

/// Whose allowance a connection or request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ClientKey {
    Partner(String),
    Upstream(String),
    Certificate([u8; 32]),
}

impl ClientKey {
    fn of(peer: &Peer) -> ClientKey {
        match (&peer.partner, &peer.upstream) {
            (Some(partner), _) => ClientKey::Partner(partner.agreement.ods.clone()),
            (None, Some(upstream)) => ClientKey::Upstream(upstream.name.clone()),
            (None, None) => ClientKey::Certificate(peer.leaf_cert_sha256),
        }
    }
}

/// Serves `tcp` until `shutdown` turns true (or its sender is dropped): then stops accepting,
/// lets in-flight requests finish within `limits.shutdown_grace`, and drops what remains.
pub fn serve(
    tcp: TcpListener,
    source: SnapshotSource,
    limits: ListenerLimits,
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        source,
        handshakes: Semaphore::new(limits.max_concurrent_handshakes.max(1)),
        full_handshakes: Arc::new(Buckets::new(
            limits.handshake_rate_per_source,
            limits.handshake_burst_per_source,
        )),
        limits,
        handler,
        in_flight: Counter::new(),
        per_source: Counter::new(),
        per_partner: Counter::new(),
    });
    tokio::spawn(accept_loop(tcp, shared, shutdown))
}

async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

async fn accept_loop(tcp: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown_requested(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = tcp.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Over a limit the connection is closed before any TLS: answering would
                    // need a handshake, i.e. the TPM work the limits exist to bound.
                    let source = edge::source_key(remote.ip());
                    let limit = shared.limits.max_connections_per_source;
                    let Some(source_slot) = shared.per_source.enter(source, limit) else {
                        tracing::debug!(%remote, "per-source connection limit reached; closing");
                        drop(stream);
                        continue;
                    };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::warn!(%remote, "connection limit reached; closing new connection");
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        connection(stream, remote, source, shared, shutdown).await;
                        drop(source_slot);
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Typically EMFILE: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(tcp);
    let open = tasks.len();
    tracing::info!(open, "listener stopped accepting; draining connections");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.limits.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tasks.len(),
            "grace period over; closing remaining connections"
        );
        tasks.shutdown().await;
    }
}

/// The boxed future of the per-connection hyper service (boxed so it is `Unpin`).
type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// How often an open connection's chain is verified again even when no reload happened (a CRL
/// passing its nextUpdate, an intermediate expiring).
const REVERIFY_EVERY: i64 = 60;

/// What a connection knows about its client after the handshake.
struct Client {
    identity: CertIdentity,
    /// The chain the client presented (leaf first), to verify again after a reload.
    chain: Vec<CertificateDer<'static>>,
    /// The earliest notAfter in that chain, Unix seconds.
    valid_until: i64,
    remote: SocketAddr,
    protocol: Protocol,
    /// Snapshot generation the chain last verified under, and when to verify it anyway.
    verified_generation: AtomicU64,
    reverify_at: AtomicI64,
    /// Set when the connection must end after the response in hand (certificate withdrawn,
    /// partner removed); the connection loop shuts down gracefully.
    close: Notify,
}

impl Client {
    /// The peer for one request, identified against `snapshot` (the one current now, so a
    /// partner added or removed applies to open connections too).
    fn peer(&self, snapshot: &Snapshot, role: Role) -> Peer {
        let (partner, upstream) = match role {
            Role::Partner => (snapshot.partners.identify(&self.identity), None),
            Role::Upstream => (None, snapshot.upstreams.identify(&self.identity)),
        };
        Peer {
            partner,
            upstream,
            leaf_cert_sha256: self.identity.cert_sha256,
            remote: self.remote,
            protocol: self.protocol,
        }
    }

    /// Whether the client's certificate still holds under `snapshot` at `now` (SPEC §5 step 1
    /// for every request). Cheap unless the snapshot changed or the last check is a minute
    /// old: then the snapshot's verifier runs on the chain again (CRLs, trust anchors, dates).
    fn still_valid(&self, snapshot: &Snapshot, role: Role, now: i64) -> Result<(), String> {
        if now > self.valid_until {
            return Err("client certificate expired while the connection was open".into());
        }
        if snapshot.generation == self.verified_generation.load(Ordering::Acquire)
            && now < self.reverify_at.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        let verifier = match role {
            Role::Partner => &snapshot.partner_verifier,
            Role::Upstream => &snapshot.upstream_verifier,
        };
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| "no client certificate".to_string())?;
        let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
        verifier
            .verify_client_cert(leaf, intermediates, at)
            .map_err(|error| format!("client certificate no longer verifies: {error}"))?;
        self.reverify_at
            .store(now.saturating_add(REVERIFY_EVERY), Ordering::Relaxed);
        self.verified_generation
            .store(snapshot.generation, Ordering::Release);
        Ok(())
    }
}

fn unix_now() -> i64 {
    crate::registry::unix_seconds(std::time::SystemTime::now())
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    source: IpAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    let handshake = async {
        // The whole ClientHello first, with no handshake slot held: a silent or trickling
        // client costs a socket for at most `client_hello_timeout`, never a slot or the TPM.
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout(limits.client_hello_timeout, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no ClientHello in time",
                ))
            }
        };
        // The semaphore is never closed, so acquire cannot fail; treat it as a refusal anyway.
        let Ok(_permit) = shared.handshakes.acquire().await else {
            return Err(std::io::Error::other("handshake limiter closed"));
        };
        let snapshot = shared.source.current();
        let config = match shared.source.role {
            Role::Partner => snapshot.partner_tls.clone(),
            Role::Upstream => snapshot.upstream_tls.clone(),
        };
        let generation = snapshot.generation;
        drop(snapshot);
        let buckets = shared.full_handshakes.clone();
        let gate: FullHandshakeGate = Arc::new(move || {
            let allowed = buckets.take(source);
            if !allowed {
                tracing::info!(%remote, "full handshake rate limit for this source; refused");
            }
            allowed
        });
        // `into_stream` processes the ClientHello (and signs) as it is called, so it must be
        // called inside the gate's scope, not evaluated as its argument.
        with_full_handshake_gate(gate, async move { start.into_stream(config).await })
            .await
            .map(|tls| (tls, generation))
    };
    let (tls, generation) = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return;
        }
        Ok(Err(error)) => {
            tracing::info!(%remote, %error, "TLS handshake refused");
            return;
        }
        Ok(Ok(done)) => done,
    };
    let (_, session) = tls.get_ref();
    let chain: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let identity = chain.first().and_then(|leaf| cert_identity(leaf));
    let Some(identity) = identity else {
        // Unreachable with a mandatory client-certificate verifier; refuse if it ever happens.
        tracing::warn!(%remote, "handshake completed without a client certificate; closing");
        return;
    };
    let valid_until = chain
        .iter()
        .skip(1)
        .filter_map(|cert| crate::registry::cert_not_after(cert))
        .fold(identity.not_after, i64::min);
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    // A resumed session skipped certificate verification and its ticket may be hours old: its
    // first request verifies the chain again. A snapshot that changed during the handshake is
    // caught by the generation. Either way the refusal is a 403 at the first request (audited),
    // not a silent close.
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let reverify_at = if resumed {
        0
    } else {
        unix_now().saturating_add(REVERIFY_EVERY)
    };
    let client = Arc::new(Client {
        identity,
        chain,
        valid_until,
        remote,
        protocol,
        verified_generation: AtomicU64::new(generation),
        reverify_at: AtomicI64::new(reverify_at),
        close: Notify::new(),
    });
    let key = ClientKey::of(&client.peer(&shared.source.current(), shared.source.role));
    let Some(_partner_slot) = shared
        .per_partner
        .enter(key, limits.max_connections_per_partner)
    else {
        tracing::info!(%remote, "per-partner connection limit reached; closing");
        return;
    };
    let service_shared = shared.clone();
    let service_client = client.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = service_shared.clone();
        let client = service_client.clone();
        let future: ServiceFuture =
            Box::pin(async move { Ok(respond(&shared, &client, request).await) });
        future
    });
    let io = TokioIo::new(tls);
    // Why the connection should stop taking requests: shutdown, its maximum age, or a refusal
    // that closes it.
    let stop = {
        let mut shutdown = shutdown;
        let client = client.clone();
        let max_age = limits.max_connection_age;
        async move {
            tokio::select! {
                _ = shutdown_requested(&mut shutdown) => {}
                _ = tokio::time::sleep(max_age) => {
                    tracing::debug!(%remote, "connection reached its maximum age; closing");
                }
                _ = client.close.notified() => {}
            }
        }
    };
    match protocol {
        Protocol::Http1 => serve_http1(io, service, &shared, &client, stop).await,
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            // HTTP/2 has no header timeout in hyper; pings at least drop peers that vanished,
            // so dead connections do not hold connection slots (the maximum age ends the rest).
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10))
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(
                    u32::try_from(limits.per_partner_concurrency.saturating_mul(2))
                        .unwrap_or(u32::MAX),
                );
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "HTTP/2 connection ended with an error");
            }
        }
    }
}

/// HTTP/1.1 with hyper's header limits; a client that started a request but did not finish its
/// headers within `header_read_timeout` gets `408` and the connection is closed (an idle
/// keep-alive connection is just closed).
async fn serve_http1<S>(
    io: TokioIo<tokio_rustls::server::TlsStream<TcpStream>>,
    service: S,
    shared: &Shared,
    client: &Client,
    stop: impl Future<Output = ()>,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Unpin,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &shared.limits;
    let remote = client.remote;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut conn = builder.serve_connection(io, service);
    let mut draining = false;
    tokio::pin!(stop);
    let result = loop {
        let step = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        if draining {
            break step.await;
        }
        tokio::select! {
            result = step => break result,
            _ = &mut stop => {
                Pin::new(&mut conn).graceful_shutdown();
                draining = true;
            }
        }
    };
    let parts = conn.into_parts();
    let mut tls = parts.io.into_inner();
    match result {
        Err(error) if error.is_timeout() && !parts.read_buf.is_empty() => {
            tracing::info!(%remote, "request headers too slow; 408 and closing");
            let peer = client.peer(&shared.source.current(), shared.source.role);
            let response = shared.handler.refuse(peer, None, Refusal::Timeout).await;
            let _ = tls.write_all(&http1_bytes(&response)).await;
        }
        Err(error) if error.is_parse_too_large() => {
            // hyper has answered 431 itself; the refusal is audited like any other.
            let peer = client.peer(&shared.source.current(), shared.source.role);
            let _ = shared
                .handler
                .refuse(peer, None, Refusal::HeadersTooLarge)
                .await;
        }
        Err(error) => tracing::debug!(%remote, %error, "HTTP/1 connection ended with an error"),
        Ok(()) => {}
    }
    // Bounded: a peer that stops reading must not hold the task open.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// A complete HTTP/1.1 response that closes the connection, for writing outside hyper.
fn http1_bytes(response: &Response<Bytes>) -> Vec<u8> {
    let status = response.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "connection: close\r\ncontent-length: {}\r\n\r\n",
            response.body().len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(response.body());
    out
}

/// Asks the connection to end after this response: `Connection: close` for HTTP/1.1, GOAWAY
/// (graceful shutdown) for HTTP/2.
fn closing(client: &Client, mut response: Response<Bytes>) -> Response<Full<Bytes>> {
    client.close.notify_one();
    if client.protocol == Protocol::Http1 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response.map(Full::new)
}

async fn respond(
    shared: &Shared,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let handler = &shared.handler;
    let limits = &shared.limits;
    let role = shared.source.role;
    let (parts, body) = request.into_parts();
    let head = |parts: http::request::Parts| Some(Request::from_parts(parts, ()));
    let snapshot = shared.source.current();
    let peer = client.peer(&snapshot, role);
    if let Err(reason) = client.still_valid(&snapshot, role, unix_now()) {
        tracing::info!(remote = %client.remote, %reason, "403 and closing the connection");
        let response = handler
            .refuse(peer, head(parts), Refusal::CertificateWithdrawn)
            .await;
        return closing(client, response);
    }
    drop(snapshot);
    // A certificate no registered partner (or upstream) claims any more: the handler answers
    // 403 and audits it; the connection then ends rather than being kept for later requests.
    let unclaimed = match role {
        Role::Partner => peer.partner.is_none(),
        Role::Upstream => peer.upstream.is_none(),
    };
    let Some(_slot) = shared
        .in_flight
        .enter(ClientKey::of(&peer), limits.per_partner_concurrency)
    else {
        tracing::info!(remote = %peer.remote, "per-partner concurrency limit reached; 429");
        return handler
            .refuse(peer, head(parts), Refusal::TooManyRequests)
            .await
            .map(Full::new);
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max_body = u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX);
    if declared.is_some_and(|length| length > max_body) {
        return handler
            .refuse(peer, head(parts), Refusal::BodyTooLarge)
            .await
            .map(Full::new);
    }
    let collected = tokio::time::timeout(
        limits.body_read_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => Err(Refusal::Timeout),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::BodyTooLarge)
        }
        Ok(Err(_)) => Err(Refusal::MalformedBody),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    };
    let body = match body {
        Ok(body) => body,
        Err(refusal) => {
            return handler
                .refuse(peer, head(parts), refusal)
                .await
                .map(Full::new)
        }
    };
    let response = handler.handle(peer, Request::from_parts(parts, body)).await;
    if unclaimed {
        return closing(client, response);
    }
    response.map(Full::new)
}
