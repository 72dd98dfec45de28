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

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::contracts::Contracts;
use feedline::outbox::Outbox;
use feedline::service::{ConsumerService, until_up};
use feedline::{CancellationToken, Health, Metrics, Settings};
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_COMMANDS, CUSTOMER_EVENTS, ORDER_EVENTS};
use tokio::task::JoinHandle;

use crate::handler::{Customers, CustomersHandler, Topics};
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
    let (_addr, task) = spawn(settings, token).await?;
    task.await.context("customers task panicked")?
}

/// Does all start-up (database, topics, schemas), binds the ops HTTP port (`http.port`, 0
/// picks a free one) and returns its address with the task running the consumer, the
/// outbox relay and the HTTP server until `token` is cancelled or one of them fails.
pub async fn spawn(
    settings: Settings,
    token: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let metrics = Metrics::new(&settings.service_name);
    let customer_metrics = CustomerMetrics::new(metrics.registry())
        .context("failed to register the customer metrics")?;
    let kafka = &settings.kafka;

    let pool = until_up("connect to the database", &token, || {
        feedline::db::connect(&settings.database)
    })
    .await
    .context("failed to connect to the customers database")?;
    until_up("prepare the database", &token, || db::prepare(&pool))
        .await
        .context("failed to prepare the customers database")?;
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
    let customers = Customers {
        topics: Topics {
            commands: kafka.name(CUSTOMER_COMMANDS),
            orders: kafka.name(ORDER_EVENTS),
            customer_events: kafka.name(CUSTOMER_EVENTS),
            credit_events: kafka.name(CREDIT_EVENTS),
        },
        commands: contracts.decoder(CUSTOMER_COMMANDS)?,
        orders: contracts.decoder(ORDER_EVENTS)?,
        customer_events: contracts
            .encoder(CUSTOMER_EVENTS)
            .await
            .context("failed to build the customer-events encoder")?,
        credit_events: contracts
            .encoder(CREDIT_EVENTS)
            .await
            .context("failed to build the credit-events encoder")?,
        producer: format!(
            "{}-{}",
            settings.service_name,
            feedline::service::replica_id()
        ),
        metrics: customer_metrics,
    };

    ConsumerService {
        group: kafka.name(GROUP),
        topics: vec![
            customers.topics.commands.clone(),
            customers.topics.orders.clone(),
        ],
        handler: CustomersHandler {
            pool,
            outbox: outbox.clone(),
            dedup_consumer: handler::DEDUP_CONSUMER,
            domain: customers,
        },
        metrics,
        outbox: Some(outbox),
        router: None,
        health: Health::new(),
    }
    .spawn(&settings, token)
    .await
}
