//! The transactional outbox: a service writes its state change and the events it emits in
//! one database transaction; the relay publishes the rows in order and deletes them only
//! after the broker acknowledged them.
//!
//! Two ways lead from a committed row to the broker:
//!
//! - **Hand-off** (the fast path): the handler that committed passes the rows' ids and bytes
//!   to the relay of its own process ([`Outbox::committed`]), which publishes them at once:
//!   no `NOTIFY`, no wake-up of a listener, no `SELECT` of what the handler already holds.
//! - **The table** (the fallback): rows of other replicas (announced by `NOTIFY`), rows left
//!   by a crash or a restart, rows whose hand-off was dropped (the relay was not active, or
//!   behind) are read from the table in id order, as before.
//!
//! Either way a row is deleted only after the broker acknowledged it, so a crash anywhere
//! leaves the row to be published again (at-least-once; consumers deduplicate on the
//! event id). Publishing does not wait for acknowledgements: a separate task awaits them in
//! order and deletes the acknowledged rows, while the relay goes on publishing.
//!
//! Order per key: one relay per database publishes (the advisory lock), through one
//! idempotent producer, in the order it enqueues. Within this process that is commit order
//! (hand-offs arrive in commit order; after a dropped hand-off, later ones go through the
//! table too until the relay has read it, see [`Shared::missed`]); rows read from the table
//! go in id order, and all rows already in the table when the relay becomes active go
//! before any hand-off.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::producer::{Outgoing, PendingDelivery, ProduceError, Producer};
use crate::telemetry::{TRACEPARENT, Traceparent};

/// Channel the enqueue notifies at commit, so a relay in another process publishes without
/// polling delay.
pub const NOTIFY_CHANNEL: &str = "feedline_outbox";

/// Advisory lock held by the single active relay of a database: one publisher keeps the
/// rows' order; standby replicas take over when its connection goes away.
const RELAY_LOCK: i64 = 0x0fee_d11e;

/// Transactions whose rows may wait for the relay in memory; beyond that the hand-off is
/// dropped and the rows are read from the table.
const HANDOFF_CAPACITY: usize = 256;

/// The relay's first and longest wait before it reconnects to a dependency that went away.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Messages published and not yet acknowledged at most: bounds what the acknowledging task
/// holds, and makes the relay wait for the broker rather than pile up.
const IN_FLIGHT: usize = 10_000;

/// How long the relay remembers ids it published from the table, to skip their hand-off
/// arriving later. A hand-off is sent right after the commit, so it is always far quicker;
/// one later than this would only cause a duplicate, which consumers absorb.
const REMEMBER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The trace the message continues, published as its `traceparent`: the span that
    /// caused it (see [`crate::transactional::Work::trace_context`]). `None`: the span
    /// current when the row is written.
    pub trace_context: Option<Traceparent>,
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        OutboxMessage {
            topic: topic.into(),
            key,
            payload,
            headers: Vec::new(),
            trace_context: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("outbox row {id} has malformed headers")]
    Headers { id: i64 },
    /// The broker refused the row itself (too large, invalid): no retry can publish it.
    #[error("outbox row {id} cannot be published: {source}")]
    Rejected { id: i64, source: ProduceError },
}

