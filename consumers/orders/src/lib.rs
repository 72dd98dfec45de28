//! Order service: owns the orders database and drives the order saga.
//!
//! It consumes `order-commands` (PlaceOrder, CancelOrder) and `credit-events` (the customer
//! service's decisions) and emits `order-events` through its outbox:
//!
//! - [`order`]: the state machine, free of I/O
//! - [`handler`]: one batch, one transaction (orders + outbox + processed_events)
//! - [`db`]: migrations and the set-based statements
//! - [`metrics`]: business counters

pub mod db;
pub mod handler;
pub mod metrics;
pub mod order;

use anyhow::Context;
use feedline::service::{Spawned, Startup};
use feedline::transactional::TransactionalHandler;
use feedline::{CancellationToken, Settings};

use crate::handler::Orders;
use crate::metrics::OrderMetrics;

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "orders"
[http]
port = 8091
[database]
url = "postgres://feedline:feedline@127.0.0.1:5432/orders"
max_connections = 10
"#;

/// The consumer group (with the configured prefix in front).
pub const GROUP: &str = "orders";

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    feedline::service::run(spawn(settings, token)).await
}

/// Does all start-up (database, topics, schemas), binds the ops HTTP port (`http.port`, 0
/// picks a free one) and returns its address with the task running the consumer, the
/// outbox relay and the HTTP server until `token` is cancelled or one of them fails.
pub async fn spawn(settings: Settings, token: CancellationToken) -> anyhow::Result<Spawned> {
    let start = Startup::new(&settings, &token);
    let metrics = OrderMetrics::new(start.metrics());
    let pool = start.database(db::migrations, db::SETUP_LOCK).await?;
    let kafka = &settings.kafka;
    let contracts = start.contracts().await?;
    let orders = Orders::new(&contracts, kafka, start.producer_name(), metrics)
        .await
        .context("failed to build the order encoder")?;
    let handler = TransactionalHandler::new(pool, handler::DEDUP_CONSUMER, &contracts, orders)
        .context("failed to build the order decoders")?;
    start.spawn_transactional(GROUP, handler).await
}
