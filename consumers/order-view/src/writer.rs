//! The writer: a whole batch applied in one SQLite transaction, on a connection of its own
//! that is driven synchronously on a blocking thread.
//!
//! Why not sqlx, which the readers use: sqlx runs each SQLite connection on a worker thread
//! and every statement is a round trip to it (the arguments copied to cross, a wake-up each
//! way), so the batch's statements, its decoding and its applying took turns on two threads.
//! Here one thread does it all with prepared single-row statements, which SQLite runs as
//! fast as multi-row ones without building any SQL text. The readers stay on sqlx's pool:
//! in WAL mode they never block the writer, nor it them.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::Path;
use std::sync::{LazyLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Statement, TransactionBehavior, params};

use crate::apply::{Event, WorkingSet};
use crate::cache::Cache;
use crate::feed::FeedHub;
use crate::model::{Customer, Kind, Order};
use crate::store::{CUSTOMER_COLUMNS, CustomerRow, Memory, ORDER_COLUMNS, OrderRow, StoreError};

/// What one committed batch did.
#[derive(Debug)]
pub struct Applied {
    pub ws: WorkingSet,
    /// Events applied before (redeliveries), skipped.
    pub duplicates: usize,
    /// Events applied (not duplicates), by type.
    pub per_type: HashMap<&'static str, u64>,
    /// When each order applied in the batch was placed (its `OrderCreated`'s `occurred_at`,
    /// the gateway's acceptance): what freshness is measured from.
    pub placed_at: Vec<i64>,
    /// When the transaction committed, in milliseconds since the epoch: the moment the
    /// events became visible to readers.
    pub committed_at: i64,
}

/// What the writer remembers between batches.
#[derive(Debug)]
struct Numbering {
    next_seq: i64,
    /// The oldest change still in the log.
    oldest: Option<i64>,
    /// A write failed after it began: whether it committed is unknown, so the numbering is
    /// re-read and the cache dropped before the next batch.
    unsure: bool,
}

/// The read model's single writer. Not `Sync`: callers serialize on a mutex around it.
#[derive(Debug)]
pub struct Writer {
    conn: Connection,
    numbering: Numbering,
    /// Changes kept in the log for resuming clients.
    retain: i64,
    /// Stops the checkpointer when the writer goes.
    _checkpointer: mpsc::Sender<()>,
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copies the WAL into the database file every `every`, on a thread and a connection of its
/// own, until `stop`'s sender is dropped.
///
/// Why not SQLite's automatic checkpoint alone: it runs inside the commit that crosses its
/// threshold, so that one batch waited for tens of megabytes to be copied and synced (an 8%
/// share of the writer's time, and its slowest batches). A passive checkpoint blocks neither
/// the writer nor the readers; the writer's automatic checkpoint then only finishes what is
/// left (see [`Writer::open`]).
fn checkpoint(conn: Connection, stop: mpsc::Receiver<()>, every: Duration) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "a passive checkpoint failed");
        }
    }
}

/// The write path's statements, built once: `prepare_cached` finds a prepared statement by
/// its text, so the text must not be formatted again for every use.
static SELECT_ORDER: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?1"));
static SELECT_CUSTOMER: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?1"));
static SELECT_ORDERS_NAMED_OTHERWISE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = ?1 \
         AND (customer_name IS NOT ?2 OR tenant IS NOT ?3)"
    )
});
// Not customer_id in the update: it never changes (every event of an order names the same
// customer), and leaving it out spares its index an update.
static UPSERT_ORDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO orders ({ORDER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (id) DO UPDATE SET \
         customer_name = excluded.customer_name, tenant = excluded.tenant, \
         status = excluded.status, \
         total_cents = excluded.total_cents, reason = excluded.reason, \
         created_at = excluded.created_at, updated_at = excluded.updated_at"
    )
});
static UPSERT_CUSTOMER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, tenant = excluded.tenant, \
         credit_limit_cents = excluded.credit_limit_cents, \
         credit_reserved_cents = excluded.credit_reserved_cents, \
         limit_at = excluded.limit_at, reserved_at = excluded.reserved_at, \
         updated_at = excluded.updated_at"
    )
});

