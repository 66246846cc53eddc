//! The project's load generator: N keep-alive mTLS connections sending one request template as
//! fast as answers come back, for a fixed time; reports rate and latency percentiles. Used by
//! the benchmarks against migd and, with the same bytes, against nginx.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The request every connection repeats.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A client identity and the server to trust.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub requests: u64,
    /// Connections that failed to open (TCP, TLS or HTTP handshake) plus requests that failed
    /// on an open connection; the two kinds are also counted apart below.
    pub errors: u64,
    pub connect_errors: u64,
    pub request_errors: u64,
    /// The first error seen, as text, to tell what the errors were.
    pub first_error: Option<String>,
    pub non_2xx: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(f64::EPSILON)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} req/s ({} requests, {} non-2xx, {} errors in {:.1} s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.1} KB/response",
            self.rate(),
            self.requests,
            self.non_2xx,
            self.errors,
            self.seconds,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.bytes as f64 / self.requests.max(1) as f64 / 1024.0
        )?;
        if let Some(first) = &self.first_error {
            write!(
                f,
                " (errors: {} opening a connection, {} on an open one; first: {first})",
                self.connect_errors, self.request_errors
            )?;
        }
        Ok(())
    }
}

/// Builds a rustls client config presenting the client certificate.
pub fn client_config(tls: &ClientTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("CA PEM: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("client cert PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| format!("client key PEM: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs `connections` keep-alive HTTP/1.1 connections for `duration`.
pub async fn run(
    addr: SocketAddr,
    tls: &ClientTls,
    request: &RequestTemplate,
    connections: usize,
    duration: Duration,
) -> Result<LoadReport, String> {
    run_mix(
        addr,
        tls,
        std::slice::from_ref(request),
        connections,
        duration,
    )
    .await
}

/// Like `run`, with each connection sending `requests` in turn, the connections starting evenly
/// spaced through the list (so no two ask for the same request at about the same time).
pub async fn run_mix(
    addr: SocketAddr,
    tls: &ClientTls,
    requests: &[RequestTemplate],
    connections: usize,
    duration: Duration,
) -> Result<LoadReport, String> {
    if requests.is_empty() {
        return Err("no requests to send".into());
    }
    let requests: Arc<[RequestTemplate]> = requests.into();
    let config = client_config(tls)?;
    let server_name = ServerName::try_from(tls.server_name.clone()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..connections {
        let offset = index * requests.len() / connections.max(1);
        let config = config.clone();
        let server_name = server_name.clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            connection(addr, config, server_name, requests, offset, deadline).await
        }));
    }
    let mut report = LoadReport::default();
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        let (stats, lat) = task.await.map_err(|e| e.to_string())?;
        report.requests += stats.requests;
        report.errors += stats.connect_errors + stats.request_errors;
        report.connect_errors += stats.connect_errors;
        report.request_errors += stats.request_errors;
        report.first_error = report.first_error.or(stats.first_error);
        report.non_2xx += stats.non_2xx;
        report.bytes += stats.bytes;
        latencies.extend(lat);
    }
    report.seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index.min(latencies.len() - 1)] as f64 / 1000.0
    };
    report.p50_ms = percentile(0.50);
    report.p99_ms = percentile(0.99);
    report.max_ms = percentile(1.0);
    Ok(report)
}

impl ConnectionStats {
    fn connect_failed(&mut self, error: String) {
        self.connect_errors += 1;
        self.first_error.get_or_insert(error);
    }

    fn request_failed(&mut self, error: String) {
        self.request_errors += 1;
        self.first_error.get_or_insert(error);
    }
}

#[derive(Default)]
struct ConnectionStats {
    requests: u64,
    connect_errors: u64,
    request_errors: u64,
    first_error: Option<String>,
    non_2xx: u64,
    bytes: u64,
}

async fn connection(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    templates: Arc<[RequestTemplate]>,
    offset: usize,
    deadline: Instant,
) -> (ConnectionStats, Vec<u32>) {
    let mut stats = ConnectionStats::default();
    let mut latencies = Vec::new();
    let mut next = offset;
    while Instant::now() < deadline {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {}", chain(&e)))
            }
            Err(e) => Err(format!("connect: {e}")),
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                stats.connect_failed(e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(io).await {
            Ok(pair) => pair,
            Err(e) => {
                stats.connect_failed(format!("HTTP/1.1 handshake: {}", chain(&e)));
                continue;
            }
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let template = &templates[next % templates.len()];
            next += 1;
            let mut builder = http::Request::builder()
                .method(template.method.clone())
                .uri(&template.path)
                .header("host", server_name.to_str().as_ref());
            for (name, value) in &template.headers {
                builder = builder.header(name, value);
            }
            let Ok(request) = builder.body(Full::new(template.body.clone())) else {
                stats.request_failed("the request template is not a valid request".into());
                return (stats, latencies);
            };
            let sent = Instant::now();
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(e) => {
                    stats.request_failed(format!("sending: {}", chain(&e)));
                    break;
                }
            };
            let status = response.status();
            // A server that means to close says so; the next request then needs a new
            // connection, which is not an error.
            let closing = response
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            match response.into_body().collect().await {
                Ok(body) => {
                    latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    stats.requests += 1;
                    stats.bytes += body.to_bytes().len() as u64;
                    if !status.is_success() {
                        stats.non_2xx += 1;
                    }
                }
                Err(e) => {
                    stats.request_failed(format!("receiving: {}", chain(&e)));
                    break;
                }
            }
            if closing {
                break;
            }
        }
    }
    (stats, latencies)
}

