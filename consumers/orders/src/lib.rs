//! Order service: owns the orders database and drives the order saga.

use feedline::{CancellationToken, Metrics, Settings};

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "orders"
[http]
port = 8091
[database]
url = "postgres://feedline:feedline@127.0.0.1:5432/orders"
max_connections = 10
"#;

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new(&settings.service_name);
    feedline::service::serve_ops(&settings, metrics, token).await
}