impl Writer {
    /// Opens the (already migrated) file with the writer's settings.
    pub fn open(file: &Path, memory: Memory, retain: i64) -> Result<Self, StoreError> {
        let conn = Connection::open(file)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // The same durability as the readers' connections (see `Store::open_with`). The
        // checkpointer below copies the WAL as it grows; once ~40 MB of it have been
        // written (2,500 pages), the writer checkpoints what is left itself, which lets the
        // next transaction start the WAL file over: a continuous writer never leaves a
        // passive checkpoint with nothing left to copy, so it never restarts the WAL alone.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA temp_store = memory; PRAGMA wal_autocheckpoint = 2500; \
             PRAGMA cache_size = -{}; PRAGMA mmap_size = {};",
            memory.cache_kib,
            u64::from(memory.mmap_mib) << 20
        ))?;
        // Every statement of the write path stays prepared.
        conn.set_prepared_statement_cache_capacity(32);
        let checkpointer = Connection::open(file)?;
        // Checkpoints copy WAL frames without the page cache: it needs next to none.
        checkpointer.execute_batch("PRAGMA cache_size = -64")?;
        let (stop, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("order-view-checkpoint".into())
            .spawn(move || checkpoint(checkpointer, stopped, CHECKPOINT_EVERY))
            .map_err(StoreError::Thread)?;
        let mut writer = Writer {
            conn,
            numbering: Numbering {
                next_seq: 1,
                oldest: None,
                unsure: true,
            },
            retain: retain.max(1),
            _checkpointer: stop,
        };
        writer.renumber()?;
        Ok(writer)
    }

    /// Reads the numbering back from the change log.
    fn renumber(&mut self) -> Result<(), StoreError> {
        let (oldest, newest): (Option<i64>, Option<i64>) =
            self.conn
                .query_row("SELECT min(seq), max(seq) FROM changes", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
        self.numbering = Numbering {
            next_seq: newest.unwrap_or(0) + 1,
            oldest,
            unsure: false,
        };
        Ok(())
    }

    /// Applies a batch (ids in canonical form) in one transaction, as its pieces arrive:
    /// the events of each [`Piece::Events`] are recorded, their rows loaded and the events
    /// applied while the handler still decodes the next ones; [`Piece::End`] commits. Once
    /// committed, updates the cache and publishes the changes, in commit order. Events
    /// applied before are skipped. Pieces that stop without an `End` (the handler failed or
    /// was dropped) roll everything back.
    pub fn apply(
        &mut self,
        pieces: impl IntoIterator<Item = Piece>,
        cache: &Cache,
        hub: &FeedHub,
    ) -> Result<Applied, StoreError> {
        if self.numbering.unsure {
            self.renumber()?;
            cache.clear();
        }
        let applied = match self.write(pieces, cache) {
            // Taken at once: the feed's push delay counts from the commit.
            Ok(applied) => (applied, Instant::now()),
            Err(e) => {
                self.numbering.unsure = true;
                return Err(e);
            }
        };
        let (applied, committed) = applied;
        cache.update(applied.ws.orders.values(), applied.ws.customers.values());
        hub.publish(&applied.ws.changes, committed);
        Ok(applied)
    }

    fn write(
        &mut self,
        pieces: impl IntoIterator<Item = Piece>,
        cache: &Cache,
    ) -> Result<Applied, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ws = WorkingSet::new(self.numbering.next_seq);
        let mut per_type: HashMap<&'static str, u64> = HashMap::new();
        let mut duplicates = 0;
        let mut oldest_event: Option<i64> = None;
        let mut placed_at = Vec::new();
        let mut ended = false;
        for piece in pieces {
            let events = match piece {
                Piece::Events(events) => events,
                Piece::End => {
                    ended = true;
                    break;
                }
            };
            let fresh = record_processed(&tx, &events)?;
            duplicates += events.len() - fresh.len();
            placed_at.extend(
                fresh
                    .iter()
                    .filter(|e| e.type_name() == "OrderCreated")
                    .map(|e| e.occurred_at()),
            );
            oldest_event = fresh
                .iter()
                .map(|e| e.occurred_at())
                .chain(oldest_event)
                .min();
            load(&tx, cache, &mut ws, &fresh)?;
            for event in &fresh {
                ws.apply(event);
                *per_type.entry(event.type_name()).or_default() += 1;
            }
        }
        if !ended {
            return Err(StoreError::Abandoned);
        }
        write_rows(&tx, &ws)?;
        if let Some(oldest) = oldest_event {
            note_applied(&tx, now_ms(), oldest)?;
        }

        let newest = ws.next_seq() - 1;
        let mut oldest = self.numbering.oldest.or(ws.changes.first().map(|c| c.seq));
        // Trim in steps of a tenth of the log, not at every batch.
        if let Some(first) = oldest
            && newest - first + 1 > self.retain + self.retain / 10
        {
            tx.execute(
                "DELETE FROM changes WHERE seq <= ?1",
                [newest - self.retain],
            )?;
            oldest = Some(newest - self.retain + 1);
        }
        tx.commit()?;
        let committed_at = now_ms();
        self.numbering.next_seq = ws.next_seq();
        self.numbering.oldest = oldest;
        Ok(Applied {
            ws,
            duplicates,
            per_type,
            placed_at,
            committed_at,
        })
    }
}

