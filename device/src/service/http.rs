//! The HTTP API (axum). Read-only; registration happens through the CLI.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page to look at (`page.html`, self-contained): the stream, a legend of the classes with their colours and areas, frames/s, per-stage latency, health, the last results |
//! | `GET /healthz` | 200 JSON: status, the model's head kind, source state, frame counts (503 when unhealthy: inference failing, the source failed, finished with nothing or stalled) |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `GET /classes` | JSON list of classes (name, exemplars, overlay colour) |
//! | `GET /frame.jpg` | latest overlay JPEG (503 before the first frame) |
//! | `GET /stream.mjpg` | `multipart/x-mixed-replace` MJPEG stream of overlays |
//! | `GET /results` | latest results JSON (503 before the first frame) |
//!
//! Every route but `/healthz` may need a bearer token, and requests for a `Host` that is not
//! allowed are 403 ([`super::access`]). Unknown paths are 404 and other methods 405, both with a
//! JSON error. Malformed requests are
//! answered 400 by hyper before they reach a handler.

use super::access::{guard, Access};
use super::state::{Health, Shared};
use super::worker::FrameOutput;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::watch;

/// The multipart boundary of `/stream.mjpg`.
pub const BOUNDARY: &str = "mceframe";

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub latest: watch::Receiver<Option<Arc<FrameOutput>>>,
}

/// The service's routes, behind the access rules ([`Access`]: Host check, token).
pub fn router(state: AppState, access: Arc<Access>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/classes", get(classes))
        .route("/frame.jpg", get(frame_jpg))
        .route("/stream.mjpg", get(stream_mjpg))
        .route("/results", get(results))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(access, guard))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}; try /, /healthz, /metrics, /classes, /frame.jpg, /stream.mjpg, /results",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}: the API is read-only (GET)",
            uri.path()
        ),
    );
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET,HEAD"));
    r
}

/// The page at `/`, compiled into the binary.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        axum::response::Html(PAGE),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let sh = &s.shared;
    let m = &sh.metrics;
    let source = sh.source_status();
    let healthy = sh.inference_healthy();
    let health = sh.health();
    let last = s.latest.borrow().as_ref().map(|o| o.results.frame.index);
    let body = json!({
        "status": health,
        "uptime_s": sh.started.elapsed().as_secs_f64(),
        "model_trained": sh.model_trained,
        "model_head": sh.model_head,
        "inference_healthy": healthy,
        "source": source,
        "frames": {
            "in": m.frames_in.get(),
            "processed": m.frames_out.get(),
            "dropped": m.frames_dropped.get(),
            "corrupt": m.frames_corrupt.get(),
            "inference_errors": m.inference_errors.get(),
            "last_index": last,
        },
        "classes": sh.classes().len(),
    });
    let code = match health {
        Health::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        Health::Ok | Health::Degraded => StatusCode::OK,
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.shared.metrics.encode(),
    )
        .into_response()
}

async fn classes(State(s): State<AppState>) -> Response {
    Json(json!({ "classes": s.shared.classes() })).into_response()
}

fn no_frame_yet() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no frame processed yet; see /healthz for the source state",
    )
}

async fn frame_jpg(State(s): State<AppState>) -> Response {
    let latest = s.latest.borrow().clone();
    match latest {
        Some(out) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            out.jpeg.clone(),
        )
            .into_response(),
        None => no_frame_yet(),
    }
}

async fn results(State(s): State<AppState>) -> Response {
    let latest = s.latest.borrow().clone();
    match latest {
        Some(out) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            out.results_json.clone(),
        )
            .into_response(),
        None => no_frame_yet(),
    }
}

/// One multipart part holding a JPEG.
pub fn mjpeg_part(jpeg: &[u8]) -> Bytes {
    let mut part = format!(
        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    )
    .into_bytes();
    part.extend_from_slice(jpeg);
    part.extend_from_slice(b"\r\n");
    Bytes::from(part)
}

async fn stream_mjpg(State(s): State<AppState>) -> Response {
    let stream =
        futures_util::stream::unfold((s.latest.clone(), true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let out = loop {
                if let Some(o) = rx.borrow_and_update().clone() {
                    break o;
                }
                rx.changed().await.ok()?;
            };
            Some((Ok::<_, Infallible>(mjpeg_part(&out.jpeg)), (rx, false)))
        });
    (
        [
            (
                header::CONTENT_TYPE,
                format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
