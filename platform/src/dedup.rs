//! Effectively-once processing on top of at-least-once delivery: a handler records the ids
//! of the events it applied in `processed_events`, in the same transaction as their effects,
//! and skips the ones already there.
//!
//! The table would grow forever, so ids are forgotten after `dedup.retention_hours`
//! ([`spawn_pruner`]): a redelivery (uncommitted offsets after a crash or a rebalance, a
//! relay publishing a row again) comes minutes after the first copy, not days.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Metrics;
use crate::config::DedupSettings;

/// Records `event_ids` as processed by `consumer` and tells, position by position, which are
/// new: `true` for the first occurrence of an id never processed before, `false` for ids
/// already processed and for repeats within `event_ids` itself (a redelivered batch can hold
/// both copies of a duplicate). Call it inside the transaction that applies the effects: if
/// that rolls back, so does this.
pub async fn first_time(
    conn: &mut PgConnection,
    consumer: &str,
    event_ids: &[String],
) -> Result<Vec<bool>, sqlx::Error> {
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id)
         SELECT $1, id FROM unnest($2::text[]) AS t(id)
         ON CONFLICT DO NOTHING
         RETURNING event_id",
    )
    .bind(consumer)
    .bind(event_ids)
    .fetch_all(conn)
    .await?;
    let mut fresh: HashSet<String> = fresh.into_iter().collect();
    Ok(event_ids.iter().map(|id| fresh.remove(id)).collect())
}

/// Deletes up to `chunk` rows of `processed_events` processed longer than `retention` ago
/// (by the database's clock, which stamped them); returns how many it deleted. One statement
/// in its own transaction: it locks only the rows it deletes, and only for that long.
pub async fn prune_chunk(
    pool: &PgPool,
    retention: Duration,
    chunk: u32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM processed_events p
         USING (SELECT consumer, event_id FROM processed_events
                WHERE processed_at < now() - $1::bigint * interval '1 second'
                LIMIT $2) old
         WHERE p.consumer = old.consumer AND p.event_id = old.event_id",
    )
    .bind(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX))
    .bind(i64::from(chunk))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Starts the background task that prunes this service's PostgreSQL `processed_events` every
/// `dedup.prune_interval_secs` (see [`keep_pruning`]) until `token` is cancelled.
pub fn spawn_pruner(
    pool: PgPool,
    settings: &DedupSettings,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) -> JoinHandle<()> {
    let (retention, chunk) = (settings.retention(), settings.prune_chunk);
    tokio::spawn(keep_pruning(settings.clone(), metrics, token, move || {
        let pool = pool.clone();
        async move { prune_chunk(&pool, retention, chunk).await }
    }))
}

/// Calls `prune_chunk` (which deletes at most `settings.prune_chunk` rows and says how many)
/// once at start and then every `settings.prune_interval()`, again and again while chunks
/// come back full, until `token` is cancelled. An error is logged and counted and the run
/// ends there: the next one tries again. A database that is down must not stop a service
/// whose consumer would only retry its batches until it is back.
pub async fn keep_pruning<F, Fut, E>(
    settings: DedupSettings,
    metrics: Arc<Metrics>,
    token: CancellationToken,
    mut prune_chunk: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(settings.prune_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut run = 0;
        loop {
            let pruned = tokio::select! {
                _ = token.cancelled() => return,
                pruned = prune_chunk() => pruned,
            };
            match pruned {
                Ok(n) => {
                    run += n;
                    metrics.processed_pruned.inc_by(n);
                    if n < u64::from(settings.prune_chunk) {
                        break;
                    }
                }
                Err(e) => {
                    metrics.processed_prune_errors.inc();
                    tracing::warn!(error = %e, "cannot prune processed_events, trying again later");
                    break;
                }
            }
        }
        if run > 0 {
            tracing::info!(
                rows = run,
                retention_hours = settings.retention_hours,
                "pruned processed_events"
            );
        }
    }
}