impl Writer {
    /// Deletes up to `chunk` ids from `processed_events` that are older than `retention` at
    /// `now` (milliseconds since the epoch) and were applied longer ago than that too (see
    /// the migration `0002_applied_minutes.sql`); returns how many it deleted. One short
    /// transaction: call it between batches, again while it returns `chunk`.
    pub fn prune_chunk(
        &mut self,
        now: i64,
        retention: Duration,
        chunk: u32,
    ) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The oldest event applied in a minute that may reach past the cutoff.
        let applied_since: Option<i64> = tx.query_row(
            "SELECT min(oldest_event) FROM applied_minutes WHERE minute > ?1",
            [cutoff - MINUTE],
            |row| row.get(0),
        )?;
        let bound = applied_since.map_or(cutoff, |oldest| oldest.min(cutoff));
        let deleted = tx.execute(
            "DELETE FROM processed_events WHERE (occurred_at, event_id) IN \
             (SELECT occurred_at, event_id FROM processed_events WHERE occurred_at < ?1 \
              ORDER BY occurred_at LIMIT ?2)",
            params![bound, chunk],
        )?;
        tx.execute(
            "DELETE FROM applied_minutes WHERE minute <= ?1",
            [cutoff - MINUTE],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }
}

const MINUTE: i64 = 60_000;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Notes that events as old as `oldest` (their `occurred_at`) were applied at `now`, for the
/// pruner: one upsert per batch.
fn note_applied(conn: &Connection, now: i64, oldest: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO applied_minutes (minute, oldest_event) VALUES (?1, ?2) \
         ON CONFLICT (minute) DO UPDATE SET oldest_event = min(oldest_event, excluded.oldest_event)",
    )?
    .execute([now - now.rem_euclid(MINUTE), oldest])?;
    Ok(())
}

/// A part of a batch for [`Writer::apply`].
#[derive(Debug)]
pub enum Piece {
    /// The next decoded events, in batch order.
    Events(Vec<Event>),
    /// The batch is complete: commit it.
    End,
}

/// Records the events' keys and returns the events not applied before (a repeat within
/// `events` counts as applied before): a single-row insert that skips a recorded key tells
/// at once whether it was new.
fn record_processed<'e>(
    conn: &Connection,
    events: &'e [Event],
) -> Result<Vec<&'e Event>, StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO processed_events (occurred_at, event_id) VALUES (?1, ?2) \
         ON CONFLICT DO NOTHING",
    )?;
    let mut fresh = Vec::with_capacity(events.len());
    for event in events {
        // The key: the 16 bytes of a UUID id, the text of any other.
        let id = event.event_id();
        let uuid = uuid::Uuid::parse_str(id).ok();
        let bytes = uuid.as_ref().map_or(id.as_bytes(), |u| u.as_bytes());
        if insert.execute(params![event.occurred_at(), bytes])? == 1 {
            fresh.push(event);
        }
    }
    Ok(fresh)
}