impl OutboxError {
    /// The row at fault, when the error is the row's and not a dependency's.
    fn bad_row(&self) -> Option<i64> {
        match self {
            OutboxError::Headers { id } | OutboxError::Rejected { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// A produce failure of row `id`, blamed on the row only when the broker refused the
    /// message itself; anything else (a topic missing for a while, a broker away) is an
    /// outage the relay waits out.
    fn produce(id: i64, e: ProduceError) -> Self {
        use rdkafka::types::RDKafkaErrorCode::*;
        let ProduceError::Fatal { source, .. } = &e else {
            return OutboxError::Produce(e);
        };
        match source.rdkafka_error_code() {
            Some(
                MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord
                | InvalidArgument | BadMessage,
            ) => OutboxError::Rejected { id, source: e },
            _ => OutboxError::Produce(e),
        }
    }
}

/// Appends `messages` to the outbox inside the caller's transaction, in order, and notifies
/// the relay at commit. A service whose handler hands its rows over uses
/// [`Outbox::enqueue`] instead.
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

/// One outbox row, as handed over or as read back.
#[derive(Debug)]
struct Staged {
    id: i64,
    message: OutboxMessage,
}

/// What a service shares between its handler and its relay: the database and the in-process
/// hand-off of committed rows.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Set while this process's relay holds the lock and takes hand-offs.
    active: AtomicBool,
    /// Set when committed rows were not handed over: until the relay has read the table,
    /// later hand-offs are dropped too, or they would overtake those rows.
    missed: AtomicBool,
    sender: mpsc::Sender<Vec<Staged>>,
    /// Taken by the relay when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Vec<Staged>>>>,
    /// Wakes the relay when `missed` was set.
    wake: Notify,
    /// Set while the relay cannot reach its database or the broker: readiness says so.
    outage: AtomicBool,
}

impl Shared {
    fn miss(&self) {
        self.missed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

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

    /// Whether this process's relay is the active one (and so takes hand-offs).
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

#[derive(Debug)]
pub struct OutboxRelay {
    outbox: Outbox,
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

/// Why the relay stopped publishing.
enum Stopped {
    Shutdown,
    /// The lock's connection broke: another replica may hold the lock now.
    LockLost,
}

impl OutboxRelay {
    /// A relay without hand-offs: it publishes what it reads from the table.
    pub fn new(pool: PgPool, producer: Producer, metrics: Arc<Metrics>) -> Self {
        Outbox::new(pool).relay(producer, metrics)
    }

    /// How long the relay waits, with nothing handed over or notified, before it reads the
    /// table anyway.
    pub fn idle_poll(mut self, every: Duration) -> Self {
        self.idle_poll = every;
        self
    }

    /// Publishes until `token` is cancelled. Only the holder of the relay lock publishes.
    /// It outlives its dependencies: when the database or the broker goes away it stands
    /// by, reconnects with backoff and carries on where the table says; an error ends it
    /// only at start (a second relay for the same outbox).
    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        let taken = self.outbox.shared.receiver.lock().expect("poisoned").take();
        let Some(mut handoffs) = taken else {
            anyhow::bail!("this outbox already has a relay");
        };
        let shared = &self.outbox.shared;
        let mut outage: Option<Instant> = None;
        let mut backoff = RECONNECT_BACKOFF;
        loop {
            let stopped = match self.lock(&token, &mut outage).await {
                Ok(None) => return Ok(()),
                Ok(Some(lock_conn)) => {
                    backoff = RECONNECT_BACKOFF;
                    tracing::info!("outbox relay active");
                    let stopped = self.publish(lock_conn, &mut handoffs, &token).await;
                    shared.active.store(false, Ordering::SeqCst);
                    // Their rows are in the table, for whoever holds the lock next.
                    while handoffs.try_recv().is_ok() {}
                    stopped
                }
                Err(e) => Err(e),
            };
            match stopped {
                Ok(Stopped::Shutdown) => return Ok(()),
                Ok(Stopped::LockLost) => {
                    tracing::warn!("outbox relay lost its lock connection, standing by");
                }
                Err(e) => {
                    // Once per outage; the retries are not worth a line each.
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        shared.outage.store(true, Ordering::SeqCst);
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "outbox relay lost a dependency, reconnecting until it is back"
                        );
                    }
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                }
            }
        }
    }

    /// Ends an outage: the database answered (whether or not this relay got the lock).
    fn reachable(&self, outage: &mut Option<Instant>) {
        if let Some(since) = outage.take() {
            self.outbox.shared.outage.store(false, Ordering::SeqCst);
            tracing::info!(
                after_s = since.elapsed().as_secs_f64(),
                "outbox relay reconnected"
            );
        }
    }

    /// Waits until this relay holds the lock; `None` means shutdown came first. A standby
    /// (another replica holds the lock) is not in an outage.
    async fn lock(
        &self,
        token: &CancellationToken,
        outage: &mut Option<Instant>,
    ) -> anyhow::Result<Option<PgConnection>> {
        // The lock lives as long as this connection, so it is detached from the pool.
        let mut conn = self.outbox.pool.acquire().await?.detach();
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut conn)
                .await?;
            self.reachable(outage);
            if locked {
                return Ok(Some(conn));
            }
            tokio::select! {
                _ = token.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Publishes while this relay holds the lock.
    async fn publish(
        &self,
        mut lock_conn: PgConnection,
        handoffs: &mut mpsc::Receiver<Vec<Staged>>,
        token: &CancellationToken,
    ) -> anyhow::Result<Stopped> {
        let shared = &self.outbox.shared;
        // Listen before taking hand-offs: a commit elsewhere is then either seen by the first
        // read of the table or notified.
        let mut listener = PgListener::connect_with(&self.outbox.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        shared.active.store(true, Ordering::SeqCst);
        let mut flight = Flight::start(&self.outbox.pool, self.metrics.clone()).await?;
        let mut recent = Recent::default();
        let mut backoff = Duration::from_millis(100);
        let mut lock_check = tokio::time::interval(self.idle_poll);
        lock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rows left in the table (by a crash, a previous holder, a dropped hand-off) go
        // before any hand-off.
        let mut behind = true;
        let stopped = loop {
            if token.is_cancelled() {
                break Stopped::Shutdown;
            }
            if behind || shared.missed.load(Ordering::SeqCst) || flight.failed() {
                // Read the table only once nothing is in flight: a row on its way would be
                // read and sent again.
                let (next, settled) = flight.settle().await;
                flight = next?;
                let read = match settled {
                    Ok(()) => {
                        shared.missed.store(false, Ordering::SeqCst);
                        self.drain_table(&flight, &mut recent).await
                    }
                    Err(e) => Err(e),
                };
                match read {
                    Ok(()) => {
                        behind = false;
                        backoff = Duration::from_millis(100);
                    }
                    Err(OutboxError::Produce(e)) if e.is_retryable() => {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "outbox publish failed, retrying");
                        // What failed is still in the table: read it all again, in order.
                        recent.clear();
                        behind = true;
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        // The backlog grows while the broker refuses: keep it measured.
                        if let Ok(mut conn) = self.outbox.pool.acquire().await {
                            let _ = self.measure_backlog(&mut conn).await;
                        }
                        continue;
                    }
                    Err(e) => {
                        if let Some(id) = e.bad_row() {
                            // The row can never go out: set it aside with its reason and
                            // publish what follows it.
                            let (next, _) = flight.settle().await;
                            flight = next?;
                            self.quarantine(id, &e).await?;
                            recent.clear();
                            behind = true;
                            continue;
                        }
                        let _ = flight.settle().await;
                        return Err(e.into());
                    }
                }
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => {}
                _ = flight.failure() => {}
                _ = shared.wake.notified() => {}
                Some(rows) = handoffs.recv() => {
                    for row in rows {
                        if recent.contains(row.id) {
                            continue;
                        }
                        if self.send(&flight, row).await.is_err() {
                            // The rest is in the table; the read settles and reports first.
                            behind = true;
                            break;
                        }
                    }
                }
                notified = listener.recv() => {
                    behind = true;
                    if let Err(e) = notified {
                        tracing::warn!(error = %e, "outbox listener lost its connection");
                        tokio::time::sleep(backoff).await;
                    }
                }
                _ = lock_check.tick() => {
                    // The lock is only ours while its connection lives; the query that
                    // proves it also measures the backlog.
                    if let Err(e) = self.measure_backlog(&mut lock_conn).await {
                        tracing::warn!(error = %e, "outbox relay lock connection failed");
                        break Stopped::LockLost;
                    }
                }
                _ = tokio::time::sleep(self.idle_poll) => behind = true,
            }
        };
        // Publishing stops here: what is in flight is acknowledged and deleted, or stays in
        // the table for the next holder.
        shared.active.store(false, Ordering::SeqCst);
        if let (_, Err(e)) = flight.settle().await {
            tracing::warn!(error = %e, "outbox relay stopped with messages unacknowledged");
        }
        Ok(stopped)
    }

    /// Sets the backlog gauges from the table. The count stops at a million rows, so a huge
    /// backlog costs no more than that to measure.
    async fn measure_backlog(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT 1000000) AS waiting), \
             (SELECT COALESCE(EXTRACT(EPOCH FROM now() - created_at)::float8, 0) \
              FROM outbox ORDER BY id LIMIT 1)",
        )
        .fetch_one(conn)
        .await?;
        let age: Option<f64> = row.try_get(1)?;
        self.metrics.outbox_backlog.set(row.try_get(0)?);
        self.metrics
            .outbox_oldest_age_seconds
            .set(age.unwrap_or(0.0).max(0.0));
        Ok(())
    }

