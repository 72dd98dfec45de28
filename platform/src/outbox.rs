//! The transactional outbox: a service writes its state change and the events it emits in
//! one database transaction; the relay publishes the rows in order and deletes them only
//! after the broker acknowledged them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::producer::{Outgoing, PendingDelivery, ProduceError, Producer};

/// Channel the enqueue notifies at commit, so the relay publishes without polling delay.
pub const NOTIFY_CHANNEL: &str = "feedline_outbox";

/// Advisory lock held by the single active relay of a database: one publisher keeps the
/// rows' order; standby replicas take over when its connection goes away.
const RELAY_LOCK: i64 = 0x0fee_d11e;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("outbox row {id} has malformed headers")]
    Headers { id: i64 },
}

/// Appends `messages` to the outbox inside the caller's transaction, in order.
pub async fn enqueue(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = messages.iter().map(|m| m.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let headers: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| encode_headers(&m.headers))
        .collect();
    // WITH ORDINALITY keeps the ids in the order of `messages`.
    sqlx::query(
        "INSERT INTO outbox (topic, msg_key, payload, headers)
         SELECT topic, msg_key, payload, headers
         FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[])
              WITH ORDINALITY AS m(topic, msg_key, payload, headers, n)
         ORDER BY n",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Length-prefixed pairs: u16 key length, key, u32 value length, value.
fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in headers {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        bytes = rest;
        Some(head)
    };
    let mut headers = Vec::new();
    while let Some(len) = take(2) {
        let key_len = u16::from_be_bytes(len.try_into().ok()?) as usize;
        let key = String::from_utf8(take(key_len)?.to_vec()).ok()?;
        let value_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        headers.push((key, take(value_len)?.to_vec()));
    }
    // A lone trailing byte is corruption too, not an empty header.
    bytes.is_empty().then_some(headers)
}

#[derive(Debug)]
pub struct OutboxRelay {
    pool: PgPool,
    producer: Producer,
    metrics: Arc<Metrics>,
    batch_size: i64,
    idle_poll: Duration,
}

/// What one publish round achieved.
#[derive(Debug, Default)]
pub struct Published {
    /// Ids the broker acknowledged, in order: a prefix of the rows read.
    pub acked: Vec<i64>,
    /// The first failure, after which nothing more counts as acknowledged.
    pub error: Option<OutboxError>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, producer: Producer, metrics: Arc<Metrics>) -> Self {
        OutboxRelay {
            pool,
            producer,
            metrics,
            batch_size: 1000,
            idle_poll: Duration::from_millis(500),
        }
    }

    /// Publishes until `token` is cancelled. Only the holder of the relay lock publishes.
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        // The lock lives as long as this connection, so it is detached from the pool.
        let mut lock_conn = self.pool.acquire().await?.detach();
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut lock_conn)
                .await?;
            if locked {
                break;
            }
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        tracing::info!("outbox relay active");
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let mut backoff = Duration::from_millis(100);
        while !token.is_cancelled() {
            let published = self.publish_batch().await;
            let acked = published.acked.len();
            if acked > 0 {
                self.delete(&published.acked).await?;
            }
            match published.error {
                None => backoff = Duration::from_millis(100),
                Some(OutboxError::Produce(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "outbox publish failed, retrying");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Some(e) => return Err(e.into()),
            }
            if acked as i64 == self.batch_size {
                continue;
            }
            tokio::select! {
                _ = token.cancelled() => break,
                notified = listener.recv() => {
                    if let Err(e) = notified {
                        tracing::warn!(error = %e, "outbox listener lost its connection");
                        tokio::time::sleep(backoff).await;
                    }
                }
                _ = tokio::time::sleep(self.idle_poll) => {}
            }
        }
        Ok(())
    }

    /// Sends the oldest rows in id order and waits for their acknowledgements. Rows of one
    /// key keep their order: one producer, enqueued in order, idempotent.
    pub async fn publish_batch(&self) -> Published {
        let rows = match sqlx::query(
            "SELECT id, topic, msg_key, payload, headers FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(self.batch_size)
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                return Published {
                    acked: Vec::new(),
                    error: Some(e.into()),
                };
            }
        };
        let mut pending: Vec<(i64, String, PendingDelivery)> = Vec::with_capacity(rows.len());
        let mut error = None;
        for row in &rows {
            let id: i64 = row.get("id");
            let topic: String = row.get("topic");
            let key: Option<Vec<u8>> = row.get("msg_key");
            let payload: Vec<u8> = row.get("payload");
            let raw_headers: Vec<u8> = row.get("headers");
            let Some(headers) = decode_headers(&raw_headers) else {
                error = Some(OutboxError::Headers { id });
                break;
            };
            let header_refs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let outgoing = Outgoing::new(&topic, key.as_deref(), &payload).headers(&header_refs);
            match self.producer.enqueue(outgoing).await {
                Ok(delivery) => pending.push((id, topic, delivery)),
                Err(e) => {
                    error = Some(e.into());
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(pending.len());
        let mut ack_failed = false;
        for (id, topic, delivery) in pending {
            match delivery.acknowledged().await {
                Ok(_) if !ack_failed => {
                    acked.push(id);
                    self.metrics
                        .outbox_published
                        .with_label_values(&[&topic])
                        .inc();
                }
                Ok(_) => {}
                Err(e) => {
                    // This row comes before any enqueue failure, so its error is the first.
                    if !ack_failed {
                        error = Some(e.into());
                    }
                    ack_failed = true;
                }
            }
        }
        Published { acked, error }
    }

    pub async fn delete(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let headers = vec![
            ("event-id".to_owned(), b"abc".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        assert_eq!(decode_headers(&[]).unwrap(), vec![]);
    }

    #[test]
    fn truncated_headers_are_rejected() {
        let bytes = encode_headers(&[("k".to_owned(), b"value".to_vec())]);
        assert!(decode_headers(&bytes[..bytes.len() - 1]).is_none());
    }
}
