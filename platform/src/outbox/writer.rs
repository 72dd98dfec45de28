//! Writing: rows inserted in the caller's transaction, handed to the relay after the commit.

use super::*;

pub async fn enqueue(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
) -> Result<(), sqlx::Error> {
    insert(conn, messages, true).await?;
    Ok(())
}

/// Inserts the rows and returns their ids, in the order of `messages`.
async fn insert(
    conn: &mut PgConnection,
    messages: &[OutboxMessage],
    notify: bool,
) -> Result<Vec<i64>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let current = Traceparent::current();
    let traces: Vec<Option<Traceparent>> = messages
        .iter()
        .map(|m| m.trace_context.or(current))
        .collect();
    let traces: Vec<Option<&str>> = traces
        .iter()
        .map(|t| t.as_ref().map(Traceparent::as_str))
        .collect();
    let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<Option<&[u8]>> = messages.iter().map(|m| m.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let headers: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| encode_headers(&m.headers))
        .collect();
    // WITH ORDINALITY keeps the ids in the order of `messages`; RETURNING promises no
    // order, hence the sort.
    let mut ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO outbox (topic, msg_key, payload, headers, trace_context)
         SELECT topic, msg_key, payload, headers, trace_context
         FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[])
              WITH ORDINALITY AS m(topic, msg_key, payload, headers, trace_context, n)
         ORDER BY n
         RETURNING id",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&headers)
    .bind(&traces)
    .fetch_all(&mut *conn)
    .await?;
    ids.sort_unstable();
    if notify {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(ids)
}

/// Length-prefixed pairs: u16 key length, key, u32 value length, value.
/// Rows inserted by a transaction, to give to [`Outbox::committed`] once it committed.
/// Dropped instead (an error, a cancelled future), it makes the relay read the table.
#[derive(Debug)]
#[must_use = "give the rows to Outbox::committed after the commit"]
pub struct Enqueued {
    rows: Vec<Staged>,
    shared: Arc<Shared>,
}

impl Drop for Enqueued {
    fn drop(&mut self) {
        // Whether the transaction committed is unknown here: if it did, the rows must not
        // wait for the idle poll, nor be overtaken by the next hand-off.
        if !self.rows.is_empty() && self.shared.active.load(Ordering::SeqCst) {
            self.shared.miss();
        }
    }
}

impl Outbox {
    pub fn new(pool: PgPool) -> Self {
        let (sender, receiver) = mpsc::channel(HANDOFF_CAPACITY);
        Outbox {
            pool,
            shared: Arc::new(Shared {
                active: AtomicBool::new(false),
                missed: AtomicBool::new(false),
                sender,
                receiver: Mutex::new(Some(receiver)),
                wake: Notify::new(),
                outage: AtomicBool::new(false),
            }),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether this process's relay is the active one: it holds the lock, has read the table
    /// once, and takes hand-offs.
    pub fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Appends `messages` to the outbox inside the caller's transaction, in order. Give the
    /// result to [`Outbox::committed`] after the commit.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        mut messages: Vec<OutboxMessage>,
    ) -> Result<Enqueued, sqlx::Error> {
        // Our own relay gets the hand-off; a NOTIFY is only for a relay in another process
        // (a round trip inside the transaction, and a wake-up, saved on the common path).
        let notify = !self.is_active();
        // The hand-off publishes what the row stores.
        if let Some(current) = Traceparent::current() {
            for m in &mut messages {
                m.trace_context.get_or_insert(current);
            }
        }
        let ids = insert(conn, &messages, notify).await?;
        let rows = ids
            .into_iter()
            .zip(messages)
            .map(|(id, message)| Staged { id, message })
            .collect();
        Ok(Enqueued {
            rows,
            shared: self.shared.clone(),
        })
    }

    /// Hands the committed rows to this process's relay, which publishes them at once. When
    /// it is not the active relay the rows stay for the one that is (the enqueue notified it).
    pub fn committed(&self, mut enqueued: Enqueued) {
        let rows = std::mem::take(&mut enqueued.rows);
        let shared = &self.shared;
        if rows.is_empty() || !shared.active.load(Ordering::SeqCst) {
            return;
        }
        if shared.missed.load(Ordering::SeqCst) {
            // The relay reads the table next, and finds these rows behind the missed ones.
            return;
        }
        if shared.sender.try_send(rows).is_err() {
            shared.miss();
        }
    }

    /// Adds the relay's readiness to `health`: not ready while it waits out an outage.
    pub fn register(&self, health: &Health) {
        let shared = self.shared.clone();
        health.ready_check("outbox", move || {
            let outage = shared.outage.load(Ordering::SeqCst);
            std::future::ready(if outage {
                Err("the outbox relay cannot reach its database or the broker".to_owned())
            } else {
                Ok(())
            })
        });
    }

    /// The relay publishing this outbox; run it once per process.
    pub fn relay(&self, producer: Producer, metrics: Arc<Metrics>) -> OutboxRelay {
        // Exported at zero from the start, so that the first quarantined row is an increase.
        metrics.outbox_quarantined.with_label_values::<&str>(&[]);
        OutboxRelay {
            outbox: self.clone(),
            producer,
            metrics,
            batch_size: 1000,
            idle_poll: Duration::from_millis(500),
        }
    }
}