/// Loads the rows `events` touch into `ws`, unless an earlier piece loaded them (they may
/// have changed since): from the cache, the rest from SQLite.
fn load(
    conn: &Connection,
    cache: &Cache,
    ws: &mut WorkingSet,
    events: &[&Event],
) -> Result<(), StoreError> {
    let mut order_ids = HashSet::new();
    let mut customer_ids = HashSet::new();
    let mut registrations = HashSet::new();
    for e in events {
        if !ws.customers.contains_key(e.customer_id()) {
            customer_ids.insert(e.customer_id());
        }
        if let Some(order) = e.order_id()
            && !ws.orders.contains_key(order)
        {
            order_ids.insert(order);
        }
        if let Some(registration) = e.registered_name() {
            registrations.insert(registration);
        }
    }
    let mut select = conn.prepare_cached(&SELECT_ORDER)?;
    for id in order_ids {
        let order = match cache.order(id) {
            Some(order) => Some(Order::clone(&order)),
            None => order_by_id(&mut select, id)?,
        };
        if let Some(order) = order {
            ws.orders.insert(id.to_owned(), order);
        }
    }
    let mut select = conn.prepare_cached(&SELECT_CUSTOMER)?;
    for id in customer_ids {
        let customer = match cache.customer(id) {
            Some(customer) => Some(Customer::clone(&customer)),
            None => select.query_row([id], read_customer).optional()?,
        };
        if let Some(customer) = customer {
            ws.customers.insert(id.to_owned(), customer);
        }
    }
    // Orders that arrived before their customer's registration take its name and tenant.
    let mut select = conn.prepare_cached(&SELECT_ORDERS_NAMED_OTHERWISE)?;
    for (customer, name, tenant) in registrations {
        for row in select.query_map(params![customer, name, tenant], order_row)? {
            let order = Order::try_from(row?)?;
            ws.orders.entry(order.id.clone()).or_insert(order);
        }
    }
    Ok(())
}

fn order_by_id(select: &mut Statement<'_>, id: &str) -> Result<Option<Order>, StoreError> {
    select
        .query_row([id], order_row)
        .optional()?
        .map(Order::try_from)
        .transpose()
}

/// Reads the columns of [`ORDER_COLUMNS`], in their order.
fn order_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderRow> {
    Ok(OrderRow {
        id: row.get(0)?,
        customer_id: row.get(1)?,
        customer_name: row.get(2)?,
        status: row.get(3)?,
        total_cents: row.get(4)?,
        reason: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
        tenant: row.get(8)?,
    })
}

/// Reads the columns of [`CUSTOMER_COLUMNS`], in their order.
fn read_customer(row: &rusqlite::Row<'_>) -> rusqlite::Result<Customer> {
    Ok(Customer::from(CustomerRow {
        id: row.get(0)?,
        name: row.get(1)?,
        credit_limit_cents: row.get(2)?,
        credit_reserved_cents: row.get(3)?,
        limit_at: row.get(4)?,
        reserved_at: row.get(5)?,
        updated_at: row.get(6)?,
        tenant: row.get(7)?,
    }))
}

