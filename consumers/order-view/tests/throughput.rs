//! How fast decoded events go into SQLite (apply + one transaction per batch + cache update +
//! publish), without Kafka. Ignored by default; run it in release:
//! `cargo test --release -p feedline-order-view --test throughput -- --ignored --nocapture`
//! (`BATCH=500` for another batch size; the service's default `consumer.batch_max` is 5000).

use std::sync::Arc;
use std::time::Instant;

use feedline::codec::RegistryClient;
use feedline::{CancellationToken, Metrics, Settings};
use feedline_order_view::apply::Event;
use feedline_order_view::cache::Cache;
use feedline_order_view::feed::FeedHub;
use feedline_order_view::handler::{Decoders, ViewHandler};
use feedline_order_view::metrics::ViewMetrics;
use feedline_order_view::store::Store;
use feedline_schemas::types::*;

fn saga(customer: &str, order: &str, n: i64) -> [Event; 3] {
    let order_event = |payload| Event::Order(OrderEvent::new("bench", "c".into(), None, payload));
    [
        order_event(OrderEventPayload::OrderCreated(OrderCreated {
            order_id: order.into(),
            customer_id: customer.into(),
            total_cents: 100,
        })),
        Event::Credit(CreditEvent::new(
            "bench",
            "c".into(),
            None,
            CreditEventPayload::CreditReserved(CreditReserved {
                order_id: order.into(),
                customer_id: customer.into(),
                amount_cents: 100,
                credit_reserved_cents: 100 * n,
                credit_limit_cents: 1 << 40,
            }),
        )),
        order_event(OrderEventPayload::OrderApproved(OrderApproved {
            order_id: order.into(),
            customer_id: customer.into(),
            total_cents: 100,
        })),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it in release"]
async fn events_per_second_into_sqlite() {
    const EVENTS: usize = 300_000;
    let batch_size: usize = std::env::var("BATCH").map_or(5000, |b| b.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_toml(&format!(
        "[database]\nurl = \"sqlite:{}\"\nmax_connections = 4",
        dir.path().join("bench.db").display()
    ))
    .unwrap();
    let store = Store::open(&settings.database).await.unwrap();
    let metrics = ViewMetrics::new(&Metrics::new("bench"));
    let cache = Arc::new(Cache::new(100_000));
    let hub = Arc::new(FeedHub::new(
        store.clone(),
        metrics.clone(),
        16_384,
        1_024,
        CancellationToken::new(),
    ));
    let decoders = Decoders::new(
        Arc::new(RegistryClient::new(&settings.registry)),
        &settings.kafka,
    )
    .unwrap();
    let handler = ViewHandler::new(decoders, store, cache, hub, metrics, 100_000)
        .await
        .unwrap();

    let customers: Vec<String> = (0..10_000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut events = Vec::with_capacity(EVENTS);
    let mut n = 0;
    while events.len() < EVENTS {
        let customer = &customers[n % customers.len()];
        let order = uuid::Uuid::new_v4().to_string();
        events.extend(saga(customer, &order, (n / customers.len()) as i64 + 1));
        n += 1;
    }

    let started = Instant::now();
    let mut changes = 0;
    for batch in events.chunks(batch_size) {
        changes += handler.apply_events(batch).await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{} events ({changes} changes) in batches of {batch_size}, {elapsed:.2?}: {:.0} events/s",
        events.len(),
        events.len() as f64 / elapsed.as_secs_f64()
    );
}
