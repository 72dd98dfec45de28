//! A span per HTTP request: it continues the caller's trace (`traceparent`), or starts one,
//! and the response names it in `traceparent` and `x-trace-id`, so a user can open the trace
//! of what they just did.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::{TraceContextExt, TraceState};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{TRACEPARENT, TRACESTATE, Traceparent, remote_parent};

/// The response header with the request's trace id alone (what a trace UI searches by).
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Probes and scrapes: a span each would bury the requests worth a look.
fn is_operational(path: &str) -> bool {
    path == "/metrics" || path == "/health" || path.starts_with("/health/")
}

/// Middleware (`axum::middleware::from_fn(trace_request)`): runs the request in its span.
/// A handler names the request's correlation id with
/// [`super::record_correlation_id`].
pub async fn trace_request(request: Request, next: Next) -> Response {
    if is_operational(request.uri().path()) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        target: "feedline::http",
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        correlation_id = Empty,
    );
    let headers = request.headers();
    let state = headers
        .get(TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<TraceState>().ok())
        .unwrap_or(TraceState::NONE);
    if let Some(cx) = headers
        .get(TRACEPARENT)
        .and_then(|v| Traceparent::parse(v.as_bytes()))
        .and_then(|tp| tp.span_context(state))
    {
        let _ = span.set_parent(remote_parent(cx));
    }
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let cx = span.context();
    let otel_span = cx.span();
    let sc = otel_span.span_context();
    if let Some(tp) = Traceparent::of(sc) {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_bytes(tp.as_bytes()) {
            headers.insert(TRACEPARENT, value);
        }
        if let Ok(value) = HeaderValue::from_str(&sc.trace_id().to_string()) {
            headers.insert(TRACE_ID_HEADER, value);
        }
    }
    response
}
