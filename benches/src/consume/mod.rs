//! `consume`: a topic pre-filled with N encoded events (per order: `OrderCreated`,
//! `CreditReserved`, `OrderApproved`), read four times, each by a fresh consumer group:
//! (0) raw rdkafka, polling and dropping each message (librdkafka alone, no runtime);
//! (a) a no-op handler through the platform's consumer runtime (fetch, batch, offsets);
//! (b) decode + one PostgreSQL transaction per batch: `processed_events` dedup and a
//!     set-based `INSERT .. SELECT FROM unnest(..) ON CONFLICT DO UPDATE` into an orders-like
//!     table, as the order service writes;
//! (c) the real order-view handler (decode, apply, one SQLite transaction per batch, cache,
//!     live-feed publish) on a fresh SQLite file.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::{
    CancellationToken, Consumer, Handler, HandlerError, Metrics, Outcome, Outgoing, Producer,
    Settings,
};
use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, ORDER_EVENTS};
use hdrhistogram::Histogram;
use rdkafka::message::OwnedMessage;
use serde_json::json;

use crate::Load;
use crate::common::{
    self, LATENCY_COLUMNS, Machine, Meter, Percentiles, RunResult, Series, Table, Target,
};
use crate::system;

mod handlers;

use handlers::{Noop, PgHandler, fresh_postgres, view_handler, view_settings};

/// The targets: each handler's rate over the runtime's no-op rate, same run.
const POSTGRES_OVER_NOOP: f64 = 0.15;
const SQLITE_OVER_NOOP: f64 = 0.25;

