//! The TCP accept loop for the partner and upstream listeners: connection and handshake limits,
//! the mTLS handshake, HTTP/1.1 or HTTP/2 by ALPN (hyper), and hand-off of each request, with
//! its body collected within the limit, to a `Handler` together with the peer's identity.
//!
//! Validates: limits (connections, handshakes, header size and time, body size and time,
//! per-partner concurrency) and that the handshake succeeded with the snapshot current when the
//! connection arrived. Does not validate: what the request asks for, nor whether an identified
//! partner's agreement is in force (the handler's job; an unregistered certificate arrives as
//! `partner: None`).

mod limits;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::registry::{cert_identity, CertIdentity, Partner, Upstream};
use crate::tls::Snapshot;

pub use limits::ListenerLimits;

/// Why the listener could not start. (Per-connection failures are logged, never returned:
/// one bad client must not stop the others.)
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding the listening socket failed.
    #[error("cannot listen on {address}: {source}")]
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

/// What serves requests once the listener has authenticated the peer and read the body.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, request: Request<Bytes>) -> HandlerFuture<'_>;

    /// The response the listener sends when it refuses a request itself (408, 413, 429). The
    /// default is a minimal FHIR OperationOutcome; the API overrides it to keep one format.
    fn refusal(&self, status: StatusCode) -> Response<Bytes> {
        default_refusal(status)
    }
}

/// A minimal OperationOutcome for a listener-level refusal.
pub fn default_refusal(status: StatusCode) -> Response<Bytes> {
    let code = match status {
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too-costly",
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
    /// a blocking thread) so a burst of new clients cannot starve established ones.
    handshakes: Semaphore,
    /// In-flight requests per partner (or per unregistered certificate), for the 429 limit.
    in_flight: Arc<Mutex<HashMap<InFlightKey, usize>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum InFlightKey {
    Partner(String),
    Certificate([u8; 32]),
}

/// Holds one slot of a partner's concurrency allowance; gives it back on drop.
struct InFlightGuard {
    map: Arc<Mutex<HashMap<InFlightKey, usize>>>,
    key: InFlightKey,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // A poisoned lock only means a panic elsewhere mid-update; the counts are still usable.
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Shared {
    fn enter(&self, key: InFlightKey) -> Option<InFlightGuard> {
        let mut map = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(key.clone()).or_insert(0);
        if *count >= self.limits.per_partner_concurrency {
            return None;
        }
        *count += 1;
        Some(InFlightGuard {
            map: self.in_flight.clone(),
            key,
        })
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
        limits,
        handler,
        in_flight: Arc::new(Mutex::new(HashMap::new())),
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
                    // Over the limit the connection is closed before any TLS: answering 503
                    // would need a handshake, i.e. the TPM work the limit exists to bound.
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        tracing::warn!(%remote, "connection limit reached; closing new connection");
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        connection(stream, remote, shared, shutdown).await;
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

/// What a connection knows about its client after the handshake.
struct Client {
    identity: CertIdentity,
    remote: SocketAddr,
    protocol: Protocol,
}

impl Client {
    /// The peer for one request, identified against the snapshot current now (so a partner
    /// added or removed applies to open connections too).
    fn peer(&self, shared: &Shared) -> Peer {
        let snapshot = shared.source.current();
        let (partner, upstream) = match shared.source.role {
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
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let snapshot = shared.source.current();
    let config = match shared.source.role {
        Role::Partner => snapshot.partner_tls.clone(),
        Role::Upstream => snapshot.upstream_tls.clone(),
    };
    drop(snapshot);
    let handshake = async {
        // The semaphore is never closed, so acquire cannot fail; treat it as a refusal anyway.
        let Ok(_permit) = shared.handshakes.acquire().await else {
            return Err(std::io::Error::other("handshake limiter closed"));
        };
        TlsAcceptor::from(config).accept(stream).await
    };
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
        Err(_) => {
            tracing::info!(%remote, "TLS handshake timed out");
            return;
        }
        Ok(Err(error)) => {
            tracing::info!(%remote, %error, "TLS handshake refused");
            return;
        }
        Ok(Ok(tls)) => tls,
    };
    let (_, session) = tls.get_ref();
    let identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| cert_identity(leaf));
    let Some(identity) = identity else {
        // Unreachable with a mandatory client-certificate verifier; refuse if it ever happens.
        tracing::warn!(%remote, "handshake completed without a client certificate; closing");
        return;
    };
    // A resumed session skips certificate verification; its ticket may be hours old, so the
    // leaf's expiry is checked again here (revocation is handled by fresh ticket keys).
    let now = crate::registry::unix_seconds(std::time::SystemTime::now());
    if identity.not_after < now {
        tracing::info!(%remote, "client certificate expired since its session began; closing");
        return;
    }
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let client = Arc::new(Client {
        identity,
        remote,
        protocol,
    });
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |request| {
        let shared = service_shared.clone();
        let client = client.clone();
        let future: ServiceFuture =
            Box::pin(async move { Ok(respond(&shared, &client, request).await) });
        future
    });
    let io = TokioIo::new(tls);
    let limits = &shared.limits;
    match protocol {
        Protocol::Http1 => serve_http1(io, service, limits, &mut shutdown, remote).await,
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            // HTTP/2 has no header timeout in hyper; pings at least drop peers that vanished,
            // so dead connections do not hold connection slots.
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
                _ = shutdown_requested(&mut shutdown) => {
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
    limits: &ListenerLimits,
    shutdown: &mut watch::Receiver<bool>,
    remote: SocketAddr,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Unpin,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let mut conn = builder.serve_connection(io, service);
    let mut draining = false;
    let result = loop {
        let step = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        if draining {
            break step.await;
        }
        tokio::select! {
            result = step => break result,
            _ = shutdown_requested(shutdown) => {
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
            let _ = tls
                .write_all(
                    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .await;
        }
        Err(error) => tracing::debug!(%remote, %error, "HTTP/1 connection ended with an error"),
        Ok(()) => {}
    }
    // Bounded: a peer that stops reading must not hold the task open.
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

async fn respond(
    shared: &Shared,
    client: &Client,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let handler = &shared.handler;
    let limits = &shared.limits;
    let peer = client.peer(shared);
    let key = match &peer.partner {
        Some(partner) => InFlightKey::Partner(partner.agreement.ods.clone()),
        None => InFlightKey::Certificate(peer.leaf_cert_sha256),
    };
    let Some(_slot) = shared.enter(key) else {
        tracing::info!(remote = %peer.remote, "per-partner concurrency limit reached; 429");
        return handler
            .refusal(StatusCode::TOO_MANY_REQUESTS)
            .map(Full::new);
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max_body = u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX);
    if declared.is_some_and(|length| length > max_body) {
        return handler
            .refusal(StatusCode::PAYLOAD_TOO_LARGE)
            .map(Full::new);
    }
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        limits.body_read_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    let body = match collected {
        Err(_) => return handler.refusal(StatusCode::REQUEST_TIMEOUT).map(Full::new),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return handler
                .refusal(StatusCode::PAYLOAD_TOO_LARGE)
                .map(Full::new)
        }
        Ok(Err(_)) => return handler.refusal(StatusCode::BAD_REQUEST).map(Full::new),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    handler
        .handle(peer, Request::from_parts(parts, body))
        .await
        .map(Full::new)
}
