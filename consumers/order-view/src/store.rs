//! The SQLite read model: opening and migrating the file, and the readers' queries (on
//! sqlx's pool). The single writer has a connection of its own: see [`crate::writer`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use feedline::config::DatabaseSettings;
use feedline::errors::{Classify, ErrorClass};
use secrecy::ExposeSecret;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};

use crate::model::{Change, Customer, Filter, Kind, Order, Status};
use crate::writer::Writer;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] sqlx::Error),
    #[error("sqlite (writer): {0}")]
    Write(#[from] rusqlite::Error),
    #[error("the batch ended before it was complete; nothing of it was written")]
    Abandoned,
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot migrate the read model: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database.url must name a SQLite file (sqlite:path) for order-view")]
    NotSqlite,
    #[error("unreadable row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Sqlite(e) => e.class(),
            StoreError::Write(rusqlite::Error::SqliteFailure(e, _)) => {
                feedline::errors::sqlite_class(&e.extended_code.to_string())
            }
            // The handler went before the batch was written; the next try writes it all.
            StoreError::Abandoned | StoreError::Thread(_) => ErrorClass::Transient,
            _ => ErrorClass::Unknown,
        }
    }
}

/// 16 KiB, not SQLite's 4 KiB: the writer appends to the right edges of its tables and
/// indexes, and bigger pages split a quarter as often and carry a quarter of the WAL frame
/// headers and checksums. Consuming into order-view went from 149–169k to 175–191k events/s
/// (same hour, in alternation); e2e latency and the saga did not move. It applies to files
/// created from now on (an existing file keeps its size until a `VACUUM`).
const PAGE_SIZE: u32 = 16384;

/// The columns of a row as [`OrderRow`] holds them, in its order (the writer reads them by
/// position).
pub(crate) const ORDER_COLUMNS: &str =
    "id, customer_id, customer_name, status, total_cents, reason, created_at, updated_at, tenant";
/// The same for [`CustomerRow`].
pub(crate) const CUSTOMER_COLUMNS: &str = "id, name, credit_limit_cents, credit_reserved_cents, limit_at, reserved_at, updated_at, tenant";
const CHANGE_COLUMNS: &str = "seq, kind, customer_id, order_id, data, tenant";

/// An orders row as stored; [`Order::try_from`] checks what the text columns hold.
#[derive(sqlx::FromRow)]
pub(crate) struct OrderRow {
    pub(crate) id: String,
    pub(crate) customer_id: String,
    pub(crate) customer_name: Option<String>,
    pub(crate) status: String,
    pub(crate) total_cents: i64,
    pub(crate) reason: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) tenant: Option<String>,
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
            tenant: r.tenant,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CustomerRow {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) credit_limit_cents: i64,
    pub(crate) credit_reserved_cents: i64,
    pub(crate) limit_at: Option<i64>,
    pub(crate) reserved_at: Option<i64>,
    pub(crate) updated_at: i64,
    pub(crate) tenant: Option<String>,
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
            tenant: r.tenant,
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
    tenant: Option<String>,
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
            tenant: r.tenant,
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
    /// Only orders of this tenant's customers; `None`: every order.
    pub tenant: Option<String>,
    /// Rows before this position (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

/// The current state of what a feed filter covers, as of change `seq`: at most a limit of
/// customers and of orders (the newest), so that a snapshot of a large read model is not
/// read into memory whole.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub seq: i64,
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
    /// Some customers or orders were left out.
    pub truncated: bool,
    /// When orders were left out: the `cursor` of `GET /orders` (with the same
    /// `customer_id`) that pages on to the older ones.
    pub next_cursor: Option<i64>,
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
    file: Arc<Path>,
    memory: Memory,
}