pub async fn run(settings: &Settings, load: &Load, count: usize) -> anyhow::Result<RunResult> {
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let prefix = format!("bench{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let settings = settings.with_overrides(&format!(
        "[kafka]\ntopic_prefix = \"{prefix}\"\n[consumer]\nbatch_max = 5000\n"
    ))?;
    let registry = system::start_registry(&settings, token.clone()).await?;
    let settings =
        settings.with_overrides(&format!("[registry]\nurl = \"http://{registry}\"\n"))?;
    feedline::admin::Admin::new(&settings.kafka)?
        .ensure_topics(&feedline::contracts::topic_specs(&settings.kafka))
        .await?;
    let client = RegistryClient::new(&settings.registry);
    let orders = count.div_ceil(3);
    let total = prefill(&settings, &client, orders).await?;
    eprintln!(
        "consume: {total} events pre-filled on {prefix}order-events and {prefix}credit-events"
    );

    let topics = vec![
        settings.kafka.name(ORDER_EVENTS),
        settings.kafka.name(CREDIT_EVENTS),
    ];
    let raw = raw_phase(&settings, &topics, total).await?;
    let noop = phase(&settings, "no-op handler", &topics, total, Noop, &token).await?;

    let (pg, db_name, admin) = fresh_postgres(&load.database_url).await?;
    let pg_handler = PgHandler::new(
        pg.clone(),
        Arc::new(RegistryClient::new(&settings.registry)),
    )?;
    let postgres = phase(
        &settings,
        "postgres upsert",
        &topics,
        total,
        pg_handler,
        &token,
    )
    .await;
    pg.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await;
    let postgres = postgres?;

    let file =
        std::env::temp_dir().join(format!("bench-view-{}.db", uuid::Uuid::new_v4().simple()));
    // order-view as it ships (batch size, prefetch, fetch size, caches), so the row says
    // what the service does, not what the bench's own settings would make it do.
    let shipped = view_settings(&settings, &file)?;
    let view = view_handler(&shipped, &token).await?;
    let view_topics = view.topics().to_vec();
    let sqlite = phase(
        &shipped,
        "order-view sqlite",
        &view_topics,
        total,
        view,
        &token,
    )
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    let sqlite = sqlite?;
    token.cancel();
    common::drop_topics(&settings.kafka, &prefix).await;

    let mut result = RunResult::new(
        "consume",
        load.smoke,
        Machine::describe(),
        json!({"events": total, "orders": orders, "partitions": settings.kafka.default_partitions,
               "batch_max": settings.consumer.batch_max, "batch_wait_ms": settings.consumer.batch_wait_ms,
               "order_view": system::effective::describe(&shipped)}),
    );
    let mut columns = vec!["events/s", "ratio to no-op"];
    columns.extend(LATENCY_COLUMNS);
    let mut table = Table::new(
        format!(
            "consume: {total} pre-filled events (3 per order, 2 topics), one consumer, batches up to {} (order-view: its shipped {}); latency = handling one batch",
            settings.consumer.batch_max, shipped.consumer.batch_max
        ),
        &columns,
    );
    let mut raw_row = vec![Some(raw), Some(raw / noop.rate)];
    raw_row.extend([None; LATENCY_COLUMNS.len()]);
    table.row(
        "raw rdkafka: poll and drop each message, no runtime (baseline)",
        raw_row,
    );
    for (name, p) in [
        (
            "no-op handler through the consumer runtime (baseline)",
            &noop,
        ),
        (
            "decode + PostgreSQL: processed_events + unnest upsert, 1 tx/batch",
            &postgres,
        ),
        (
            "decode + order-view's real handler, shipped settings: SQLite, 1 tx/batch, cache, feed",
            &sqlite,
        ),
    ] {
        let mut v = vec![Some(p.rate), Some(p.rate / noop.rate)];
        v.extend(p.batch.cells());
        table.row(name, v);
    }
    result.tables.push(table);
    result.ratios.push((
        "consumer runtime (no-op) / raw rdkafka, events/s".into(),
        noop.rate / raw,
    ));
    result.ratios.push((
        "SQLite (order-view) / raw rdkafka, events/s".into(),
        sqlite.rate / raw,
    ));
    result.ratios.push((
        "PostgreSQL / no-op, events/s".into(),
        postgres.rate / noop.rate,
    ));
    result.ratios.push((
        "SQLite (order-view) / no-op, events/s".into(),
        sqlite.rate / noop.rate,
    ));
    result.targets.push(Target::new(
        "PostgreSQL upserts / no-op handler, events/s",
        POSTGRES_OVER_NOOP,
        postgres.rate / noop.rate,
        "×",
        true,
    ));
    result.targets.push(Target::new(
        "SQLite (order-view, shipped settings) / no-op handler, events/s",
        SQLITE_OVER_NOOP,
        sqlite.rate / noop.rate,
        "×",
        true,
    ));
    result.figures.extend([
        ("no-op events/s".to_owned(), noop.rate),
        ("PostgreSQL events/s".to_owned(), postgres.rate),
        ("SQLite events/s".to_owned(), sqlite.rate),
    ]);
    result.notes.push(format!(
        "Mean batch: no-op {:.0}, PostgreSQL {:.0}, SQLite {:.0} events. Rates are timed from the first batch's hand-over to the handler to the last batch's commit (group join excluded).",
        noop.mean_batch, postgres.mean_batch, sqlite.mean_batch
    ));
    for (name, p) in [
        ("no-op", &noop),
        ("postgres", &postgres),
        ("sqlite", &sqlite),
    ] {
        result.series.push(Series {
            name: format!("{name} events/s"),
            per_second: p.series.clone(),
        });
    }
    Ok(result)
}

