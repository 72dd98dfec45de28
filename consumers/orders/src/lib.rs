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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use feedline::admin::Admin;
use feedline::codec::{AvroDecoder, RegistryClient};
use feedline::outbox::OutboxRelay;
use feedline::{CancellationToken, Consumer, Metrics, Producer, Settings, TaskGroup};
use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS, ORDER_EVENTS, envelope_schema};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::handler::{OrdersHandler, Topics};
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

    let pool = feedline::db::connect(&settings.database)
        .await
        .context("failed to connect to the orders database")?;
    db::prepare(&pool)
        .await
        .context("failed to prepare the orders database")?;

    Admin::new(kafka)
        .context("failed to create the kafka admin client")?
        .ensure_topics(&feedline_schemas::topic_specs(kafka))
        .await
        .context("failed to create the topics")?;

    let registry = Arc::new(RegistryClient::new(&settings.registry));
    let ids = feedline_schemas::register_all(&*registry, kafka)
        .await
        .context("failed to register the schemas")?;
    let handler = OrdersHandler {
        pool: pool.clone(),
        topics: Topics {
            commands: kafka.name(ORDER_COMMANDS),
            credit: kafka.name(CREDIT_EVENTS),
            events: kafka.name(ORDER_EVENTS),
        },
        commands: decoder(&registry, &ids, ORDER_COMMANDS)?,
        credit: decoder(&registry, &ids, CREDIT_EVENTS)?,
        encoder: feedline_schemas::encoder(&*registry, kafka, ORDER_EVENTS)
            .await
            .context("failed to build the order-events encoder")?,
        producer: format!("{}-{}", settings.service_name, replica_id()),
        metrics: order_metrics,
    };
    let consumed = [
        handler.topics.commands.clone(),
        handler.topics.credit.clone(),
    ];

    let producer =
        Producer::new(kafka, metrics.clone()).context("failed to create the kafka producer")?;
    let consumer = Consumer::new(
        kafka,
        &settings.consumer,
        &kafka.name(GROUP),
        &consumed,
        handler,
        producer.clone(),
        metrics.clone(),
    )
    .context("failed to create the kafka consumer")?;
    let relay = OutboxRelay::new(pool, producer, metrics.clone());

    let addr = settings.http_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    let addr = listener.local_addr()?;

    let mut tasks = TaskGroup::new(token.clone());
    let consumer_token = token.clone();
    tasks.spawn("consumer", async move {
        consumer
            .run(consumer_token)
            .await
            .context("order consumer failed")
    });
    tasks.spawn("outbox-relay", relay.run(token.clone()));
    let router = feedline::http::ops_router(metrics);
    tasks.spawn("http", async move {
        feedline::http::serve(listener, router, token)
            .await
            .context("http server failed")
    });
    tracing::info!(%addr, "order service running");
    // The consumer may take its drain timeout to finish a batch, then commits and leaves.
    let drain = settings.consumer.drain_timeout() + Duration::from_secs(5);
    Ok((addr, tokio::spawn(tasks.join(drain))))
}

/// A decoder of `topic`'s envelope (unprefixed name); data written with the registered
/// reader schema takes the direct path.
fn decoder<T: DeserializeOwned>(
    registry: &Arc<RegistryClient>,
    ids: &HashMap<&'static str, u32>,
    topic: &str,
) -> anyhow::Result<AvroDecoder<T, RegistryClient>> {
    let schema = envelope_schema(topic).with_context(|| format!("no contract for {topic}"))?;
    AvroDecoder::new(registry.clone(), schema, ids.get(topic).copied())
        .with_context(|| format!("failed to build the {topic} decoder"))
}

/// A random id per process, so events name the replica that produced them.
fn replica_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}
