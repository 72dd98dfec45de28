//! Outbox relay and dedup against the real broker and PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use feedline::consumer::{Handler, HandlerError, Outcome};
use feedline::outbox::{self, Outbox, OutboxMessage, OutboxRelay};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::Instrument;

/// Applies each event to `applied` (no unique constraint, so a double effect shows) behind
/// the `processed_events` dedup, all in one transaction.
#[derive(Clone)]
struct Ledger {
    pool: PgPool,
    handled: Arc<AtomicUsize>,
    /// When set, the handler stalls after its first commit so the test can kill it there.
    stall_after_commit: Option<Arc<Notify>>,
    stalled: Arc<AtomicBool>,
}

impl Ledger {
    async fn new(pool: PgPool) -> Self {
        sqlx::query("CREATE TABLE IF NOT EXISTS applied (event_id TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        Ledger {
            pool,
            handled: Arc::default(),
            stall_after_commit: None,
            stalled: Arc::default(),
        }
    }
}

impl Handler for Ledger {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let ids: Vec<String> = batch
            .iter()
            .map(|m| header(m, "event-id").expect("event-id header").to_owned())
            .collect();
        let mut tx = self.pool.begin().await.map_err(HandlerError::classified)?;
        let fresh = feedline::dedup::first_time(&mut tx, "ledger", &ids)
            .await
            .map_err(HandlerError::classified)?;
        let new: Vec<&String> = ids
            .iter()
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|(id, _)| id)
            .collect();
        sqlx::query("INSERT INTO applied (event_id) SELECT unnest($1::text[])")
            .bind(&new)
            .execute(&mut *tx)
            .await
            .map_err(HandlerError::classified)?;
        tx.commit().await.map_err(HandlerError::classified)?;
        self.handled.fetch_add(batch.len(), Ordering::SeqCst);
        if let Some(notify) = &self.stall_after_commit
            && !self.stalled.swap(true, Ordering::SeqCst)
        {
            notify.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(Outcome::ok())
    }
}

