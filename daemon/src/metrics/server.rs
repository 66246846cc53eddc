//! The metrics listener: plain HTTP/1.1, `GET /metrics` only. No TLS and no client
//! authentication, so it listens on loopback unless the config explicitly allows otherwise
//! (docs/operations.md); it serves counts and dates, never a record or a partner's name.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{render, Gauges, Release};

/// Scrapes served at once; more wait for their turn (a scrape is a few small reads).
const CONCURRENT_SCRAPES: usize = 4;
/// Connections kept open at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 32;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape reads: the gauges (called on a blocking thread) and the running image.
pub struct MetricsHandler {
    pub gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
    pub release: Release,
}

/// The text exposition content type (format version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MetricsHandler {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default()
        };
        if request.uri().path() != "/metrics" {
            return reply(
                StatusCode::NOT_FOUND,
                "only /metrics is served here\n".into(),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
        }
        let gauges = self.gauges.clone();
        match tokio::task::spawn_blocking(move || gauges()).await {
            Ok(gauges) => reply(StatusCode::OK, render(&gauges, &self.release)),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the gauges failed\n".into(),
            ),
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<MetricsHandler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let scrapes = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let handler = handler.clone();
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                let scrapes = scrapes.clone();
                async move {
                    let _turn = scrapes.acquire().await;
                    Ok::<_, std::convert::Infallible>(handler.answer(&request).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}
