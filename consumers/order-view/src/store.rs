//! The SQLite read model: opening and migrating the file, the writer's batch statements and
//! the readers' queries.
//!
//! The writer keeps per-event work small: rows are loaded and written a chunk of ids per
//! statement (chunk sizes come from a fixed set, so every statement text repeats and sqlx's
//! per-connection cache keeps it prepared), and a whole consumer batch is one transaction.

use foldhash::{HashSet, HashSetExt};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use feedline::config::DatabaseSettings;
use secrecy::ExposeSecret;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::apply::{EventKey, WorkingSet};
use crate::model::{Change, Customer, Filter, Kind, Order, Status};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] sqlx::Error),
    #[error("cannot migrate the read model: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database.url must name a SQLite file (sqlite:path) for order-view")]
    NotSqlite,
    #[error("unreadable row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

const PAGE_SIZE: u32 = 4096;

/// A batch's row writes, ready to run: see [`Store::prepare_writes`].
pub struct Writes(Vec<QueryBuilder<'static, Sqlite>>);

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("statements", &self.0.len())
            .finish()
    }
}

/// Statement sizes for multi-row statements: a batch of n rows is cut greedily into these,
/// so only five texts per statement kind exist (all stay prepared).
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

fn chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.into_iter().find(|s| *s <= items.len())?;
        let (head, tail) = items.split_at(size);
        items = tail;
        Some(head)
    })
}

const ORDER_COLUMNS: &str =
    "id, customer_id, customer_name, status, total_cents, reason, created_at, updated_at";
const CUSTOMER_COLUMNS: &str =
    "id, name, credit_limit_cents, credit_reserved_cents, limit_at, reserved_at, updated_at";
const CHANGE_COLUMNS: &str = "seq, kind, customer_id, order_id, data";

