//! What every service binary shares: the launch sequence of a thin `main.rs`, and the
//! operational HTTP endpoint.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Loads config (`service_defaults`, then `FEEDLINE_CONFIG`, then `FEEDLINE_*`), starts
/// logging, wires SIGTERM/Ctrl-C to the shutdown root and runs the service until it ends.
pub async fn launch<F, Fut>(service_defaults: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init();
    let settings =
        Settings::load(service_defaults, None).context("failed to load configuration")?;
    let token = CancellationToken::new();
    crate::shutdown::cancel_on_signal(token.clone());
    tracing::info!(service = %settings.service_name, "starting");
    let result = run(settings, token).await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "service stopped with an error");
    }
    result
}

/// Serves `/metrics` and `/health` on the configured address until shutdown.
pub async fn serve_ops(
    settings: &Settings,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let addr = settings.http_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
    crate::http::serve(listener, crate::http::ops_router(metrics), token).await?;
    Ok(())
}