async fn applied(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM applied")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_after_its_commit_redelivers_and_dedup_applies_once() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("ledger", 2).await;
    for i in 0..300 {
        let id = format!("e{i}");
        ctx.produce(
            &topic,
            &format!("k{}", i % 5),
            b"x",
            &[("event-id", id.as_bytes())],
        )
        .await;
    }
    let mut first = Ledger::new(pool.clone()).await;
    let stalled = Arc::new(Notify::new());
    first.stall_after_commit = Some(stalled.clone());
    let (_token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), first.clone());
    tokio::time::timeout(Duration::from_secs(30), stalled.notified())
        .await
        .unwrap();
    // Killed between the database commit and the offset store: no graceful anything.
    task.abort();
    let _ = task.await;
    let committed_by_first = first.handled.load(Ordering::SeqCst);
    assert!(committed_by_first > 0);

    let second = Ledger::new(pool.clone()).await;
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), second.clone());
    eventually("every event applied", PATIENCE, async || {
        applied(&pool).await.1 >= 300
    })
    .await;
    token.cancel();
    task.await.unwrap().unwrap();

    let (rows, distinct) = applied(&pool).await;
    assert_eq!(
        (rows, distinct),
        (300, 300),
        "every event applied exactly once"
    );
    let redelivered =
        first.handled.load(Ordering::SeqCst) + second.handled.load(Ordering::SeqCst) - 300;
    assert!(
        redelivered > 0,
        "the killed batch was delivered again (and absorbed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_committed_rows_in_order_and_deletes_them() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("outbox", 3).await;
    let keys = ["a", "b", "c"];
    // Several transactions of several rows, and one that rolls back.
    for chunk in 0..10 {
        let mut tx = pool.begin().await.unwrap();
        let msgs: Vec<_> = (chunk * 10..chunk * 10 + 10)
            .map(|i| message(&topic, keys[i % 3], i))
            .collect();
        outbox::enqueue(&mut tx, &msgs).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &[message(&topic, "a", 999)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let relay = OutboxRelay::new(pool.clone(), ctx.producer.clone(), ctx.metrics.clone());
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let published = ctx.read_all(&topic, 100).await;
    token.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(published.len(), 100, "committed rows only, each once");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for m in &published {
        let (key, i) = text(m)
            .split_once(':')
            .map(|(k, i)| (k.to_owned(), i.parse().unwrap()))
            .unwrap();
        assert_eq!(m.key(), Some(key.as_bytes()));
        assert_eq!(header(m, "event-id"), Some(format!("ev{i}").as_str()));
        per_key.entry(key).or_default().push(i);
    }
    for (key, order) in per_key {
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "order of {key} kept: {order:?}"
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "acknowledged rows deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_restarted_between_publish_and_delete_duplicates_and_dedup_absorbs_them() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("dup", 1).await;
    let mut tx = pool.begin().await.unwrap();
    let msgs: Vec<_> = (0..10).map(|i| message(&topic, "k", i)).collect();
    outbox::enqueue(&mut tx, &msgs).await.unwrap();
    tx.commit().await.unwrap();

    // The first relay publishes and "crashes" before deleting.
    let crashed = OutboxRelay::new(pool.clone(), ctx.producer.clone(), ctx.metrics.clone());
    let published = crashed.publish_batch().await;
    assert!(published.error.is_none());
    assert_eq!(published.acked.len(), 10);
    drop(crashed);

    let relay = OutboxRelay::new(pool.clone(), ctx.producer.clone(), ctx.metrics.clone());
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let on_topic = ctx.read_all(&topic, 20).await;
    assert_eq!(
        on_topic.len(),
        20,
        "the restart published every row a second time"
    );

    let ledger = Ledger::new(pool.clone()).await;
    let (consumer_token, consumer) =
        ctx.spawn_consumer("g", std::slice::from_ref(&topic), ledger.clone());
    eventually("20 deliveries", PATIENCE, async || {
        ledger.handled.load(Ordering::SeqCst) >= 20
    })
    .await;
    consumer_token.cancel();
    consumer.await.unwrap().unwrap();
    token.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        applied(&pool).await,
        (10, 10),
        "duplicates absorbed by processed_events"
    );
}

/// Commits `msgs` in one transaction through `outbox`; returns what to hand over.
async fn commit(outbox: &Outbox, msgs: Vec<OutboxMessage>) -> outbox::Enqueued {
    let mut tx = outbox.pool().begin().await.unwrap();
    let enqueued = outbox.enqueue(&mut tx, msgs).await.unwrap();
    tx.commit().await.unwrap();
    enqueued
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The payloads per key, in the order they are on the topic.
fn per_key(published: &[OwnedMessage]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in published {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        out.entry(key).or_default().push(text(m));
    }
    out
}

/// Starts a relay that never polls the table on its own (only at activation, on NOTIFY or
/// after a dropped hand-off), and waits until it is active.
async fn active_relay(
    ctx: &TestCtx,
    outbox: &Outbox,
) -> (
    feedline::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let relay = outbox
        .relay(ctx.producer.clone(), ctx.metrics.clone())
        .idle_poll(Duration::from_secs(3600));
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let handle = outbox.clone();
    // Active once it has read the table: what the test commits next reaches it one way only.
    eventually(
        "the relay to take the lock and read the table",
        PATIENCE,
        async || handle.is_active(),
    )
    .await;
    (token, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_off_rows_are_published_from_memory_and_deleted_after_the_ack() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("handoff", 3).await;
    let outbox = Outbox::new(pool.clone());
    let (token, running) = active_relay(&ctx, &outbox).await;

    let keys = ["a", "b", "c"];
    for chunk in 0..20 {
        let msgs: Vec<_> = (chunk * 5..chunk * 5 + 5)
            .map(|i| message(&topic, keys[i % 3], i))
            .collect();
        let enqueued = commit(&outbox, msgs).await;
        // Had the relay read the table (NOTIFY, poll), it would publish this instead.
        sqlx::query("UPDATE outbox SET payload = 'read from the table'")
            .execute(&pool)
            .await
            .unwrap();
        outbox.committed(enqueued);
    }
    let published = ctx.read_all(&topic, 100).await;
    assert_eq!(published.len(), 100, "each row once");
    for (key, payloads) in per_key(&published) {
        let order: Vec<usize> = payloads
            .iter()
            .map(|p| {
                let (k, i) = p.split_once(':').expect("the handed-off bytes");
                assert_eq!(k, key);
                i.parse().unwrap()
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "order of {key} kept: {order:?}"
        );
    }
    eventually("the published rows deleted", PATIENCE, async || {
        outbox_rows(&pool).await == 0
    })
    .await;
    token.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_whose_hand_off_was_lost_go_first_and_later_ones_follow_them() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("lost", 1).await;
    let outbox = Outbox::new(pool.clone());
    let (token, running) = active_relay(&ctx, &outbox).await;

    // Committed, then the handler's future is dropped before the hand-off (a drain
    // timeout, a panic): no NOTIFY was sent, the relay is active and does not poll.
    let lost = commit(&outbox, (0..5).map(|i| message(&topic, "k", i)).collect()).await;
    drop(lost);
    let next = commit(&outbox, (5..10).map(|i| message(&topic, "k", i)).collect()).await;
    outbox.committed(next);

    let published = ctx.read_all(&topic, 10).await;
    let order: Vec<String> = published.iter().map(text).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("k:{i}")).collect();
    assert_eq!(order, expected, "every row once, the lost ones first");
    token.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lock_holder_publishes_and_a_standby_takes_over() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("replicas", 3).await;
    // Two replicas of a service on one database, each with its relay.
    let first = Outbox::new(pool.clone());
    let (first_token, first_running) = active_relay(&ctx, &first).await;
    let second = Outbox::new(pool.clone());
    let relay = second
        .relay(ctx.producer.clone(), ctx.metrics.clone())
        .idle_poll(Duration::from_secs(3600));
    let second_token = feedline::CancellationToken::new();
    let second_running = tokio::spawn(relay.run(second_token.clone()));
    // Time passing is the subject: the standby retries the lock each second, and over
    // more than one retry it still does not get it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!second.is_active(), "one relay per database");

    // Both replicas' handlers commit: the standby's rows reach the active relay by NOTIFY.
    for i in 0..10 {
        let outbox = if i % 2 == 0 { &first } else { &second };
        let enqueued = commit(outbox, vec![message(&topic, "k", i)]).await;
        outbox.committed(enqueued);
    }
    assert_eq!(ctx.read_all(&topic, 10).await.len(), 10, "each row once");

    // The active replica stops; the standby takes the lock and publishes its own rows.
    first_token.cancel();
    first_running.await.unwrap().unwrap();
    drop(first);
    let handle = second.clone();
    eventually("the standby to take over", PATIENCE, async || {
        handle.is_active()
    })
    .await;
    for i in 10..15 {
        let enqueued = commit(&second, vec![message(&topic, "k", i)]).await;
        second.committed(enqueued);
    }
    let published = ctx.read_all(&topic, 15).await;
    assert_eq!(published.len(), 15, "each row once");
    eventually("the published rows deleted", PATIENCE, async || {
        outbox_rows(&pool).await == 0
    })
    .await;
    second_token.cancel();
    second_running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_measures_the_backlog_it_cannot_publish_and_the_drained_table() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("backlog", 1).await;
    let outbox = Outbox::new(pool.clone());
    // Committed but not handed over: the rows wait in the table.
    for i in 0..5 {
        drop(commit(&outbox, vec![message(&topic, "k", i)]).await);
    }

    // A broker that never answers: nothing is acknowledged, every row stays.
    let mut unreachable = ctx.settings.kafka.clone();
    unreachable.bootstrap_servers = "127.0.0.1:1".into();
    unreachable.message_timeout_ms = 1000;
    let stuck = feedline::Metrics::new("stuck");
    let relay = outbox
        .relay(
            feedline::Producer::new(&unreachable, stuck.clone()).unwrap(),
            stuck.clone(),
        )
        .idle_poll(Duration::from_millis(50));
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    eventually(
        "the backlog of 5 rows to be measured",
        PATIENCE,
        async || stuck.outbox_backlog.get() == 5 && stuck.outbox_oldest_age_seconds.get() > 0.0,
    )
    .await;
    token.cancel();
    running.await.unwrap().unwrap();

    // The real broker: the table drains and the gauges say so.
    let drained = feedline::Metrics::new("drained");
    drained.outbox_backlog.set(-1);
    let relay = Outbox::new(pool.clone())
        .relay(ctx.producer.clone(), drained.clone())
        .idle_poll(Duration::from_millis(50));
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    assert_eq!(ctx.read_all(&topic, 5).await.len(), 5);
    eventually("an empty outbox to be measured", PATIENCE, async || {
        drained.outbox_backlog.get() == 0 && drained.outbox_oldest_age_seconds.get() == 0.0
    })
    .await;
    assert_eq!(outbox_rows(&pool).await, 0);
    token.cancel();
    running.await.unwrap().unwrap();
}

/// A row keeps the trace context it was written in (the current span's, or the one its
/// message names) and the relay publishes it as the message's `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_carry_their_trace_context_to_the_published_message() {
    use feedline::telemetry::{TRACEPARENT, Traceparent};
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("traced", 1).await;
    let named =
        Traceparent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let span = tracing::info_span!("writes the rows");
    let writer = span.context().span().span_context().clone();
    assert!(writer.is_valid(), "spans have ids with export off too");
    let mut with_context = message(&topic, "k", 1);
    with_context.trace_context = Some(named);
    let msgs = [message(&topic, "k", 0), with_context];
    async {
        let mut tx = pool.begin().await.unwrap();
        outbox::enqueue(&mut tx, &msgs).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(span)
    .await;
    let stored: Vec<Option<String>> =
        sqlx::query_scalar("SELECT trace_context FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [
            Some(Traceparent::of(&writer).unwrap().to_string()),
            Some(named.to_string())
        ]
    );

    let relay = OutboxRelay::new(pool.clone(), ctx.producer.clone(), ctx.metrics.clone());
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let published = ctx.read_all(&topic, 2).await;
    token.cancel();
    running.await.unwrap().unwrap();
    let sent: Vec<Traceparent> = published
        .iter()
        .map(|m| Traceparent::parse(header(m, TRACEPARENT).unwrap().as_bytes()).unwrap())
        .collect();
    assert_eq!(sent, [Traceparent::of(&writer).unwrap(), named]);
    assert_eq!(
        header(&published[0], "event-id"),
        Some("ev0"),
        "other headers kept"
    );
}
