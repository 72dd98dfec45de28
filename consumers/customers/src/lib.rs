//! Customer service: owns the customers database and reserves credit.
//!
//! It consumes `customer-commands` (RegisterCustomer, ChangeCreditLimit) and `order-events`
//! (OrderCreated asks for credit, OrderCancelled gives it back) and emits `customer-events`
//! and `credit-events` through its outbox:
//!
//! - [`credit`]: the credit rules, free of I/O
//! - [`handler`]: one batch, one transaction (customers, reservations, outbox,
//!   processed_events)
//! - [`db`]: migrations and the set-based statements
//! - [`metrics`]: business counters

pub mod credit;
pub mod db;
pub mod handler;
pub mod metrics;

use anyhow::Context;
use feedline::service::{Spawned, Startup};
use feedline::transactional::TransactionalHandler;
use feedline::{CancellationToken, Settings};

use crate::handler::Customers;
use crate::metrics::CustomerMetrics;

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "customers"
[http]
port = 8092
[database]
url = "postgres://feedline:feedline@127.0.0.1:5432/customers"
max_connections = 10
"#;

/// The consumer group (with the configured prefix in front).
pub const GROUP: &str = "customers";

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    feedline::service::run(spawn(settings, token)).await
}

/// Does all start-up (database, topics, schemas), binds the ops HTTP port (`http.port`, 0
/// picks a free one) and returns its address with the task running the consumer, the
/// outbox relay and the HTTP server until `token` is cancelled or one of them fails.
pub async fn spawn(settings: Settings, token: CancellationToken) -> anyhow::Result<Spawned> {
    let start = Startup::new(&settings, &token);
    let metrics = CustomerMetrics::new(start.metrics());
    let pool = start.database(db::migrations, db::SETUP_LOCK).await?;
    let kafka = &settings.kafka;
    let contracts = start.contracts().await?;
    let customers = Customers::new(&contracts, kafka, start.producer_name(), metrics)
        .await
        .context("failed to build the customer encoders")?;
    let handler = TransactionalHandler::new(pool, handler::DEDUP_CONSUMER, &contracts, customers)
        .context("failed to build the customer decoders")?;
    start.spawn_transactional(GROUP, handler).await
}
