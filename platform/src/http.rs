//! The operational HTTP surface every service shares: `/metrics`, `/health/live`,
//! `/health/ready` and `/health` (readiness).

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Report};
use crate::metrics::Metrics;

pub fn ops_router(metrics: Arc<Metrics>, health: Health) -> Router {
    let ready = {
        let health = health.clone();
        move || {
            let health = health.clone();
            async move { answer(health.ready().await) }
        }
    };
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/health", get(ready.clone()))
        .route("/health/ready", get(ready))
        .route(
            "/health/live",
            get(move || {
                let report = health.live();
                async move { answer(report) }
            }),
        )
}

/// 200 with the report, or 503 when a check failed (what probes and load balancers act on).
fn answer(report: Report) -> axum::response::Response {
    let status = if report.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// Serves `router` until `token` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}
