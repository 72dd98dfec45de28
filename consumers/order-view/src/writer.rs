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
mod tests;
