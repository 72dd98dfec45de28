//! The orders database: schema set-up and the set-based statements a batch needs (one round
//! trip per statement, whatever the batch size).

pub use feedline::db::DbError;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use uuid::Uuid;

use crate::order::{Order, Status};

/// The advisory lock that serializes schema set-up between replicas starting together.
pub const SETUP_LOCK: i64 = 0x0fee_d100;

/// This service's migrations (the platform adds its tables, see [`feedline::db::prepare`]).
pub fn migrations() -> Migrator {
    sqlx::migrate!()
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    customer_id: Uuid,
    status: String,
    total_cents: i64,
    reason: Option<String>,
    version: i32,
}

/// Loads the orders among `ids` and locks them until the transaction ends, so a replica
/// handling another topic's partition cannot change them underneath (ordered by id, so two
/// batches lock in the same order).
pub async fn lock_orders(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Order>, DbError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, customer_id, status, total_cents, reason, version
         FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status = Status::parse(&r.status).ok_or_else(|| {
                DbError::UnknownValue(format!(
                    "order {} has an unknown status {:?}",
                    r.id, r.status
                ))
            })?;
            Ok(Order {
                id: r.id,
                customer_id: r.customer_id,
                status,
                total_cents: r.total_cents,
                reason: r.reason,
                version: r.version,
            })
        })
        .collect()
}

struct Columns {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    statuses: Vec<&'static str>,
    totals: Vec<i64>,
    reasons: Vec<Option<String>>,
    versions: Vec<i32>,
}

impl Columns {
    fn of(orders: &[&Order]) -> Self {
        Columns {
            ids: orders.iter().map(|o| o.id).collect(),
            customers: orders.iter().map(|o| o.customer_id).collect(),
            statuses: orders.iter().map(|o| o.status.as_str()).collect(),
            totals: orders.iter().map(|o| o.total_cents).collect(),
            reasons: orders.iter().map(|o| o.reason.clone()).collect(),
            versions: orders.iter().map(|o| o.version).collect(),
        }
    }
}

/// Inserts new orders; returns how many were inserted (fewer than given when another
/// transaction inserted one of the ids first).
pub async fn insert_orders(conn: &mut PgConnection, orders: &[&Order]) -> Result<u64, DbError> {
    if orders.is_empty() {
        return Ok(0);
    }
    let c = Columns::of(orders);
    let done = sqlx::query(
        "INSERT INTO orders (id, customer_id, status, total_cents, reason, version)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::int[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&c.ids)
    .bind(&c.customers)
    .bind(&c.statuses)
    .bind(&c.totals)
    .bind(&c.reasons)
    .bind(&c.versions)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Writes the new status, reason and version of orders locked by [`lock_orders`].
pub async fn update_orders(conn: &mut PgConnection, orders: &[&Order]) -> Result<(), DbError> {
    if orders.is_empty() {
        return Ok(());
    }
    let c = Columns::of(orders);
    sqlx::query(
        "UPDATE orders o
         SET status = u.status, reason = u.reason, version = u.version, updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[]) AS u(id, status, reason, version)
         WHERE o.id = u.id",
    )
    .bind(&c.ids)
    .bind(&c.statuses)
    .bind(&c.reasons)
    .bind(&c.versions)
    .execute(conn)
    .await?;
    Ok(())
}
