//! Two replicas of the customer service in one consumer group, one of them stopped while
//! orders are still coming: every order gets exactly one credit decision, no reservation
//! is applied twice, nothing is lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_COMMANDS, ORDER_EVENTS};
use feedline_testkit::*;
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

const CUSTOMERS: usize = 50;
const ORDERS: usize = 1000;
const LIMIT: i64 = 50_000;

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query")
}

/// Orders decided so far (reserved or refused).
fn decided(events: &[(String, CreditEvent)]) -> HashSet<&str> {
    events
        .iter()
        .filter_map(|(_, e)| match &e.payload {
            CreditEventPayload::CreditReserved(r) => Some(r.order_id.as_str()),
            CreditEventPayload::CreditLimitExceeded(x) => Some(x.order_id.as_str()),
            CreditEventPayload::CreditReleased(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_work_and_one_stops_mid_run() {
    let env = TestEnv::start(6).await;
    let url = fresh_database().await;
    let settings = env.settings("customers", &url);
    let one = Service::start(feedline_customers::spawn, settings.clone()).await;
    let two = Service::start(feedline_customers::spawn, settings).await;
    let pool = connect(&url).await;
    let mut credit = env.events::<CreditEvent>(CREDIT_EVENTS);

    let customers: Vec<Uuid> = (0..CUSTOMERS).map(|_| Uuid::new_v4()).collect();
    let registrations = || -> Vec<_> {
        customers
            .iter()
            .map(|c| (*c, register(*c, LIMIT)))
            .collect()
    };
    env.send_all(CUSTOMER_COMMANDS, &registrations()).await;
    eventually("every customer registered", PATIENCE, async || {
        (count(&pool, "SELECT count(*) FROM customers").await == CUSTOMERS as i64).then_some(())
    })
    .await;

    // The second member joins at the first member's next heartbeat. Until both consume,
    // send the registrations again (new event ids, so repeats that change nothing): they
    // cover every partition, so each member's counter moves once it owns some.
    let consumed = async |service: &Service, topic: &str| {
        let series = format!("feedline_consumed_total{{topic=\"{}\"}}", env.topic(topic));
        metric(&service.metrics().await, &series)
    };
    let mut rounds = 1;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while consumed(&two, CUSTOMER_COMMANDS).await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second replica never got partitions"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        env.send_all(CUSTOMER_COMMANDS, &registrations()).await;
        rounds += 1;
    }

    // About 20 orders of about 45.00 per customer against a limit of 500.00: roughly half
    // are refused, so both decisions are exercised.
    let mut rng = rand::rng();
    let orders: Vec<(Uuid, OrderEvent)> = (0..ORDERS)
        .map(|i| {
            let customer = customers[i % CUSTOMERS];
            let amount = rng.random_range(100..=9000);
            (customer, created(customer, Uuid::new_v4(), amount))
        })
        .collect();
    let (first_half, second_half) = orders.split_at(ORDERS / 2);
    env.send_all(ORDER_EVENTS, first_half).await;
    credit
        .until("the first decisions", |e| decided(e).len() >= 100)
        .await;
    // Both members own order-events partitions and the first half's keys cover them all,
    // so both handle some of it; one may still be inside its first batch's transaction
    // when the other has decided a hundred, hence the wait rather than a snapshot.
    eventually("both replicas handled orders", PATIENCE, async || {
        let one_consumed = consumed(&one, ORDER_EVENTS).await;
        let two_consumed = consumed(&two, ORDER_EVENTS).await;
        (one_consumed > 0.0 && two_consumed > 0.0).then_some(())
    })
    .await;
    // Stopped with work in flight while more arrives: its partitions move to the other
    // replica, which resumes from the committed offsets.
    tokio::join!(one.stop(), env.send_all(ORDER_EVENTS, second_half));

    credit
        .until("every order decided", |e| decided(e).len() >= ORDERS)
        .await;
    let recorded = (CUSTOMERS * rounds + ORDERS) as i64;
    eventually(
        "the outbox drained and every event recorded",
        PATIENCE,
        async || {
            let outbox = count(&pool, "SELECT count(*) FROM outbox").await;
            let processed = count(&pool, "SELECT count(*) FROM processed_events").await;
            (outbox == 0 && processed == recorded).then_some(())
        },
    )
    .await;
    // Whatever duplicate there were would be on the topic by now; give it time to show.
    credit.settle(Duration::from_secs(1)).await;

    // Exactly one decision per order, no release.
    let sent: HashSet<String> = orders
        .iter()
        .map(|(_, e)| match &e.payload {
            OrderEventPayload::OrderCreated(o) => o.order_id.clone(),
            _ => unreachable!(),
        })
        .collect();
    let decisions = decided(&credit.events);
    assert_eq!(
        credit.events.len(),
        ORDERS,
        "one credit event per order, nothing more"
    );
    assert_eq!(decisions.len(), ORDERS);
    assert!(decisions.iter().all(|o| sent.contains(*o)));

    // Both replicas decided orders.
    let producers: HashSet<&str> = credit
        .events
        .iter()
        .map(|(_, e)| e.producer.as_str())
        .collect();
    assert_eq!(
        producers.len(),
        2,
        "decisions by both replicas: {producers:?}"
    );

    // Per customer, reservations were applied one after the other, none lost or doubled:
    // the running totals in the events add up, and match the database.
    let mut reserved_by_events: HashMap<String, i64> = HashMap::new();
    let mut reservations = 0;
    for (key, event) in &credit.events {
        if let CreditEventPayload::CreditReserved(r) = &event.payload {
            assert_eq!(key, &r.customer_id);
            let total = reserved_by_events.entry(r.customer_id.clone()).or_default();
            *total += r.amount_cents;
            assert_eq!(
                r.credit_reserved_cents, *total,
                "running total of {}",
                r.customer_id
            );
            assert!(*total <= LIMIT);
            reservations += 1;
        }
    }
    assert!(
        reservations > 0 && reservations < ORDERS,
        "{reservations} reserved"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM reservations WHERE status = 'RESERVED'"
        )
        .await,
        reservations as i64
    );
    let in_db: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.credit_reserved_cents, coalesce(sum(r.amount_cents), 0)::bigint
         FROM customers c LEFT JOIN reservations r ON r.customer_id = c.id
         GROUP BY c.id, c.credit_reserved_cents",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let in_db: BTreeMap<String, (i64, i64)> = in_db
        .into_iter()
        .map(|(id, reserved, sum)| (id.to_string(), (reserved, sum)))
        .collect();
    assert_eq!(in_db.len(), CUSTOMERS);
    for (customer, (reserved, sum)) in &in_db {
        assert_eq!(
            reserved, sum,
            "customer {customer}: reserved = sum of its reservations"
        );
        assert_eq!(
            *reserved,
            reserved_by_events.get(customer).copied().unwrap_or(0),
            "customer {customer}: database and events agree"
        );
    }
    two.stop().await;
}
