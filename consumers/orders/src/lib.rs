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

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::contracts::Contracts;
use feedline::outbox::Outbox;
use feedline::service::{ConsumerService, until_up};
use feedline::{CancellationToken, Health, Metrics, Settings};
use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS, ORDER_EVENTS};
use tokio::task::JoinHandle;

use crate::handler::{Orders, OrdersHandler, Topics};
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
    let (_addr, task) = spawn(settings, token).await?;
    task.await.context("orders task panicked")?
}

/// Does all start-up (database, topics, schemas), binds the ops HTTP port (`http.port`, 0
/// picks a free one) and returns its address with the task running the consumer, the
/// outbox relay and the HTTP server until `token` is cancelled or one of them fails.
pub async fn spawn(
    settings: Settings,
    token: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let metrics = Metrics::new(&settings.service_name);
    let order_metrics =
        OrderMetrics::new(metrics.registry()).context("failed to register the order metrics")?;
    let kafka = &settings.kafka;

    let pool = until_up("connect to the database", &token, || {
        feedline::db::connect(&settings.database)
    })
    .await
    .context("failed to connect to the orders database")?;
    until_up("prepare the database", &token, || db::prepare(&pool))
        .await
        .context("failed to prepare the orders database")?;
    // Forgets applied event ids after dedup.retention_hours, until the service stops.
    feedline::dedup::spawn_pruner(
        pool.clone(),
        &settings.dedup,
        metrics.clone(),
        token.clone(),
    );

    until_up("create the topics", &token, || {
        feedline::contracts::ensure_topics(kafka)
    })
    .await
    .context("failed to create the topics")?;

    let registry = Arc::new(RegistryClient::new(&settings.registry));
    let contracts = until_up("register the schemas", &token, || {
        Contracts::register(registry.clone(), kafka)
    })
    .await
    .context("failed to register the schemas")?;
    let outbox = Outbox::new(pool.clone());
    let orders = Orders {
        topics: Topics {
            commands: kafka.name(ORDER_COMMANDS),
            credit: kafka.name(CREDIT_EVENTS),
            events: kafka.name(ORDER_EVENTS),
        },
        commands: contracts.decoder(ORDER_COMMANDS)?,
        credit: contracts.decoder(CREDIT_EVENTS)?,
        encoder: contracts
            .encoder(ORDER_EVENTS)
            .await
            .context("failed to build the order-events encoder")?,
        producer: format!(
            "{}-{}",
            settings.service_name,
            feedline::service::replica_id()
        ),
        metrics: order_metrics,
    };

    ConsumerService {
        group: kafka.name(GROUP),
        topics: vec![orders.topics.commands.clone(), orders.topics.credit.clone()],
        handler: OrdersHandler {
            pool,
            outbox: outbox.clone(),
            dedup_consumer: handler::DEDUP_CONSUMER,
            domain: orders,
        },
        metrics,
        outbox: Some(outbox),
        router: None,
        health: Health::new(),
    }
    .spawn(&settings, token)
    .await
}