/// Produces `orders` × (OrderCreated, CreditReserved, OrderApproved); returns the event count.
async fn prefill(
    settings: &Settings,
    client: &RegistryClient,
    orders: usize,
) -> anyhow::Result<usize> {
    let order_enc =
        feedline::contracts::encoder::<OrderEvent, _>(client, &settings.kafka, ORDER_EVENTS)
            .await?;
    let credit_enc =
        feedline::contracts::encoder::<CreditEvent, _>(client, &settings.kafka, CREDIT_EVENTS)
            .await?;
    let producer = Producer::new(&settings.kafka, Metrics::new("bench-prefill"))?;
    let (order_topic, credit_topic) = (
        settings.kafka.name(ORDER_EVENTS),
        settings.kafka.name(CREDIT_EVENTS),
    );
    let customers: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let meter = Meter::start("prefill");
    let mut pending = Vec::with_capacity(30_000);
    for i in 0..orders {
        let customer = customers[i % customers.len()].clone();
        // As the gateway draws them.
        let order = uuid::Uuid::now_v7().to_string();
        let total = 1_000 + (i % 5_000) as i64;
        let created = OrderEvent::new(
            "orders-bench",
            order.clone(),
            None,
            OrderEventPayload::OrderCreated(OrderCreated {
                order_id: order.clone(),
                customer_id: customer.clone(),
                total_cents: total,
            }),
        );
        let reserved = CreditEvent::new(
            "customers-bench",
            order.clone(),
            Some(created.event_id.clone()),
            CreditEventPayload::CreditReserved(CreditReserved {
                order_id: order.clone(),
                customer_id: customer.clone(),
                amount_cents: total,
                credit_reserved_cents: total,
                credit_limit_cents: 10_000_000,
            }),
        );
        let approved = OrderEvent::new(
            "orders-bench",
            order.clone(),
            Some(reserved.event_id.clone()),
            OrderEventPayload::OrderApproved(OrderApproved {
                order_id: order.clone(),
                customer_id: customer.clone(),
                total_cents: total,
            }),
        );
        for (topic, bytes) in [
            (&order_topic, order_enc.encode(&created)?),
            (&credit_topic, credit_enc.encode(&reserved)?),
            (&order_topic, order_enc.encode(&approved)?),
        ] {
            pending.push(
                producer
                    .enqueue(Outgoing::new(topic, Some(customer.as_bytes()), &bytes))
                    .await?,
            );
        }
        if pending.len() >= 30_000 {
            meter.add(pending.len() as u64);
            for p in pending.drain(..) {
                p.acknowledged().await?;
            }
        }
    }
    meter.add(pending.len() as u64);
    for p in pending {
        p.acknowledged().await?;
    }
    meter.finish();
    Ok(orders * 3)
}

#[derive(Debug)]
struct Phase {
    rate: f64,
    batch: Percentiles,
    mean_batch: f64,
    series: Vec<f64>,
}

/// Shared between a counting wrapper and the phase that waits for it.
#[derive(Debug)]
struct Progress {
    meter: Meter,
    /// When the first batch was handed to the handler, and its size.
    first: Mutex<Option<(Instant, u64)>>,
    last: Mutex<Option<Instant>>,
    batches: Mutex<(Histogram<u64>, u64)>,
    /// What the handler rejected: bench events are all valid, so any is a failed run.
    rejected: Mutex<Option<String>>,
}

struct Counting<H> {
    inner: H,
    progress: Arc<Progress>,
}

impl<H: Handler> Handler for Counting<H> {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let outcome = self.inner.handle(batch).await?;
        let now = Instant::now();
        let p = &self.progress;
        {
            let mut b = p.batches.lock().expect("poisoned");
            common::record(&mut b.0, now - started);
            b.1 += batch.len() as u64;
        }
        p.first
            .lock()
            .expect("poisoned")
            .get_or_insert((started, batch.len() as u64));
        *p.last.lock().expect("poisoned") = Some(now);
        p.meter.add(batch.len() as u64);
        if !outcome.rejected().is_empty() {
            *p.rejected.lock().expect("poisoned") =
                Some(format!("bench events rejected: {:?}", outcome.rejected()));
        }
        Ok(outcome)
    }
}

