//! The customers database: schema set-up and the set-based statements a batch needs (one
//! round trip per statement, whatever the batch size).

pub use feedline::db::DbError;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use uuid::Uuid;

use crate::credit::{Customer, Reservation, ReservationStatus};

/// The advisory lock that serializes schema set-up between replicas starting together.
pub const SETUP_LOCK: i64 = 0x0fee_d200;

/// This service's migrations (the platform adds its tables, see [`feedline::db::prepare`]).
pub fn migrations() -> Migrator {
    sqlx::migrate!()
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    order_id: Uuid,
    customer_id: Uuid,
    amount_cents: i64,
    status: String,
}

/// Loads and locks the reservations of `order_ids` until the transaction ends. Every batch
/// locks reservations first, then customers, each in id order, so two replicas whose
/// batches overlap wait for each other instead of deadlocking.
pub async fn lock_reservations(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<Vec<Reservation>, DbError> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ReservationRow> = sqlx::query_as(
        "SELECT order_id, customer_id, amount_cents, status
         FROM reservations WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status = ReservationStatus::parse(&r.status).ok_or_else(|| {
                DbError::UnknownValue(format!(
                    "reservation of order {} has an unknown status {:?}",
                    r.order_id, r.status
                ))
            })?;
            Ok(Reservation {
                order_id: r.order_id,
                customer_id: r.customer_id,
                amount_cents: r.amount_cents,
                status,
            })
        })
        .collect()
}

/// Loads and locks the customers among `ids` until the transaction ends (see
/// [`lock_reservations`] for the order).
pub async fn lock_customers(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<Customer>, DbError> {
    let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT id, name, credit_limit_cents, credit_reserved_cents
         FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, limit, reserved)| Customer {
            id,
            name,
            credit_limit_cents: limit,
            credit_reserved_cents: reserved,
        })
        .collect())
}

/// Inserts new customers; returns how many were inserted (fewer than given when another
/// transaction inserted one of the ids first).
pub async fn insert_customers(
    conn: &mut PgConnection,
    customers: &[&Customer],
) -> Result<u64, DbError> {
    if customers.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = customers.iter().map(|c| c.id).collect();
    let names: Vec<&str> = customers.iter().map(|c| c.name.as_str()).collect();
    let limits: Vec<i64> = customers.iter().map(|c| c.credit_limit_cents).collect();
    let reserved: Vec<i64> = customers.iter().map(|c| c.credit_reserved_cents).collect();
    let done = sqlx::query(
        "INSERT INTO customers (id, name, credit_limit_cents, credit_reserved_cents)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&limits)
    .bind(&reserved)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Writes the limit and reserved credit of customers locked by [`lock_customers`].
pub async fn update_customers(
    conn: &mut PgConnection,
    customers: &[&Customer],
) -> Result<(), DbError> {
    if customers.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = customers.iter().map(|c| c.id).collect();
    let limits: Vec<i64> = customers.iter().map(|c| c.credit_limit_cents).collect();
    let reserved: Vec<i64> = customers.iter().map(|c| c.credit_reserved_cents).collect();
    sqlx::query(
        "UPDATE customers c
         SET credit_limit_cents = u.credit_limit, credit_reserved_cents = u.reserved,
             updated_at = now()
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS u(id, credit_limit, reserved)
         WHERE c.id = u.id",
    )
    .bind(&ids)
    .bind(&limits)
    .bind(&reserved)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts new reservations; returns how many were inserted.
pub async fn insert_reservations(
    conn: &mut PgConnection,
    reservations: &[&Reservation],
) -> Result<u64, DbError> {
    if reservations.is_empty() {
        return Ok(0);
    }
    let orders: Vec<Uuid> = reservations.iter().map(|r| r.order_id).collect();
    let customers: Vec<Uuid> = reservations.iter().map(|r| r.customer_id).collect();
    let amounts: Vec<i64> = reservations.iter().map(|r| r.amount_cents).collect();
    let statuses: Vec<&str> = reservations.iter().map(|r| r.status.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO reservations (order_id, customer_id, amount_cents, status)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[])
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&orders)
    .bind(&customers)
    .bind(&amounts)
    .bind(&statuses)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Writes the status of reservations locked by [`lock_reservations`].
pub async fn update_reservations(
    conn: &mut PgConnection,
    reservations: &[&Reservation],
) -> Result<(), DbError> {
    if reservations.is_empty() {
        return Ok(());
    }
    let orders: Vec<Uuid> = reservations.iter().map(|r| r.order_id).collect();
    let statuses: Vec<&str> = reservations.iter().map(|r| r.status.as_str()).collect();
    sqlx::query(
        "UPDATE reservations r SET status = u.status, updated_at = now()
         FROM unnest($1::uuid[], $2::text[]) AS u(order_id, status)
         WHERE r.order_id = u.order_id",
    )
    .bind(&orders)
    .bind(&statuses)
    .execute(conn)
    .await?;
    Ok(())
}
