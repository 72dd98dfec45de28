//! Effectively-once processing on top of at-least-once delivery: a handler records the ids
//! of the events it applied in `processed_events`, in the same transaction as their effects,
//! and skips the ones already there.

use std::collections::HashSet;

use sqlx::PgConnection;

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