/// One answer from `send_once`, with what the TLS handshake showed.
#[derive(Debug, Clone)]
pub struct OneShot {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The certificate chain the server presented (leaf first).
    pub server_certs: Vec<CertificateDer<'static>>,
}

/// `client_config` offering the given ALPN protocols (e.g. `[b"h2"]`), for tests.
pub fn client_config_with_alpn(
    tls: &ClientTls,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = Arc::unwrap_or_clone(client_config(tls)?);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Opens one TLS connection, sends one request (HTTP/2 if the server chose `h2`, else
/// HTTP/1.1) and reads the whole answer. Any TLS or HTTP failure (a refused client certificate
/// shows as the server's alert here, since in TLS 1.3 the client finishes first) is an `Err`
/// with the error chain as text.
pub async fn send_once(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    request: http::Request<Bytes>,
) -> Result<OneShot, String> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {}", chain(&e)))?;
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let server_certs: Vec<CertificateDer<'static>> = session
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let (parts, body) = request.into_parts();
    let mut request = http::Request::from_parts(parts, Full::new(body));
    let io = hyper_util::rt::TokioIo::new(stream);
    let response = if alpn.as_deref() == Some(b"h2") {
        // HTTP/2 carries the scheme and authority as pseudo-headers: give the URI both.
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        *request.uri_mut() = format!("https://{server_name}{path}")
            .parse()
            .map_err(|e| format!("URI: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {}", chain(&e)))?;
        let conn = tokio::spawn(conn);
        match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => return Err(request_error(&e, conn).await),
        }
    } else {
        if !request.headers().contains_key(http::header::HOST) {
            if let Ok(host) = http::HeaderValue::from_str(server_name) {
                request.headers_mut().insert(http::header::HOST, host);
            }
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake: {}", chain(&e)))?;
        let conn = tokio::spawn(conn);
        match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => return Err(request_error(&e, conn).await),
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {}", chain(&e)))?
        .to_bytes();
    Ok(OneShot {
        status,
        headers,
        body,
        alpn,
        server_certs,
    })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A failed request, with the connection's own error when it has one (a TLS alert from the
/// server shows there, not on the request).
async fn request_error(
    error: &hyper::Error,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
) -> String {
    let connection = match tokio::time::timeout(Duration::from_secs(2), conn).await {
        Ok(Ok(Err(e))) => format!(" (connection: {})", chain(&e)),
        _ => String::new(),
    };
    format!("request: {}{connection}", chain(error))
}

/// Handshakes per second: `concurrency` tasks each connecting, handshaking, sending one small
/// request and closing, for `duration`. With `resume`, each task keeps a session cache so
/// every handshake after its first is a resumption.
pub async fn handshakes(
    addr: SocketAddr,
    tls: &ClientTls,
    path: &str,
    concurrency: usize,
    duration: Duration,
    resume: bool,
) -> Result<(u64, u64, f64), String> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let server_name = ServerName::try_from(tls.server_name.clone()).map_err(|e| e.to_string())?;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut config = (*client_config(tls)?).clone();
        config.resumption = if resume {
            rustls::client::Resumption::in_memory_sessions(16)
        } else {
            rustls::client::Resumption::disabled()
        };
        let config = Arc::new(config);
        let server_name = server_name.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let ok = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(server_name.clone(), tcp)
                        .await
                        .ok()?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .ok()?;
                    tokio::spawn(conn);
                    let request = http::Request::get(path.as_str())
                        .header("host", "localhost")
                        .body(Full::new(Bytes::new()))
                        .ok()?;
                    let response = sender.send_request(request).await.ok()?;
                    response.into_body().collect().await.ok()?;
                    Some(())
                }
                .await;
                match ok {
                    Some(()) => done += 1,
                    None => failed += 1,
                }
            }
            (done, failed)
        }));
    }
    let (mut done, mut failed) = (0, 0);
    for task in tasks {
        let (d, f) = task.await.map_err(|e| e.to_string())?;
        done += d;
        failed += f;
    }
    Ok((done, failed, started.elapsed().as_secs_f64()))
}

/// Sends one request on a fresh connection and returns the body (to copy for nginx, say).
pub async fn fetch(
    addr: SocketAddr,
    tls: &ClientTls,
    template: &RequestTemplate,
) -> Result<Bytes, String> {
    let config = client_config(tls)?;
    let server_name = ServerName::try_from(tls.server_name.clone()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut builder = http::Request::builder()
        .method(template.method.clone())
        .uri(&template.path)
        .header("host", "localhost");
    for (name, value) in &template.headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(template.body.clone()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}
