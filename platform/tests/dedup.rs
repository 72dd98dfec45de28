//! `processed_events` is pruned by age against the real PostgreSQL (started by
//! `infra/up.sh`): old ids go in bounded chunks, recent ones stay, and the background task
//! survives a database that fails under it.

mod common;

use std::time::Duration;

use common::*;
use feedline::config::DedupSettings;
use feedline::{CancellationToken, Metrics};
use sqlx::PgPool;

/// Inserts `n` rows for `consumer` processed `age_hours` ago.
async fn processed(pool: &PgPool, consumer: &str, n: i64, age_hours: i64) {
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at)
         SELECT $1, gen_random_uuid()::text, now() - $3::bigint * interval '1 hour'
         FROM generate_series(1, $2)",
    )
    .bind(consumer)
    .bind(n)
    .bind(age_hours)
    .execute(pool)
    .await
    .unwrap();
}

async fn count(pool: &PgPool, older_than_hours: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM processed_events
         WHERE processed_at < now() - $1::bigint * interval '1 hour'",
    )
    .bind(older_than_hours)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn dedup(retention_hours: u64, chunk: u32) -> DedupSettings {
    DedupSettings {
        retention_hours,
        prune_interval_secs: 1,
        prune_chunk: chunk,
    }
}

#[tokio::test]
async fn rows_older_than_the_retention_are_deleted_in_chunks_and_newer_kept() {
    let pool = fresh_database().await;
    processed(&pool, "orders", 2_500, 8 * 24).await;
    processed(&pool, "credit", 10, 7 * 24 + 1).await;
    processed(&pool, "orders", 30, 6 * 24).await;
    processed(&pool, "credit", 20, 0).await;
    let retention = Duration::from_secs(7 * 24 * 3600);

    let mut chunks = Vec::new();
    loop {
        let n = feedline::dedup::prune_chunk(&pool, retention, 1_000)
            .await
            .unwrap();
        chunks.push(n);
        if n < 1_000 {
            break;
        }
    }
    assert_eq!(chunks, [1_000, 1_000, 510], "bounded chunks, every old row");
    assert_eq!(count(&pool, 7 * 24).await, 0, "nothing older is left");
    assert_eq!(count(&pool, -1).await, 50, "every newer row is kept");
}

#[tokio::test]
async fn the_pruner_runs_in_the_background_and_survives_database_errors() {
    let pool = fresh_database().await;
    // The table is gone for a while: the first runs fail.
    sqlx::query("ALTER TABLE processed_events RENAME TO processed_events_away")
        .execute(&pool)
        .await
        .unwrap();
    let metrics = Metrics::new("test");
    let token = CancellationToken::new();
    let pruner = feedline::dedup::spawn_pruner(
        pool.clone(),
        &dedup(24, 100),
        metrics.clone(),
        token.clone(),
    );

    eventually("a failed run", PATIENCE, async || {
        metrics.processed_prune_errors.get() >= 1
    })
    .await;
    sqlx::query("ALTER TABLE processed_events_away RENAME TO processed_events")
        .execute(&pool)
        .await
        .unwrap();
    processed(&pool, "orders", 250, 25).await;
    processed(&pool, "orders", 5, 23).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&pool, 24).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pruner never caught up after the errors"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&pool, -1).await, 5);
    assert_eq!(metrics.processed_pruned.get(), 250);

    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), pruner)
        .await
        .expect("the pruner stops with the service")
        .unwrap();
}
