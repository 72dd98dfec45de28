//! Identity provider and API gateway: validates requests and publishes Avro commands.

use feedline::{CancellationToken, Metrics, Settings};

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "gateway"
[http]
port = 8080

"#;

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new(&settings.service_name);
    feedline::service::serve_ops(&settings, metrics, token).await
}
