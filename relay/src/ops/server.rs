//! The operations server: `GET /metrics` and `GET /health` over HTTP/1.1 on a listener of its
//! own, an axum router served connection by connection through hyper so that each connection
//! gets a bounded request head, a deadline and a place under a cap.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Whether the relay is serving, asked on every `GET /health`.
pub type Health = Arc<dyn Fn() -> bool + Send + Sync>;

/// Most bytes of a request head read before it is refused with 431 (hyper's smallest buffer).
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may last in all: its request, and taking the response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// After the response, how long unread input is drained so that closing does not reset the
/// connection before the client has read the response.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes drained after the response.
const LINGER_BYTES: usize = 64 * 1024;

/// Most connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;

/// How long connections still being served get once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The media type of `/metrics`: the OpenMetrics text format.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the handlers share.
#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
}

async fn metrics(State(ops): State<Ops>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        ops.metrics.render(),
    )
        .into_response()
}

async fn health(State(ops): State<Ops>) -> (StatusCode, &'static str) {
    if ops.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if (ops.health)() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// Nothing the server answers is to be cached.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The routes: `GET` (and so `HEAD`) on `/metrics` and `/health`, 405 with `Allow` for other
/// methods on them, 404 elsewhere.
fn router(ops: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(axum::middleware::map_response(no_store))
        .with_state(ops)
}

/// Serves one connection: one request (no keep-alive), then a short drain of what the client
/// may still send, all within [`CONNECTION_TIMEOUT`].
async fn answer(mut stream: TcpStream, app: Router) {
    let served = tokio::time::timeout(CONNECTION_TIMEOUT, async {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT)
            .max_buf_size(MAX_REQUEST_HEAD)
            .keep_alive(false);
        let result = http
            .serve_connection(TokioIo::new(&mut stream), TowerToHyperService::new(app))
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "operations connection failed");
        }
        let _ = stream.shutdown().await;
    })
    .await;
    if served.is_err() {
        tracing::debug!("operations connection timed out");
        return;
    }
    // Drain what the client may still send, so that closing with unread input does not reset
    // the connection before the response is read.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Serves `GET /metrics` (200, OpenMetrics text) and `GET /health` (200 `ok` while `health()`
/// is true, else 503 `unhealthy`; 503 `draining` once shutdown is asked for) on `listener`.
/// Other methods on those paths get 405 with `Allow: GET,HEAD`, other paths 404; `HEAD` is
/// answered like `GET` without a body. A malformed request gets 400, a request head over 8 KiB
/// 431, and a client that does not send its head within 5 s is disconnected. Each connection
/// carries one request; at most a fixed number are served at once, and further ones are closed
/// unanswered.
///
/// Returns once `shutdown` is cancelled, after giving connections being served a short grace.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
) {
    let app = router(Ops {
        metrics,
        health,
        shutdown: shutdown.clone(),
    });
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!("operations connection refused: too many open");
                        drop(stream);
                        continue;
                    }
                    connections.spawn(answer(stream, app.clone()));
                }
                Err(error) => {
                    // Typically out of file descriptors: pause instead of spinning.
                    tracing::warn!(%error, "operations accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}
