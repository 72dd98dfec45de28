//! The saga end to end: the order and the customer service in-process, each on its own
//! database, talking only through the real topics.

use feedline_schemas::{CUSTOMER_COMMANDS, ORDER_COMMANDS};
use feedline_testkit::*;
use sqlx::PgPool;
use uuid::Uuid;

async fn status(pool: &PgPool, order: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order)
        .fetch_optional(pool)
        .await
        .expect("query orders")
}

/// Waits until `order` reaches `want` (and fails if it settles elsewhere).
async fn reaches(pool: &PgPool, order: Uuid, want: &str) {
    let reached = eventually(
        &format!("order {order} to leave PENDING"),
        PATIENCE,
        async || status(pool, order).await.filter(|s| s != "PENDING"),
    )
    .await;
    assert_eq!(reached, want, "order {order}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_approves_rejects_cancels_and_releases_credit() {
    let env = TestEnv::start(3).await;
    let (orders_url, customers_url) = (fresh_database().await, fresh_database().await);
    let orders = Service::start(feedline_orders::spawn, env.settings("orders", &orders_url)).await;
    let customers = Service::start(
        feedline_customers::spawn,
        env.settings("customers", &customers_url),
    )
    .await;
    let (orders_db, customers_db) = (connect(&orders_url).await, connect(&customers_url).await);

    let customer = Uuid::new_v4();
    env.send(CUSTOMER_COMMANDS, customer, &register(customer, 10_000))
        .await;
    eventually("the customer registered", PATIENCE, async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers WHERE id = $1")
            .bind(customer)
            .fetch_one(&customers_db)
            .await
            .ok()
            .filter(|n| *n == 1)
    })
    .await;

    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    env.send(ORDER_COMMANDS, customer, &place(customer, first, 6000))
        .await;
    reaches(&orders_db, first, "APPROVED").await;
    env.send(ORDER_COMMANDS, customer, &place(customer, second, 5000))
        .await;
    reaches(&orders_db, second, "REJECTED").await;

    env.send(ORDER_COMMANDS, customer, &cancel(customer, first))
        .await;
    eventually("the first order's credit released", PATIENCE, async || {
        sqlx::query_scalar::<_, String>("SELECT status FROM reservations WHERE order_id = $1")
            .bind(first)
            .fetch_optional(&customers_db)
            .await
            .unwrap()
            .filter(|s| s == "RELEASED")
    })
    .await;
    assert_eq!(
        status(&orders_db, first).await.as_deref(),
        Some("CANCELLED")
    );

    env.send(ORDER_COMMANDS, customer, &place(customer, third, 5000))
        .await;
    reaches(&orders_db, third, "APPROVED").await;

    // Both databases agree.
    let orders_rows: Vec<(Uuid, String, i64, Option<String>)> =
        sqlx::query_as("SELECT id, status, total_cents, reason FROM orders ORDER BY created_at")
            .fetch_all(&orders_db)
            .await
            .unwrap();
    assert_eq!(
        orders_rows,
        vec![
            // A cancellation keeps its reason.
            (
                first,
                "CANCELLED".into(),
                6000,
                Some("changed my mind".into())
            ),
            (
                second,
                "REJECTED".into(),
                5000,
                Some("credit limit exceeded".into())
            ),
            (third, "APPROVED".into(), 5000, None),
        ]
    );
    let (limit, reserved): (i64, i64) = sqlx::query_as(
        "SELECT credit_limit_cents, credit_reserved_cents FROM customers WHERE id = $1",
    )
    .bind(customer)
    .fetch_one(&customers_db)
    .await
    .unwrap();
    assert_eq!((limit, reserved), (10_000, 5000));
    let mut reservations: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT order_id, amount_cents, status FROM reservations")
            .fetch_all(&customers_db)
            .await
            .unwrap();
    reservations.sort_by_key(|(_, amount, _)| -amount);
    assert_eq!(
        reservations,
        vec![
            (first, 6000, "RELEASED".into()),
            (third, 5000, "RESERVED".into()),
        ],
        "the rejected order reserved nothing"
    );

    orders.stop().await;
    customers.stop().await;
}