async fn phase<H: Handler>(
    settings: &Settings,
    name: &str,
    topics: &[String],
    total: usize,
    handler: H,
    token: &CancellationToken,
) -> anyhow::Result<Phase> {
    let progress = Arc::new(Progress {
        meter: Meter::start(name),
        first: Mutex::new(None),
        last: Mutex::new(None),
        batches: Mutex::new((common::histogram(), 0)),
        rejected: Mutex::new(None),
    });
    let metrics = Metrics::new("bench-consume");
    let group = settings
        .kafka
        .name(&format!("bench-{}", uuid::Uuid::new_v4().simple()));
    let consumer = Consumer::new(
        &settings.kafka,
        &settings.consumer,
        &group,
        topics,
        Counting {
            inner: handler,
            progress: progress.clone(),
        },
        Producer::new(&settings.kafka, metrics.clone())?,
        metrics,
    )?;
    let stop = token.child_token();
    let running = tokio::spawn(consumer.run(stop.clone()));
    let deadline = Instant::now() + patience(total);
    while progress.meter.total() < total as u64 {
        anyhow::ensure!(!running.is_finished(), "{name}: the consumer stopped early");
        if let Some(rejected) = progress.rejected.lock().expect("poisoned").take() {
            anyhow::bail!("{name}: {rejected}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: only {} of {total} events consumed",
            progress.meter.total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await?.context("consumer failed")?;
    let series = progress.meter.finish();
    let (first_at, _) = progress
        .first
        .lock()
        .expect("poisoned")
        .context("no batch")?;
    let last = progress
        .last
        .lock()
        .expect("poisoned")
        .context("no batch")?;
    // From the first batch's hand-over to the last batch's commit: the group join and the
    // first fetch are not the handler's throughput.
    let measured = progress.meter.total();
    let elapsed = (last - first_at).max(Duration::from_micros(1));
    let rate = measured as f64 / elapsed.as_secs_f64();
    let b = progress.batches.lock().expect("poisoned");
    let batch = Percentiles::of(&b.0);
    eprintln!(
        "{name}: {measured} events in {:.2} s from the first batch = {rate:.0}/s",
        elapsed.as_secs_f64()
    );
    Ok(Phase {
        rate,
        mean_batch: b.1 as f64 / b.0.len().max(1) as f64,
        batch,
        series,
    })
}

/// librdkafka alone: one `BaseConsumer` polled in a loop on its own thread, every message
/// dropped as it comes (no detach, no batches, no offsets stored). What the runtime's
/// no-op figure is measured against.
async fn raw_phase(settings: &Settings, topics: &[String], total: usize) -> anyhow::Result<f64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let group = settings
        .kafka
        .name(&format!("bench-raw-{}", uuid::Uuid::new_v4().simple()));
    let consumer: BaseConsumer = settings
        .kafka
        .consumer_config(&group, &settings.consumer)
        .set("enable.auto.commit", "false")
        .create()?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let meter = Arc::new(Meter::start("raw rdkafka poll, discard"));
    let count = meter.clone();
    let polled = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Duration)> {
        let deadline = Instant::now() + patience(total);
        let mut first = None;
        let mut n = 0u64;
        while n < total as u64 {
            anyhow::ensure!(Instant::now() < deadline, "raw: only {n} of {total} events");
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_message)) => {
                    first.get_or_insert_with(Instant::now);
                    n += 1;
                    if n.is_multiple_of(1024) {
                        count.add(1024);
                    }
                }
                Some(Err(e)) => anyhow::bail!("raw consumer: {e}"),
                None => {}
            }
        }
        Ok((n, first.map_or(Duration::ZERO, |at| at.elapsed())))
    })
    .await??;
    meter.finish();
    let rate = polled.0 as f64 / polled.1.max(Duration::from_micros(1)).as_secs_f64();
    eprintln!(
        "raw rdkafka poll, discard: {} events = {rate:.0}/s",
        polled.0
    );
    Ok(rate)
}

/// How long a phase may take to consume `total` events before the run fails: a minute,
/// plus a second per 5,000 events.
fn patience(total: usize) -> Duration {
    Duration::from_secs(60 + total as u64 / 5_000)
}
