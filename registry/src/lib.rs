//! Schema registry compatible with the Confluent REST API, storing schemas in Kafka.

use feedline::{CancellationToken, Metrics, Settings};

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "registry"
[http]
port = 8081

"#;

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new(&settings.service_name);
    feedline::service::serve_ops(&settings, metrics, token).await
}