/// `INSERT` of event keys that skips those already recorded.
fn insert_processed(keys: &[EventKey]) -> QueryBuilder<'_, Sqlite> {
    let mut qb =
        QueryBuilder::<Sqlite>::new("INSERT INTO processed_events (occurred_at, event_id) ");
    qb.push_values(keys, |mut row, key| {
        row.push_bind(key.occurred_at)
            .push_bind(key.event_id.as_slice());
    });
    qb.push(" ON CONFLICT DO NOTHING");
    qb
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    customer_id: String,
    customer_name: Option<String>,
    status: String,
    total_cents: i64,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<OrderRow> for Order {
    type Error = StoreError;
    fn try_from(r: OrderRow) -> Result<Self, StoreError> {
        let status = Status::parse(&r.status).ok_or_else(|| StoreError::Corrupt {
            table: "orders",
            reason: format!("unknown status {:?}", r.status),
        })?;
        Ok(Order {
            id: r.id,
            customer_id: r.customer_id,
            customer_name: r.customer_name,
            status,
            total_cents: r.total_cents,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CustomerRow {
    id: String,
    name: Option<String>,
    credit_limit_cents: i64,
    credit_reserved_cents: i64,
    limit_at: Option<i64>,
    reserved_at: Option<i64>,
    updated_at: i64,
}

impl From<CustomerRow> for Customer {
    fn from(r: CustomerRow) -> Self {
        Customer {
            id: r.id,
            name: r.name,
            credit_limit_cents: r.credit_limit_cents,
            credit_reserved_cents: r.credit_reserved_cents,
            limit_at: r.limit_at,
            reserved_at: r.reserved_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    seq: i64,
    kind: String,
    customer_id: String,
    order_id: Option<String>,
    data: String,
}

impl TryFrom<ChangeRow> for Change {
    type Error = StoreError;
    fn try_from(r: ChangeRow) -> Result<Self, StoreError> {
        let kind = Kind::parse(&r.kind).ok_or_else(|| StoreError::Corrupt {
            table: "changes",
            reason: format!("unknown kind {:?}", r.kind),
        })?;
        Ok(Change {
            seq: r.seq,
            kind,
            customer_id: r.customer_id,
            order_id: r.order_id,
            data: r.data.into(),
        })
    }
}

fn orders(rows: Vec<OrderRow>) -> Result<Vec<Order>, StoreError> {
    rows.into_iter().map(Order::try_from).collect()
}

/// A page of a listing: the rows and, when there are more, the cursor of the next page.
#[derive(Debug)]
pub struct Page {
    pub orders: Vec<Order>,
    pub next: Option<i64>,
}

/// What a listing asks for.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub customer_id: Option<String>,
    /// Rows before this position (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// The current state of what a feed filter covers, as of change `seq`.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub seq: i64,
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
}

/// One page of the change log, with the oldest change still retained when it was read.
#[derive(Debug)]
pub struct ChangePage {
    pub changes: Vec<Change>,
    pub oldest: Option<i64>,
}

/// What SQLite may hold in memory, per connection.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// The page cache, in KiB.
    pub cache_kib: u32,
    /// The memory-mapped part of the file, in MiB.
    pub mmap_mib: u32,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            cache_kib: 4096,
            mmap_mib: 0,
        }
    }
}

/// The read model's SQLite file.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) and migrates the file named by `database.url`.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        Self::open_with(settings, Memory::default()).await
    }

    /// [`Store::open`] with SQLite's memory bounded by `memory`.
    pub async fn open_with(
        settings: &DatabaseSettings,
        memory: Memory,
    ) -> Result<Self, StoreError> {
        let url = settings.url.expose_secret();
        // A pool of in-memory databases would be a pool of separate databases.
        if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::NotSqlite);
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // Readers never block the writer and the writer never blocks readers.
            .journal_mode(SqliteJournalMode::Wal)
            // Durable at every checkpoint, not every commit: a power cut may lose the last
            // commits, which the topics redeliver (offsets are stored after the commit
            // only, and a lost commit is redelivered from the last committed offset).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("temp_store", "memory")
            // Checkpoint every ~40 MB of WAL instead of 4 MB: pages written again and
            // again between checkpoints are copied into the database once.
            .pragma("wal_autocheckpoint", "10000")
            // Negative: KiB rather than pages.
            .pragma("cache_size", format!("-{}", memory.cache_kib))
            .pragma("mmap_size", (u64::from(memory.mmap_mib) << 20).to_string())
            .page_size(PAGE_SIZE)
            // The batch's look-ups return hundreds of rows, which the connection's thread
            // hands over through a bounded channel: at sqlx's 50 it stops, and both threads
            // switch, every 50 rows.
            .row_buffer_size(1024);
        let pool = SqlitePoolOptions::new()
            // One writer and at least one reader.
            .max_connections(settings.max_connections.max(2))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The id drawn when this file was created (see the migration), drawn anew while the
    /// read model is still empty: a file that never applied an event (or was emptied) must
    /// replay the topics from the start, whatever a group of its old generation committed
    /// (poison messages, say, commit offsets without applying anything).
    pub async fn generation(&self) -> Result<String, StoreError> {
        sqlx::query(
            "UPDATE meta SET value = lower(hex(randomblob(16))) WHERE key = 'generation' \
             AND NOT EXISTS (SELECT 1 FROM processed_events) \
             AND NOT EXISTS (SELECT 1 FROM changes)",
        )
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'generation'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The oldest retained and the newest change number (0 when there was none yet).
    pub async fn seq_bounds(&self) -> Result<(Option<i64>, i64), StoreError> {
        let (oldest, newest): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(seq), max(seq) FROM changes")
                .fetch_one(&self.pool)
                .await?;
        Ok((oldest, newest.unwrap_or(0)))
    }

    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    // The writer's statements, run inside its batch transaction.

    /// Records the event keys and tells, position by position, which are new: `false` for
    /// keys applied before and for repeats within `keys`.
    ///
    /// Nearly every batch is entirely new, so that case is tried first: the keys go in
    /// without `RETURNING` under a savepoint, and when every row went in nothing comes back
    /// (sending 2,500 keys back only to learn they were all new cost both threads). Otherwise
    /// the savepoint is rolled back and the keys go in again, returning those that were new.
    pub async fn record_processed(
        conn: &mut SqliteConnection,
        keys: &[EventKey],
    ) -> Result<Vec<bool>, StoreError> {
        sqlx::query("SAVEPOINT record_processed")
            .execute(&mut *conn)
            .await?;
        let mut inserted = 0;
        for chunk in chunks(keys) {
            inserted += insert_processed(chunk)
                .build()
                .execute(&mut *conn)
                .await?
                .rows_affected();
        }
        if inserted == keys.len() as u64 {
            sqlx::query("RELEASE record_processed")
                .execute(&mut *conn)
                .await?;
            return Ok(vec![true; keys.len()]);
        }
        sqlx::query("ROLLBACK TO record_processed; RELEASE record_processed")
            .execute(&mut *conn)
            .await?;
        let mut fresh: HashSet<EventKey> = HashSet::with_capacity(keys.len());
        for chunk in chunks(keys) {
            let mut qb = insert_processed(chunk);
            qb.push(" RETURNING occurred_at, event_id");
            let inserted: Vec<(i64, Vec<u8>)> = qb.build_query_as().fetch_all(&mut *conn).await?;
            fresh.extend(
                inserted
                    .into_iter()
                    .map(|(occurred_at, event_id)| EventKey {
                        occurred_at,
                        event_id,
                    }),
            );
        }
        Ok(keys.iter().map(|k| fresh.remove(k)).collect())
    }

    pub async fn load_orders(
        conn: &mut SqliteConnection,
        ids: &[&str],
    ) -> Result<Vec<Order>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in chunks(ids) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE id IN ("
            ));
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(")");
            let rows: Vec<OrderRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
            out.extend(orders(rows)?);
        }
        Ok(out)
    }

    pub async fn load_customers(
        conn: &mut SqliteConnection,
        ids: &[&str],
    ) -> Result<Vec<Customer>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in chunks(ids) {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id IN ("
            ));
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(")");
            let rows: Vec<CustomerRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
            out.extend(rows.into_iter().map(Customer::from));
        }
        Ok(out)
    }

    /// The customer's orders that do not carry `name` (yet).
    pub async fn orders_named_otherwise(
        conn: &mut SqliteConnection,
        customer_id: &str,
        name: &str,
    ) -> Result<Vec<Order>, StoreError> {
        let rows: Vec<OrderRow> = sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = ? AND customer_name IS NOT ?"
        ))
        .bind(customer_id)
        .bind(name)
        .fetch_all(conn)
        .await?;
        orders(rows)
    }

    /// Runs statements built by [`Store::prepare_writes`].
    pub async fn execute(conn: &mut SqliteConnection, writes: Writes) -> Result<(), StoreError> {
        for mut statement in writes.0 {
            statement.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The statements that write the rows the batch changed (in the order they first
    /// changed, so new orders get their positions in event order) and its changes. Built
    /// without the connection, they own their arguments, so the writer can build them on
    /// another thread while SQLite works.
    pub fn prepare_writes(ws: &WorkingSet) -> Writes {
        let mut seen = HashSet::new();
        let mut changed_orders = Vec::new();
        let mut changed_customers = Vec::new();
        for change in &ws.changes {
            match (change.kind, &change.order_id) {
                (Kind::Order, Some(id)) if seen.insert(id.as_str()) => {
                    changed_orders.push(&ws.orders[id])
                }
                (Kind::Customer, _) if seen.insert(change.customer_id.as_str()) => {
                    changed_customers.push(&ws.customers[&change.customer_id])
                }
                _ => {}
            }
        }
        let mut statements = Vec::new();
        for chunk in chunks(&changed_orders) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO orders ({ORDER_COLUMNS}) "));
            qb.push_values(chunk, |mut row, o| {
                row.push_bind(o.id.clone())
                    .push_bind(o.customer_id.clone())
                    .push_bind(o.customer_name.clone())
                    .push_bind(o.status.as_str())
                    .push_bind(o.total_cents)
                    .push_bind(o.reason.clone())
                    .push_bind(o.created_at)
                    .push_bind(o.updated_at);
            });
            qb.push(
                // Not customer_id: it never changes (every event of an order names the same
                // customer), and leaving it out spares its index an update.
                " ON CONFLICT (id) DO UPDATE SET \
                 customer_name = excluded.customer_name, status = excluded.status, \
                 total_cents = excluded.total_cents, reason = excluded.reason, \
                 created_at = excluded.created_at, updated_at = excluded.updated_at",
            );
            statements.push(qb);
        }
        for chunk in chunks(&changed_customers) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO customers ({CUSTOMER_COLUMNS}) "));
            qb.push_values(chunk, |mut row, c| {
                row.push_bind(c.id.clone())
                    .push_bind(c.name.clone())
                    .push_bind(c.credit_limit_cents)
                    .push_bind(c.credit_reserved_cents)
                    .push_bind(c.limit_at)
                    .push_bind(c.reserved_at)
                    .push_bind(c.updated_at);
            });
            qb.push(
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 credit_limit_cents = excluded.credit_limit_cents, \
                 credit_reserved_cents = excluded.credit_reserved_cents, \
                 limit_at = excluded.limit_at, reserved_at = excluded.reserved_at, \
                 updated_at = excluded.updated_at",
            );
            statements.push(qb);
        }
        for chunk in chunks(&ws.changes) {
            let mut qb =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO changes ({CHANGE_COLUMNS}) "));
            qb.push_values(chunk, |mut row, c: &Arc<Change>| {
                row.push_bind(c.seq)
                    .push_bind(c.kind.as_str())
                    .push_bind(c.customer_id.clone())
                    .push_bind(c.order_id.clone())
                    .push_bind(String::from(&*c.data));
            });
            statements.push(qb);
        }
        Writes(statements)
    }

    /// Drops the changes up to `seq` from the log.
    pub async fn trim_changes(conn: &mut SqliteConnection, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM changes WHERE seq <= ?")
            .bind(seq)
            .execute(conn)
            .await?;
        Ok(())
    }

    // The readers' queries.

    pub async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let row: Option<OrderRow> =
            sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Order::try_from).transpose()
    }

    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        let row: Option<CustomerRow> = sqlx::query_as(&format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Customer::from))
    }

    /// Whether anything is known about the customer: their row, or one of their orders
    /// (an order can arrive before the registration).
    pub async fn customer_known(&self, id: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM customers WHERE id = ?1) \
             OR EXISTS (SELECT 1 FROM orders WHERE customer_id = ?1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Orders newest first, by their insertion position: a stable order for keyset paging.
    pub async fn list_orders(&self, q: &ListQuery) -> Result<Page, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT pos, {ORDER_COLUMNS} FROM orders WHERE 1 = 1"
        ));
        if let Some(status) = q.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(customer) = &q.customer_id {
            qb.push(" AND customer_id = ").push_bind(customer.as_str());
        }
        if let Some(before) = q.before {
            qb.push(" AND pos < ").push_bind(before);
        }
        qb.push(" ORDER BY pos DESC LIMIT ")
            .push_bind(i64::from(q.limit) + 1);
        #[derive(sqlx::FromRow)]
        struct Positioned {
            pos: i64,
            #[sqlx(flatten)]
            order: OrderRow,
        }
        let mut rows: Vec<Positioned> = qb.build_query_as().fetch_all(&self.pool).await?;
        let next = if rows.len() > q.limit as usize {
            rows.truncate(q.limit as usize);
            rows.last().map(|r| r.pos)
        } else {
            None
        };
        let orders = rows
            .into_iter()
            .map(|r| Order::try_from(r.order))
            .collect::<Result<_, _>>()?;
        Ok(Page { orders, next })
    }

    /// Changes after `after` up to `upto` that match `filter`, at most `limit`, read in one
    /// transaction with the oldest change still retained (to tell trimmed from unmatched).
    pub async fn changes_page(
        &self,
        after: i64,
        upto: i64,
        filter: &Filter,
        limit: u32,
    ) -> Result<ChangePage, StoreError> {
        let mut tx = self.pool.begin().await?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM changes")
            .fetch_one(&mut *tx)
            .await?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > "
        ));
        qb.push_bind(after).push(" AND seq <= ").push_bind(upto);
        if let Some(customer) = &filter.customer_id {
            qb.push(" AND customer_id = ").push_bind(customer.as_str());
        }
        if let Some(order) = &filter.order_id {
            qb.push(" AND order_id = ").push_bind(order.as_str());
        }
        qb.push(" ORDER BY seq LIMIT ").push_bind(i64::from(limit));
        let rows: Vec<ChangeRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(ChangePage {
            changes: rows
                .into_iter()
                .map(Change::try_from)
                .collect::<Result<_, _>>()?,
            oldest,
        })
    }

    /// The rows `filter` covers and the change number they are current as of, read in one
    /// transaction.
    pub async fn snapshot(&self, filter: &Filter) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM changes")
            .fetch_one(&mut *tx)
            .await?;
        let customers: Vec<CustomerRow> = match (&filter.customer_id, &filter.order_id) {
            // Customer changes carry no order id: an order filter covers no customer.
            (_, Some(_)) => Vec::new(),
            (Some(customer), None) => {
                sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = ?"
                ))
                .bind(customer)
                .fetch_all(&mut *tx)
                .await?
            }
            (None, None) => {
                sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers ORDER BY id"
                ))
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {ORDER_COLUMNS} FROM orders WHERE 1 = 1"));
        if let Some(customer) = &filter.customer_id {
            qb.push(" AND customer_id = ").push_bind(customer.as_str());
        }
        if let Some(order) = &filter.order_id {
            qb.push(" AND id = ").push_bind(order.as_str());
        }
        qb.push(" ORDER BY pos");
        let order_rows: Vec<OrderRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(Snapshot {
            seq: seq.unwrap_or(0),
            customers: customers.into_iter().map(Customer::from).collect(),
            orders: orders(order_rows)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(n: u16) -> EventKey {
        EventKey {
            occurred_at: 1_700_000_000_000 + i64::from(n),
            event_id: [n.to_be_bytes(); 8].concat(),
        }
    }

    async fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("view.db").display());
        let store = Store::open(&DatabaseSettings {
            url: url.into(),
            max_connections: 2,
        })
        .await
        .unwrap();
        (dir, store)
    }

    /// Rows go to SQLite as the bound values of multi-row statements: every value must come
    /// back exactly, however awkward its characters and however large its numbers.
    #[tokio::test]
    async fn written_rows_read_back_exactly() {
        let (_dir, store) = temp_store().await;
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
        };
        let plain = Order {
            id: "order-2".into(),
            customer_name: None,
            reason: None,
            status: Status::Pending,
            total_cents: 0,
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
        };
        let mut ws = WorkingSet::new(1);
        let change = |seq, kind, order_id: Option<&str>, data: &str| {
            Arc::new(Change {
                seq,
                kind,
                customer_id: "customer-1".into(),
                order_id: order_id.map(Into::into),
                data: data.into(),
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

        let mut tx = store.begin().await.unwrap();
        Store::execute(&mut tx, Store::prepare_writes(&ws))
            .await
            .unwrap();
        tx.commit().await.unwrap();

        assert_eq!(store.order("order-1").await.unwrap(), Some(order.clone()));
        assert_eq!(store.order("order-2").await.unwrap(), Some(plain.clone()));
        assert_eq!(store.customer("customer-1").await.unwrap(), Some(customer));
        let page = store
            .changes_page(0, 10, &Filter::default(), 10)
            .await
            .unwrap();
        let written: Vec<Change> = ws.changes.iter().map(|c| Change::clone(c)).collect();
        assert_eq!(page.changes, written);
        let mut conn = store.pool.acquire().await.unwrap();
        let mut loaded = Store::load_orders(&mut conn, &["order-2", "missing", "order-1"])
            .await
            .unwrap();
        loaded.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(loaded, [order, plain]);
    }

    #[tokio::test]
    async fn processed_keys_are_new_once_whichever_path_finds_it() {
        let (_dir, store) = temp_store().await;
        let mut tx = store.begin().await.unwrap();
        // All new: the path without RETURNING.
        let all: Vec<EventKey> = (0..300).map(key).collect();
        let fresh = Store::record_processed(&mut tx, &all[..200]).await.unwrap();
        assert!(fresh.iter().all(|f| *f));
        // Some seen before, one repeated within the batch: rolled back, then RETURNING.
        let mixed = [key(199), key(200), key(201), key(200), key(0)];
        let fresh = Store::record_processed(&mut tx, &mixed).await.unwrap();
        assert_eq!(fresh, [false, true, true, false, false]);
        // What the rolled-back attempt inserted is not left behind, nor is what it skipped.
        let fresh = Store::record_processed(&mut tx, &all[200..]).await.unwrap();
        assert_eq!(
            fresh.iter().filter(|f| **f).count(),
            98,
            "all but 200 and 201"
        );
        tx.commit().await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(count, 300);
    }

    #[test]
    fn chunks_cover_everything_with_few_sizes() {
        for n in [0usize, 1, 3, 17, 255, 256, 500, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let parts: Vec<&[usize]> = chunks(&items).collect();
            assert_eq!(parts.concat(), items);
            assert!(parts.iter().all(|p| CHUNKS.contains(&p.len())));
        }
    }
}
