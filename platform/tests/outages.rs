//! Dependencies come and go: the outbox relay outlives its database (connections really
//! terminated by PostgreSQL, new ones refused), reports not-ready meanwhile and publishes
//! everything once it is back; rows the broker can never take are quarantined, not retried
//! forever.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use feedline::Health;
use feedline::outbox::{Outbox, OutboxMessage};
use rdkafka::Message;
use sqlx::PgPool;

async fn commit(outbox: &Outbox, msgs: Vec<OutboxMessage>) {
    let mut tx = outbox.pool().begin().await.unwrap();
    let enqueued = outbox.enqueue(&mut tx, msgs).await.unwrap();
    tx.commit().await.unwrap();
    outbox.committed(enqueued);
}

async fn current_database(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Makes `database` unreachable the way a restart does: every connection to it terminated
/// by the server, new ones refused until [`reopen`].
async fn cut_off(admin: &PgPool, database: &str) {
    sqlx::query(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
    ))
    .execute(admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(database)
        .execute(admin)
        .await
        .unwrap();
}

async fn reopen(admin: &PgPool, database: &str) {
    sqlx::query(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        .execute(admin)
        .await
        .unwrap();
}

async fn ready(health: &Health) -> Result<(), String> {
    let report = health.ready().await;
    if report.is_ok() {
        Ok(())
    } else {
        Err(format!("{:?}", report.checks))
    }
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_outlives_its_database_and_publishes_everything_once_it_is_back() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let admin = PgPool::connect(&database_url()).await.unwrap();
    let database = current_database(&pool).await;
    let topic = ctx.topic("events", 3).await;
    let outbox = Outbox::new(pool.clone());
    let health = Health::new();
    outbox.register(&health);
    health.database("database", pool.clone());
    let relay = outbox
        .relay(ctx.producer.clone(), ctx.metrics.clone())
        .idle_poll(Duration::from_millis(200));
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let keys = ["a", "b", "c"];

    commit(
        &outbox,
        (0..50).map(|i| message(&topic, keys[i % 3], i)).collect(),
    )
    .await;
    until("ready", async || ready(&health).await.is_ok()).await;

    cut_off(&admin, &database).await;
    until("not ready while the database is away", async || {
        ready(&health)
            .await
            .is_err_and(|e| e.contains("outbox") && e.contains("database"))
    })
    .await;
    assert!(!running.is_finished(), "the relay ended with its database");
    reopen(&admin, &database).await;

    // The pool reconnects; so does the relay, which publishes what comes next.
    commit(
        &outbox,
        (50..100).map(|i| message(&topic, keys[i % 3], i)).collect(),
    )
    .await;
    let published = ctx.read_all(&topic, 100).await;
    until("ready again", async || ready(&health).await.is_ok()).await;
    assert!(!running.is_finished());
    token.cancel();
    running.await.unwrap().unwrap();

    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for m in &published {
        let (key, i) = text(m)
            .split_once(':')
            .map(|(k, i)| (k.to_owned(), i.parse().unwrap()))
            .unwrap();
        per_key.entry(key).or_default().push(i);
    }
    let mut all: Vec<usize> = per_key.values().flatten().copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all, (0..100).collect::<Vec<_>>(), "every row published");
    for (key, order) in per_key {
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "order of {key} kept: {order:?}"
        );
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_broker_refuses_are_quarantined_and_the_rest_go_on() {
    let ctx = TestCtx::new();
    let pool = fresh_database().await;
    let topic = ctx.topic("events", 1).await;
    let outbox = Outbox::new(pool.clone());
    commit(&outbox, vec![message(&topic, "k", 0)]).await;
    // Larger than any broker takes (message.max.bytes).
    let mut huge = message(&topic, "k", 1);
    huge.payload = vec![b'x'; 20 << 20];
    commit(&outbox, vec![huge]).await;
    // Corrupt on disk: a header length with nothing after it.
    sqlx::query("INSERT INTO outbox (topic, msg_key, payload, headers) VALUES ($1, 'k', 'k:2', '\\x00'::bytea)")
        .bind(&topic)
        .execute(&pool)
        .await
        .unwrap();
    commit(&outbox, vec![message(&topic, "k", 3)]).await;

    let relay = outbox
        .relay(ctx.producer.clone(), ctx.metrics.clone())
        .idle_poll(Duration::from_millis(200));
    let token = feedline::CancellationToken::new();
    let running = tokio::spawn(relay.run(token.clone()));
    let published = ctx.read_all(&topic, 2).await;
    until("both bad rows quarantined", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_quarantine")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 2
    })
    .await;
    token.cancel();
    running.await.unwrap().unwrap();

    let texts: Vec<String> = published.iter().map(text).collect();
    assert_eq!(texts, ["k:0", "k:3"], "the good rows, in order");
    let errors: Vec<String> = sqlx::query_scalar("SELECT error FROM outbox_quarantine ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(errors[0].contains("cannot be published"), "{errors:?}");
    assert!(errors[1].contains("malformed headers"), "{errors:?}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(published.iter().all(|m| m.payload().is_some()));
}
