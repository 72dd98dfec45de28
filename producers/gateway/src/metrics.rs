//! The gateway's own metrics, registered beside the platform's in the service's Prometheus
//! registry (so they render on `/metrics` as `feedline_gateway_*`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use feedline::Metrics;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge};

#[derive(Debug)]
pub struct GatewayMetrics {
    /// Requests by route template (`/orders/{id}`, or `unmatched`), method and status.
    pub requests: IntCounterVec,
    /// Time to the response head (for the live feed: until the stream started).
    pub request_seconds: HistogramVec,
    /// Commands the broker acknowledged, by command.
    pub commands_published: IntCounterVec,
    /// Commands that could not be published, by command.
    pub command_failures: IntCounterVec,
    /// Access tokens issued, by client.
    pub tokens_issued: IntCounterVec,
    /// Token requests refused (`invalid_client`, `invalid_scope`, ...) and API requests
    /// refused (`missing`, `malformed`, `bad_signature`, `expired`, `insufficient_scope`).
    pub auth_failures: IntCounterVec,
    /// `?wait=` outcomes: `completed`, `timeout`, `shutdown`.
    pub wait_outcomes: IntCounterVec,
    /// Calls to order-view that failed: `unreachable`, `timeout`, `server_error` (it answered
    /// with a 5xx that is not a 503 with `Retry-After`).
    pub upstream_errors: IntCounterVec,
    /// Requests to order-view sent again to another replica, by the replica that failed.
    pub upstream_retries: IntCounterVec,
    /// Attempts on an order-view replica that failed (`unreachable`, `timeout`,
    /// `server_error`), by replica, whether or not a retry saved the request.
    pub upstream_attempt_failures: IntCounterVec,
    /// order-view replicas set aside after failures in a row, by replica.
    pub upstream_ejections: IntCounterVec,
    /// order-view replicas the gateway balances over now.
    pub upstream_replicas: IntGauge,
    /// Of those, the ones ejected now.
    pub upstream_ejected: IntGauge,
    /// Keyed requests that were not answered afresh: `replayed`, `reused` (a different
    /// request under a used key), `in_flight`, `malformed`.
    pub idempotency: IntCounterVec,
    /// Messages the watched consumer groups have yet to consume (see [`crate::admission`]).
    pub backlog: IntGauge,
    /// Commands answered 503 because the backlog was over the limit.
    pub commands_refused: IntCounter,
    /// How long commands admitted after a hold waited for the backlog to fall.
    pub admission_held_seconds: Histogram,
    /// Requests refused with 429 by a token bucket: `token_client`, `token_ip`,
    /// `api_client`, `api_ip`.
    pub rate_limited: IntCounterVec,
    /// Live feeds open now.
    pub feed_streams: IntGauge,
    /// Requests waiting for a command's outcome now.
    pub waiters: IntGauge,
    /// Requests refused (or not held) because the waiter cap was reached.
    pub waits_refused: IntCounter,
    /// Subscriptions the waiters opened to order-view's feed (one serves them all).
    pub wait_feed_connections: IntCounter,
    /// Requests answered 503 because they took longer than the request timeout.
    pub request_timeouts: IntCounter,
    /// Connections closed because the client took nothing for the write timeout.
    pub write_timeouts: IntCounter,
}

const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl GatewayMetrics {
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        let r = metrics.register();
        Arc::new(GatewayMetrics {
            requests: r.counters(
                "gateway_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            request_seconds: r.histograms(
                "gateway_request_seconds",
                "time from request to response head",
                &["route"],
                BUCKETS,
            ),
            commands_published: r.counters(
                "gateway_commands_published_total",
                "commands acknowledged by the broker",
                &["command"],
            ),
            command_failures: r.counters(
                "gateway_command_failures_total",
                "commands not accepted because the broker did not acknowledge them",
                &["command"],
            ),
            tokens_issued: r.counters(
                "gateway_tokens_issued_total",
                "access tokens issued",
                &["client"],
            ),
            auth_failures: r.counters(
                "gateway_auth_failures_total",
                "refused token requests and refused API requests, by reason",
                &["reason"],
            ),
            wait_outcomes: r.counters(
                "gateway_wait_outcomes_total",
                "requests that waited for a final state, by outcome",
                &["outcome"],
            ),
            upstream_errors: r.counters(
                "gateway_upstream_errors_total",
                "failed calls to order-view, by kind",
                &["kind"],
            ),
            upstream_retries: r.counters(
                "gateway_upstream_retries_total",
                "requests to order-view retried on another replica, by the replica that failed",
                &["replica"],
            ),
            upstream_attempt_failures: r.counters(
                "gateway_upstream_attempt_failures_total",
                "failed attempts on an order-view replica, by replica and kind",
                &["replica", "kind"],
            ),
            upstream_ejections: r.counters(
                "gateway_upstream_ejections_total",
                "order-view replicas ejected after failures in a row, by replica",
                &["replica"],
            ),
            upstream_replicas: r.gauge(
                "gateway_upstream_replicas",
                "order-view replicas the gateway balances over",
            ),
            upstream_ejected: r.gauge(
                "gateway_upstream_ejected",
                "order-view replicas set aside now after failures in a row",
            ),
            idempotency: r.counters(
                "gateway_idempotency_total",
                "requests with an Idempotency-Key answered from an earlier request, or refused",
                &["outcome"],
            ),
            backlog: r.gauge(
                "gateway_backlog_messages",
                "messages the watched consumer groups have yet to consume",
            ),
            commands_refused: r.counter(
                "gateway_commands_refused_total",
                "commands refused with 503 because the services were too far behind",
            ),
            admission_held_seconds: r.histogram(
                "gateway_admission_held_seconds",
                "time commands waited for the backlog to fall before they were admitted",
                BUCKETS,
            ),
            rate_limited: r.counters(
                "gateway_rate_limited_total",
                "requests refused with 429 by a rate limit, by limit",
                &["limit"],
            ),
            feed_streams: r.gauge("gateway_feed_streams", "live feeds open now"),
            waiters: r.gauge(
                "gateway_waiters",
                "requests waiting for a command's outcome now",
            ),
            waits_refused: r.counter(
                "gateway_waits_refused_total",
                "requests refused or not held because too many were waiting",
            ),
            wait_feed_connections: r.counter(
                "gateway_wait_feed_connections_total",
                "subscriptions to order-view's feed opened for the waiters",
            ),
            request_timeouts: r.counter(
                "gateway_request_timeouts_total",
                "requests answered 503 because they took too long",
            ),
            write_timeouts: r.counter(
                "gateway_write_timeouts_total",
                "connections closed because the client stopped reading",
            ),
        })
    }
}

/// Middleware: counts and times every request under its route template, so ids in paths
/// never become label values.
pub async fn track(
    State(metrics): State<Arc<GatewayMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only the standard methods as label values: a client can invent any number of others.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[&route, method, response.status().as_str()])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    response
}
