//! The relay: one per database (the advisory lock), publishing hand-offs and table rows in
//! order and deleting each row once the broker acknowledged it.

use super::*;

#[derive(Debug)]
pub struct OutboxRelay {
    pub(super) outbox: Outbox,
    pub(super) producer: Producer,
    pub(super) metrics: Arc<Metrics>,
    pub(super) batch_size: i64,
    pub(super) idle_poll: Duration,
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
                        // Hand-offs from the first read of the table on: until then a
                        // commit notifies, and the read finds what came before it.
                        shared.active.store(true, Ordering::SeqCst);
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