    /// Publishes every row of the table not published recently, in id order, without
    /// waiting for acknowledgements.
    async fn drain_table(&self, flight: &Flight, recent: &mut Recent) -> Result<(), OutboxError> {
        let mut after = 0;
        loop {
            let rows = read_rows(&self.outbox.pool, after, self.batch_size).await?;
            let full = rows.len() as i64 == self.batch_size;
            for row in rows {
                after = row.id;
                if recent.contains(row.id) {
                    continue;
                }
                recent.insert(row.id);
                self.send(flight, row).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Moves row `id` from the outbox to `outbox_quarantine` with the reason it cannot be
    /// published, where an operator can inspect, fix and re-insert it.
    async fn quarantine(&self, id: i64, error: &OutboxError) -> Result<(), sqlx::Error> {
        let reason = error.to_string();
        sqlx::query(
            "WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *)
             INSERT INTO outbox_quarantine (id, topic, msg_key, payload, headers, trace_context, created_at, error)
             SELECT id, topic, msg_key, payload, headers, trace_context, created_at, $2 FROM moved",
        )
        .bind(id)
        .bind(&reason)
        .execute(&self.outbox.pool)
        .await?;
        tracing::error!(id, error = %reason, "outbox row quarantined");
        self.metrics
            .outbox_quarantined
            .with_label_values::<&str>(&[])
            .inc();
        Ok(())
    }

    async fn send(&self, flight: &Flight, row: Staged) -> Result<(), OutboxError> {
        let delivery = self
            .enqueue(&row.message)
            .await
            .map_err(|e| OutboxError::produce(row.id, e))?;
        flight.push(row.id, row.message.topic, delivery).await;
        Ok(())
    }

    /// Hands one stored message to the producer, headers and all, as the continuation of
    /// the trace its row was written in.
    async fn enqueue(&self, m: &OutboxMessage) -> Result<PendingDelivery, ProduceError> {
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(m.headers.len() + 1);
        headers.extend(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        if let Some(trace) = &m.trace_context
            && !headers.iter().any(|(k, _)| *k == TRACEPARENT)
        {
            headers.push((TRACEPARENT, trace.as_bytes()));
        }
        let outgoing = Outgoing::new(&m.topic, m.key.as_deref(), &m.payload).headers(&headers);
        self.producer.enqueue(outgoing).await
    }

    /// Sends the oldest rows in id order and waits for their acknowledgements, deleting
    /// nothing (see [`OutboxRelay::delete`]).
    pub async fn publish_batch(&self) -> Published {
        let rows = match read_rows(&self.outbox.pool, 0, self.batch_size).await {
            Ok(rows) => rows,
            Err(e) => {
                return Published {
                    acked: Vec::new(),
                    error: Some(e),
                };
            }
        };
        let mut pending = Vec::with_capacity(rows.len());
        let mut error = None;
        for row in &rows {
            match self.enqueue(&row.message).await {
                Ok(delivery) => pending.push((row.id, delivery)),
                Err(e) => {
                    error = Some(e.into());
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(pending.len());
        for (id, delivery) in pending {
            match delivery.acknowledged().await {
                Ok(_) if error.is_none() => acked.push(id),
                Ok(_) => {}
                // This row comes before any enqueue failure, so its error is the first.
                Err(e) => error = Some(e.into()),
            }
        }
        Published { acked, error }
    }

    pub async fn delete(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.outbox.pool)
            .await?;
        Ok(())
    }
}

/// Rows after `after`, in id order, at most `limit`.
async fn read_rows(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<Staged>, OutboxError> {
    let rows = sqlx::query(
        "SELECT id, topic, msg_key, payload, headers, trace_context FROM outbox
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let id: i64 = row.get("id");
            let raw_headers: Vec<u8> = row.get("headers");
            let headers = decode_headers(&raw_headers).ok_or(OutboxError::Headers { id })?;
            Ok(Staged {
                id,
                message: OutboxMessage {
                    topic: row.get("topic"),
                    key: row.get("msg_key"),
                    payload: row.get("payload"),
                    headers,
                    // A malformed value only costs the trace its continuation.
                    trace_context: row
                        .get::<Option<String>, _>("trace_context")
                        .and_then(|t| Traceparent::parse(t.as_bytes())),
                },
            })
        })
        .collect()
}

/// Ids the relay published from the table lately, so their hand-off is skipped.
#[derive(Debug, Default)]
struct Recent {
    ids: HashSet<i64>,
    order: VecDeque<(Instant, i64)>,
}

impl Recent {
    fn insert(&mut self, id: i64) {
        let now = Instant::now();
        while let Some((at, old)) = self.order.front()
            && now.duration_since(*at) > REMEMBER
        {
            self.ids.remove(old);
            self.order.pop_front();
        }
        self.ids.insert(id);
        self.order.push_back((now, id));
    }

    fn contains(&self, id: i64) -> bool {
        self.ids.contains(&id)
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.order.clear();
    }
}

struct InFlight {
    id: i64,
    topic: String,
    delivery: PendingDelivery,
}

/// The messages published and not yet acknowledged, and the task that awaits their
/// acknowledgements in order and deletes their rows: the relay goes on publishing meanwhile.
struct Flight {
    sender: mpsc::Sender<InFlight>,
    task: JoinHandle<(PgConnection, Result<(), OutboxError>)>,
    failed: Arc<Failed>,
    pool: PgPool,
    metrics: Arc<Metrics>,
}

/// Set by the acknowledging task at its first failure.
#[derive(Debug, Default)]
struct Failed {
    flag: AtomicBool,
    notify: Notify,
}

impl Failed {
    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

impl Flight {
    async fn start(pool: &PgPool, metrics: Arc<Metrics>) -> Result<Self, sqlx::Error> {
        let conn = delete_connection(pool).await?;
        Ok(Self::with_connection(conn, pool.clone(), metrics))
    }

    fn with_connection(conn: PgConnection, pool: PgPool, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        let failed = Arc::new(Failed::default());
        let task = tokio::spawn(acknowledge(receiver, conn, metrics.clone(), failed.clone()));
        Flight {
            sender,
            task,
            failed,
            pool,
            metrics,
        }
    }

    async fn push(&self, id: i64, topic: String, delivery: PendingDelivery) {
        let flight = InFlight {
            id,
            topic,
            delivery,
        };
        // Fails only when the task ended on a failed delete, which `settle` reports.
        let _ = self.sender.send(flight).await;
    }

    fn failed(&self) -> bool {
        self.failed.flag.load(Ordering::SeqCst)
    }

    /// Resolves when a publish or a delete failed.
    async fn failure(&self) {
        if !self.failed() {
            self.failed.notify.notified().await;
        }
    }

    /// Waits until every message in flight was acknowledged (and its row deleted) or
    /// failed, then starts afresh. Returns the first failure.
    async fn settle(self) -> (Result<Self, sqlx::Error>, Result<(), OutboxError>) {
        let Flight {
            sender,
            task,
            pool,
            metrics,
            ..
        } = self;
        drop(sender);
        let (conn, result) = match task.await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let next = if result.is_err() {
            // A failed delete may have left the connection unusable.
            let _ = conn.close().await;
            Flight::start(&pool, metrics).await
        } else {
            Ok(Flight::with_connection(conn, pool, metrics))
        };
        (next, result)
    }
}

/// A connection of its own for the deletes, detached from the pool.
async fn delete_connection(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    // A delete lost in a database crash only publishes its rows again, which consumers
    // absorb: it need not wait for the WAL flush (the handler's commit does).
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

/// Awaits acknowledgements in publish order and deletes the acknowledged rows, a batch at a
/// time. After the first failure nothing more is deleted: the relay reads the table again
/// and publishes the rest in order.
async fn acknowledge(
    mut receiver: mpsc::Receiver<InFlight>,
    mut conn: PgConnection,
    metrics: Arc<Metrics>,
    failed: Arc<Failed>,
) -> (PgConnection, Result<(), OutboxError>) {
    let mut error = None;
    let mut acked = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(flight) = next {
            match flight.delivery.acknowledged().await {
                Ok(_) if error.is_none() => {
                    acked.push(flight.id);
                    metrics
                        .outbox_published
                        .with_label_values(&[&flight.topic])
                        .inc();
                }
                Ok(_) => {}
                Err(e) => {
                    if error.is_none() {
                        error = Some(OutboxError::produce(flight.id, e));
                        failed.set();
                    }
                }
            }
            // Whatever is already acknowledged goes in the same delete.
            next = if acked.len() < 1000 {
                receiver.try_recv().ok()
            } else {
                None
            };
        }
        if acked.is_empty() {
            continue;
        }
        let deleted = sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&acked)
            .execute(&mut conn)
            .await;
        acked.clear();
        if let Err(e) = deleted {
            failed.set();
            return (conn, Err(e.into()));
        }
    }
    (conn, error.map_or(Ok(()), Err))
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
