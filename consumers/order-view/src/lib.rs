//! Order view: the query side, a SQLite read model with a live feed.

use feedline::{CancellationToken, Metrics, Settings};

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "order-view"
[http]
port = 8093
[database]
url = "sqlite:order-view.db"
max_connections = 4
"#;

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new(&settings.service_name);
    feedline::service::serve_ops(&settings, metrics, token).await
}