impl Store {
    /// The readers' pool (what readiness checks).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

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
            // The writer's connection checkpoints (see `crate::writer`); should one of these
            // write, it checkpoints at the same ~40 MB of WAL.
            .pragma("wal_autocheckpoint", "2500")
            // Negative: KiB rather than pages.
            .pragma("cache_size", format!("-{}", memory.cache_kib))
            .pragma("mmap_size", (u64::from(memory.mmap_mib) << 20).to_string())
            .page_size(PAGE_SIZE)
            // Snapshots return thousands of rows, which the connection's thread hands over
            // through a bounded channel: at sqlx's 50 it stops, and both threads switch,
            // every 50 rows.
            .row_buffer_size(1024);
        let file: Arc<Path> = PathBuf::from(options.get_filename()).into();
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, file, memory })
    }

    /// The file's single writer (a connection of its own), keeping `retain` changes in the
    /// log. Opened on a blocking thread: opening reads the file.
    pub async fn writer(&self, retain: i64) -> Result<Writer, StoreError> {
        let (file, memory) = (self.file.clone(), self.memory);
        tokio::task::spawn_blocking(move || Writer::open(&file, memory, retain))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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
    /// (an order can arrive before the registration). With a tenant, only rows of that
    /// tenant count: another tenant's customer is as unknown as a missing one.
    pub async fn customer_known(&self, id: &str, tenant: Option<&str>) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM customers WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)) \
             OR EXISTS (SELECT 1 FROM orders WHERE customer_id = ?1 AND (?2 IS NULL OR tenant = ?2))",
        )
        .bind(id)
        .bind(tenant)
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
        if let Some(tenant) = &q.tenant {
            qb.push(" AND tenant = ").push_bind(tenant.as_str());
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
        if let Some(tenant) = &filter.tenant {
            qb.push(" AND tenant = ").push_bind(tenant.as_str());
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
    /// transaction: up to `limit` customers (by id) and the `limit` newest orders.
    pub async fn snapshot(&self, filter: &Filter, limit: u32) -> Result<Snapshot, StoreError> {
        let fetch = i64::from(limit) + 1;
        let mut tx = self.pool.begin().await?;
        let seq: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM changes")
            .fetch_one(&mut *tx)
            .await?;
        let customers: Vec<CustomerRow> = if filter.order_id.is_some() {
            // Customer changes carry no order id: an order filter covers no customer.
            Vec::new()
        } else {
            let mut qb = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE 1 = 1"
            ));
            if let Some(customer) = &filter.customer_id {
                qb.push(" AND id = ").push_bind(customer.as_str());
            }
            if let Some(tenant) = &filter.tenant {
                qb.push(" AND tenant = ").push_bind(tenant.as_str());
            }
            qb.push(" ORDER BY id LIMIT ").push_bind(fetch);
            qb.build_query_as().fetch_all(&mut *tx).await?
        };
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT pos, {ORDER_COLUMNS} FROM orders WHERE 1 = 1"
        ));
        if let Some(customer) = &filter.customer_id {
            qb.push(" AND customer_id = ").push_bind(customer.as_str());
        }
        if let Some(order) = &filter.order_id {
            qb.push(" AND id = ").push_bind(order.as_str());
        }
        if let Some(tenant) = &filter.tenant {
            qb.push(" AND tenant = ").push_bind(tenant.as_str());
        }
        qb.push(" ORDER BY pos DESC LIMIT ").push_bind(fetch);
        #[derive(sqlx::FromRow)]
        struct Positioned {
            pos: i64,
            #[sqlx(flatten)]
            order: OrderRow,
        }
        let mut order_rows: Vec<Positioned> = qb.build_query_as().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut customers = customers;
        let customers_cut = customers.len() > limit as usize;
        customers.truncate(limit as usize);
        let next_cursor = if order_rows.len() > limit as usize {
            order_rows.truncate(limit as usize);
            order_rows.last().map(|r| r.pos)
        } else {
            None
        };
        // Oldest first, as the changes that follow them.
        order_rows.reverse();
        Ok(Snapshot {
            seq: seq.unwrap_or(0),
            customers: customers.into_iter().map(Customer::from).collect(),
            orders: orders(order_rows.into_iter().map(|r| r.order).collect())?,
            truncated: customers_cut || next_cursor.is_some(),
            next_cursor,
        })
    }
}