/// Writes the rows the batch changed, in the order they first changed (so new orders get
/// their positions in event order), and its changes.
pub(crate) fn write_rows(conn: &Connection, ws: &WorkingSet) -> Result<(), StoreError> {
    let mut upsert_order = conn.prepare_cached(&UPSERT_ORDER)?;
    let mut upsert_customer = conn.prepare_cached(&UPSERT_CUSTOMER)?;
    let mut insert_change = conn.prepare_cached(
        "INSERT INTO changes (seq, kind, customer_id, order_id, data, tenant) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut seen = HashSet::new();
    for change in &ws.changes {
        match (change.kind, &change.order_id) {
            (Kind::Order, Some(id)) if seen.insert(id.as_str()) => {
                let o = &ws.orders[id];
                upsert_order.execute(params![
                    o.id,
                    o.customer_id,
                    o.customer_name,
                    o.status.as_str(),
                    o.total_cents,
                    o.reason,
                    o.created_at,
                    o.updated_at,
                    o.tenant
                ])?;
            }
            (Kind::Customer, _) if seen.insert(change.customer_id.as_str()) => {
                let c = &ws.customers[&change.customer_id];
                upsert_customer.execute(params![
                    c.id,
                    c.name,
                    c.credit_limit_cents,
                    c.credit_reserved_cents,
                    c.limit_at,
                    c.reserved_at,
                    c.updated_at,
                    c.tenant
                ])?;
            }
            _ => {}
        }
    }
    for c in &ws.changes {
        insert_change.execute(params![
            c.seq,
            c.kind.as_str(),
            c.customer_id,
            c.order_id,
            &*c.data,
            c.tenant
        ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ViewMetrics;
    use crate::model::{Change, Filter, Status};
    use crate::store::Store;
    use feedline::config::DatabaseSettings;
    use feedline_schemas::types::{OrderApproved, OrderCreated, OrderEvent, OrderEventPayload};
    use std::sync::Arc;

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("view.db").display());
        let store = Store::open(&DatabaseSettings {
            url: url.into(),
            max_connections: 1,
        })
        .await
        .unwrap();
        (dir, store)
    }

    /// An order's creation with the given event id and time (order n of customer 1).
    fn created(event_id: &str, at: i64, n: u32) -> Event {
        let mut e = OrderEvent::new(
            "test",
            "corr".into(),
            None,
            OrderEventPayload::OrderCreated(OrderCreated {
                order_id: format!("00000000-0000-0000-0000-{n:012}"),
                customer_id: "00000000-0000-0000-0000-00000000000c".into(),
                total_cents: 100,
            }),
        );
        e.event_id = event_id.into();
        e.occurred_at = at;
        Event::Order(e)
    }

    /// The creation of order `order`, under event id n.
    fn created_with_id(n: u32, order: u32) -> Event {
        let Event::Order(mut e) = uuid_event(order) else {
            unreachable!()
        };
        e.event_id = format!("00000000-0000-4000-8000-{n:012}");
        Event::Order(e)
    }

    /// A whole batch as the writer's pieces.
    fn whole(events: &[Event]) -> [Piece; 2] {
        [Piece::Events(events.to_vec()), Piece::End]
    }

    fn uuid_event(n: u32) -> Event {
        created(
            &format!("00000000-0000-4000-8000-{n:012}"),
            1_700_000_000_000,
            n,
        )
    }

    /// Rows go to SQLite as bound values: every value must come back exactly, to the
    /// readers and to the writer's own loading, however awkward its characters and however
    /// large its numbers.
    #[tokio::test]
    async fn written_rows_read_back_exactly() {
        let (_dir, store) = temp_store().await;
        let mut writer = store.writer(10).await.unwrap();
        let awkward = "O'Brien \"quoted\" back\\slash\nnew line\ttab \u{1} ünï 😀 \u{2028}";
        let order = Order {
            id: "order-1".into(),
            customer_id: "customer-1".into(),
            customer_name: Some(awkward.into()),
            status: Status::Rejected,
            total_cents: i64::MAX,
            reason: Some(format!("{awkward} reason")),
            created_at: i64::MIN,
            updated_at: 1_700_000_000_123,
            tenant: Some(awkward.into()),
        };
        let plain = Order {
            id: "order-2".into(),
            customer_name: None,
            reason: None,
            status: Status::Pending,
            total_cents: 0,
            tenant: None,
            ..order.clone()
        };
        let customer = Customer {
            id: "customer-1".into(),
            name: Some(awkward.into()),
            credit_limit_cents: 9_007_199_254_740_993, // 2^53 + 1: no float on the way
            credit_reserved_cents: -1,
            limit_at: None,
            reserved_at: Some(42),
            updated_at: 7,
            tenant: Some("acme".into()),
        };
        let mut ws = WorkingSet::new(1);
        let change = |seq, kind, order_id: Option<&str>, data: &str| {
            Arc::new(Change {
                seq,
                kind,
                customer_id: "customer-1".into(),
                order_id: order_id.map(Into::into),
                data: data.into(),
                tenant: Some("acme".into()),
            })
        };
        ws.changes = vec![
            change(
                1,
                Kind::Order,
                Some("order-1"),
                &format!("{{\"x\":\"{awkward}\"}}"),
            ),
            change(2, Kind::Order, Some("order-2"), "{}"),
            change(3, Kind::Customer, None, awkward),
        ];
        for o in [&order, &plain] {
            ws.orders.insert(o.id.clone(), o.clone());
        }
        ws.customers.insert(customer.id.clone(), customer.clone());

        let tx = writer.conn.transaction().unwrap();
        write_rows(&tx, &ws).unwrap();
        tx.commit().unwrap();

        assert_eq!(store.order("order-1").await.unwrap(), Some(order.clone()));
        assert_eq!(store.order("order-2").await.unwrap(), Some(plain.clone()));
        assert_eq!(store.customer("customer-1").await.unwrap(), Some(customer));
        let page = store
            .changes_page(0, 10, &Filter::default(), 10)
            .await
            .unwrap();
        let written: Vec<Change> = ws.changes.iter().map(|c| Change::clone(c)).collect();
        assert_eq!(page.changes, written);
        let mut select = writer.conn.prepare_cached(&SELECT_ORDER).unwrap();
        for expected in [order, plain] {
            let loaded = order_by_id(&mut select, &expected.id).unwrap();
            assert_eq!(loaded, Some(expected));
        }
        assert_eq!(order_by_id(&mut select, "missing").unwrap(), None);
    }

    #[tokio::test]
    async fn an_event_is_new_once() {
        let (_dir, store) = temp_store().await;
        let mut writer = store.writer(10).await.unwrap();
        let tx = writer.conn.transaction().unwrap();
        let ids = |events: Vec<&Event>| -> Vec<String> {
            events.iter().map(|e| e.event_id().to_owned()).collect()
        };
        let first: Vec<Event> = (0..200).map(uuid_event).collect();
        assert_eq!(record_processed(&tx, &first).unwrap().len(), 200);
        // Seen before, or repeated within the batch: not new.
        let mixed: Vec<Event> = [199, 200, 201, 200, 0].map(uuid_event).into();
        let fresh = ids(record_processed(&tx, &mixed).unwrap());
        assert_eq!(fresh, ids(vec![&mixed[1], &mixed[2]]));
        // An id that is not a UUID is recorded as its text; the time is part of the key.
        let odd = [
            created("not-a-uuid", 1, 1),
            created("not-a-uuid", 1, 1),
            created("not-a-uuid", 2, 1),
        ];
        assert_eq!(record_processed(&tx, &odd).unwrap().len(), 2);
        tx.commit().unwrap();
        let count: i64 = writer
            .conn
            .query_row("SELECT count(*) FROM processed_events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 204);
    }

    /// A batch applied again (a redelivery) changes nothing, and a writer opened again on
    /// the file numbers its changes after the last one.
    #[tokio::test]
    async fn redeliveries_change_nothing_and_numbering_survives_a_reopen() {
        let (_dir, store) = temp_store().await;
        let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
        let token = feedline::CancellationToken::new();
        let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, token);
        let cache = Cache::new(100);
        let batch: Vec<Event> = (0..3).map(uuid_event).collect();

        let mut writer = store.writer(10).await.unwrap();
        let applied = writer.apply(whole(&batch), &cache, &hub).unwrap();
        assert_eq!((applied.ws.changes.len(), applied.duplicates), (3, 0));
        let again = writer.apply(whole(&batch), &cache, &hub).unwrap();
        assert_eq!((again.ws.changes.len(), again.duplicates), (0, 3));
        drop(writer);

        let mut writer = store.writer(10).await.unwrap();
        let more: Vec<Event> = (3..5).map(uuid_event).collect();
        let applied = writer.apply(whole(&more), &Cache::new(100), &hub).unwrap();
        let seqs: Vec<i64> = applied.ws.changes.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(store.seq_bounds().await.unwrap(), (Some(1), 5));
    }

    fn count(writer: &Writer, table: &str) -> i64 {
        writer
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Ids older than the retention are pruned in chunks once they were applied longer ago
    /// than it too; newer ones stay, and so do old ones applied recently (a rebuild's).
    #[tokio::test]
    async fn ids_older_than_the_retention_are_pruned_once_applied_that_long_ago() {
        let (_dir, store) = temp_store().await;
        let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
        let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
        let mut writer = store.writer(10).await.unwrap();
        const DAY: i64 = 86_400_000;
        let now = now_ms();
        let at =
            |n: u32, age: i64| created(&format!("00000000-0000-4000-8000-{n:012}"), now - age, n);
        let events: Vec<Event> = (0..1500)
            .map(|n| at(n, 8 * DAY))
            .chain((1500..1520).map(|n| at(n, 6 * DAY)))
            .chain((1520..1525).map(|n| at(n, 0)))
            .collect();
        writer.apply(whole(&events), &Cache::new(10), &hub).unwrap();
        let week = Duration::from_secs(7 * 24 * 3600);

        // Applied just now, as a rebuild applies old events: a redelivery may still come.
        assert_eq!(writer.prune_chunk(now, week, 1000).unwrap(), 0);
        assert_eq!(count(&writer, "processed_events"), 1525);

        // Eight days later (the batch's minute moved back rather than the clock forward,
        // which would age the newer ids too).
        writer
            .conn
            .execute("UPDATE applied_minutes SET minute = minute - ?1", [8 * DAY])
            .unwrap();
        let chunks: Vec<u64> = (0..3)
            .map(|_| writer.prune_chunk(now, week, 1000).unwrap())
            .collect();
        assert_eq!(chunks, [1000, 500, 0], "bounded chunks, every old id");
        assert_eq!(count(&writer, "processed_events"), 25, "the newer ids stay");
        assert_eq!(count(&writer, "applied_minutes"), 0, "old minutes go too");

        // What is left still absorbs a redelivery.
        let again = writer
            .apply(whole(&events[1500..]), &Cache::new(10), &hub)
            .unwrap();
        assert_eq!(again.duplicates, 25);
    }

    /// Committed pages reach the database file without any commit crossing the automatic
    /// checkpoint's threshold: the checkpointer copied them.
    #[tokio::test]
    async fn the_checkpointer_copies_committed_pages_into_the_file() {
        let (dir, store) = temp_store().await;
        let file = dir.path().join("view.db");
        let before = std::fs::metadata(&file).unwrap().len();
        let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
        let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
        let mut writer = store.writer(10_000).await.unwrap();
        let batch: Vec<Event> = (0..2_000).map(uuid_event).collect();
        writer.apply(whole(&batch), &Cache::new(10), &hub).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&file).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the file is still {before} bytes: nothing was checkpointed"
            );
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
    }

    /// A batch comes in pieces: a row an earlier piece changed is not loaded again for a
    /// later one (the cache still holds it as it was before the batch), and pieces that stop
    /// without an end write nothing.
    #[tokio::test]
    async fn pieces_build_on_each_other_and_an_unfinished_batch_writes_nothing() {
        let (_dir, store) = temp_store().await;
        let metrics = ViewMetrics::new(&feedline::Metrics::new("test"));
        let hub = FeedHub::new("test", store.clone(), metrics, 16, 16, Default::default());
        let cache = Cache::new(100);
        let mut writer = store.writer(10).await.unwrap();
        let created = uuid_event(1);
        writer.apply(whole(&[created]), &cache, &hub).unwrap();

        let Event::Order(mut approved) = uuid_event(2) else {
            unreachable!()
        };
        approved.payload = OrderEventPayload::OrderApproved(OrderApproved {
            order_id: format!("00000000-0000-0000-0000-{:012}", 1),
            customer_id: "00000000-0000-0000-0000-00000000000c".into(),
            total_cents: 100,
        });
        // The creation again under another id: no change, if applied to the approved row.
        let again = created_with_id(3, 1);
        let unfinished = [Piece::Events(vec![Event::Order(approved.clone())])];
        assert!(matches!(
            writer.apply(unfinished, &cache, &hub),
            Err(StoreError::Abandoned)
        ));
        let pieces = [
            Piece::Events(vec![Event::Order(approved)]),
            Piece::Events(vec![again]),
            Piece::End,
        ];
        let applied = writer.apply(pieces, &cache, &hub).unwrap();
        let seqs: Vec<i64> = applied.ws.changes.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [2], "one change, numbered after the first batch's");
        let order = store
            .order("00000000-0000-0000-0000-000000000001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(order.status, Status::Approved);
    }
}
