//! The customer service against the real broker, registry and PostgreSQL, playing the
//! gateway (commands) and the order service (order events) by hand.

use std::time::Duration;

use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_COMMANDS, CUSTOMER_EVENTS, ORDER_EVENTS};
use feedline_testkit::*;
use sqlx::PgPool;
use uuid::Uuid;

async fn start() -> (TestEnv, Service, PgPool) {
    let env = TestEnv::start(3).await;
    let url = fresh_database().await;
    let service = Service::start(feedline_customers::spawn, env.settings("customers", &url)).await;
    let pool = connect(&url).await;
    (env, service, pool)
}

fn order_of(event: &CreditEvent) -> &str {
    match &event.payload {
        CreditEventPayload::CreditReserved(e) => &e.order_id,
        CreditEventPayload::CreditLimitExceeded(e) => &e.order_id,
        CreditEventPayload::CreditReleased(e) => &e.order_id,
    }
}

/// The `n`-th credit event, once read.
fn nth(events: &[(String, CreditEvent)], n: usize) -> Option<&CreditEventPayload> {
    events.get(n).map(|(_, e)| &e.payload)
}

async fn reserved_cents(pool: &PgPool, customer: Uuid) -> i64 {
    sqlx::query_scalar("SELECT credit_reserved_cents FROM customers WHERE id = $1")
        .bind(customer)
        .fetch_one(pool)
        .await
        .expect("query customers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_reserved_within_the_limit_and_released_on_cancel() {
    let (env, service, pool) = start().await;
    let mut customer_events = env.events::<CustomerEvent>(CUSTOMER_EVENTS);
    let mut credit = env.events::<CreditEvent>(CREDIT_EVENTS);
    let customer = Uuid::new_v4();

    let command = register(customer, 10_000);
    env.send(CUSTOMER_COMMANDS, customer, &command).await;
    customer_events
        .until("CustomerRegistered", |e| !e.is_empty())
        .await;
    let (key, registered) = &customer_events.events[0];
    assert_eq!(key, &customer.to_string());
    assert_eq!(
        registered.causation_id.as_deref(),
        Some(command.event_id.as_str())
    );
    assert_eq!(registered.correlation_id, command.correlation_id);
    assert!(
        registered.producer.starts_with("customers-"),
        "{}",
        registered.producer
    );
    assert_eq!(
        registered.payload,
        CustomerEventPayload::CustomerRegistered(CustomerRegistered {
            customer_id: customer.to_string(),
            name: "Ada Lovelace".into(),
            credit_limit_cents: 10_000,
            tenant: None,
        })
    );

    // Same key, same partition: the events come back in the order the orders were sent.
    let (first, second, third) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let first_created = created(customer, first, 6000);
    env.send(ORDER_EVENTS, customer, &first_created).await;
    credit.until("a first decision", |e| !e.is_empty()).await;
    assert_eq!(
        nth(&credit.events, 0),
        Some(&CreditEventPayload::CreditReserved(CreditReserved {
            order_id: first.to_string(),
            customer_id: customer.to_string(),
            amount_cents: 6000,
            credit_reserved_cents: 6000,
            credit_limit_cents: 10_000,
        }))
    );
    let (key, decision) = &credit.events[0];
    assert_eq!(key, &customer.to_string());
    assert_eq!(
        decision.causation_id.as_deref(),
        Some(first_created.event_id.as_str())
    );
    assert_eq!(decision.correlation_id, first_created.correlation_id);

    env.send(ORDER_EVENTS, customer, &created(customer, second, 5000))
        .await;
    credit.until("a second decision", |e| e.len() >= 2).await;
    assert_eq!(
        nth(&credit.events, 1),
        Some(&CreditEventPayload::CreditLimitExceeded(
            CreditLimitExceeded {
                order_id: second.to_string(),
                customer_id: customer.to_string(),
                amount_cents: 5000,
                credit_available_cents: 4000,
                reason: "credit limit exceeded".into(),
            }
        ))
    );

    env.send(ORDER_EVENTS, customer, &cancelled(customer, first, 6000))
        .await;
    credit.until("the release", |e| e.len() >= 3).await;
    assert_eq!(
        nth(&credit.events, 2),
        Some(&CreditEventPayload::CreditReleased(CreditReleased {
            order_id: first.to_string(),
            customer_id: customer.to_string(),
            amount_cents: 6000,
            credit_reserved_cents: 0,
        }))
    );

    env.send(ORDER_EVENTS, customer, &created(customer, third, 5000))
        .await;
    credit.until("a third decision", |e| e.len() >= 4).await;
    assert!(matches!(
        nth(&credit.events, 3),
        Some(CreditEventPayload::CreditReserved(r)) if r.order_id == third.to_string() && r.credit_reserved_cents == 5000
    ));

    assert_eq!(reserved_cents(&pool, customer).await, 5000);
    let mut reservations: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT order_id, amount_cents, status FROM reservations")
            .fetch_all(&pool)
            .await
            .unwrap();
    reservations.sort_by_key(|(_, amount, _)| -amount);
    assert_eq!(
        reservations,
        vec![
            (first, 6000, "RELEASED".into()),
            (third, 5000, "RESERVED".into())
        ]
    );
    let text = service.metrics().await;
    assert_eq!(metric(&text, "feedline_customers_registered_total"), 1.0);
    assert_eq!(metric(&text, "feedline_credit_reserved_total"), 2.0);
    assert_eq!(
        metric(&text, "feedline_credit_exceeded_total{reason=\"limit\"}"),
        1.0
    );
    assert_eq!(metric(&text, "feedline_credit_released_total"), 1.0);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_customers_repeats_and_limit_changes() {
    let (env, service, pool) = start().await;
    let mut customer_events = env.events::<CustomerEvent>(CUSTOMER_EVENTS);
    let mut credit = env.events::<CreditEvent>(CREDIT_EVENTS);
    let (customer, stranger) = (Uuid::new_v4(), Uuid::new_v4());

    // An order of a customer nobody registered gets no credit.
    let nobody = Uuid::new_v4();
    env.send(ORDER_EVENTS, stranger, &created(stranger, nobody, 100))
        .await;
    credit.until("the refusal", |e| !e.is_empty()).await;
    assert_eq!(
        nth(&credit.events, 0),
        Some(&CreditEventPayload::CreditLimitExceeded(
            CreditLimitExceeded {
                order_id: nobody.to_string(),
                customer_id: stranger.to_string(),
                amount_cents: 100,
                credit_available_cents: 0,
                reason: "unknown customer".into(),
            }
        ))
    );

    // Register twice (the second under a new event id); change the limit of a stranger.
    env.send(CUSTOMER_COMMANDS, customer, &register(customer, 1000))
        .await;
    env.send(CUSTOMER_COMMANDS, customer, &register(customer, 999_999))
        .await;
    env.send(CUSTOMER_COMMANDS, stranger, &change_limit(stranger, 5))
        .await;
    customer_events
        .until("the registration", |e| !e.is_empty())
        .await;
    assert!(matches!(
        &customer_events.events[0].1.payload,
        CustomerEventPayload::CustomerRegistered(r) if r.credit_limit_cents == 1000
    ));

    // An order twice (a new event id each), a cancel of an order without credit, and an
    // approval, which the credit does not depend on: skipped without a trace.
    let order = Uuid::new_v4();
    env.send(ORDER_EVENTS, customer, &created(customer, order, 400))
        .await;
    env.send(ORDER_EVENTS, customer, &created(customer, order, 400))
        .await;
    env.send(ORDER_EVENTS, customer, &cancelled(stranger, nobody, 100))
        .await;
    let approved = OrderEvent::new(
        "test-orders",
        Uuid::new_v4().to_string(),
        None,
        OrderEventPayload::OrderApproved(OrderApproved {
            order_id: order.to_string(),
            customer_id: customer.to_string(),
            total_cents: 400,
        }),
    );
    env.send(ORDER_EVENTS, customer, &approved).await;
    credit.until("the reservation", |e| e.len() >= 2).await;
    assert!(matches!(
        nth(&credit.events, 1),
        Some(CreditEventPayload::CreditReserved(r)) if r.order_id == order.to_string()
    ));

    // Lowering the limit below what is reserved is allowed; the event says what is held.
    env.send(CUSTOMER_COMMANDS, customer, &change_limit(customer, 300))
        .await;
    customer_events
        .until("the limit change", |e| e.len() >= 2)
        .await;
    assert_eq!(
        customer_events.events[1].1.payload,
        CustomerEventPayload::CreditLimitChanged(CreditLimitChanged {
            customer_id: customer.to_string(),
            credit_limit_cents: 300,
            credit_reserved_cents: 400,
        })
    );

    let text = eventually("the ignored messages counted", PATIENCE, async || {
        let text = service.metrics().await;
        let ignored = |reason: &str| {
            metric(
                &text,
                &format!("feedline_customers_ignored_total{{reason=\"{reason}\"}}"),
            )
        };
        (ignored("already_registered") == 1.0
            && ignored("unknown_customer") == 1.0
            && ignored("already_reserved") == 1.0
            && ignored("nothing_reserved") == 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "feedline_credit_limit_changed_total"), 1.0);
    customer_events.settle(Duration::from_millis(300)).await;
    credit.settle(Duration::from_millis(300)).await;
    assert_eq!(
        customer_events.events.len(),
        2,
        "one registration, one change"
    );
    let decisions: Vec<&str> = credit.events.iter().map(|(_, e)| order_of(e)).collect();
    assert_eq!(
        decisions,
        [nobody.to_string(), order.to_string()],
        "one decision per order"
    );
    let (limit, reserved): (i64, i64) = sqlx::query_as(
        "SELECT credit_limit_cents, credit_reserved_cents FROM customers WHERE id = $1",
    )
    .bind(customer)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((limit, reserved), (300, 400));
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_database_refuses_is_dead_lettered_and_the_rest_goes_on() {
    let (env, service, pool) = start().await;
    let mut credit = env.events::<CreditEvent>(CREDIT_EVENTS);
    let mut dead = env.reader(&format!("{CUSTOMER_COMMANDS}.dlq"));
    let (poisoned, fine) = (Uuid::new_v4(), Uuid::new_v4());
    let mut poison = register(poisoned, 1000);
    if let CustomerCommandPayload::RegisterCustomer(r) = &mut poison.payload {
        // Valid Avro and valid UTF-8, but PostgreSQL stores no NUL in text (SQLSTATE 22021).
        r.name = "Ada\u{0}Lovelace".into();
    }
    // In one batch with good commands: the batch is split around the poison.
    env.send_all(
        CUSTOMER_COMMANDS,
        &[
            (fine, register(fine, 1000)),
            (poisoned, poison),
            (fine, change_limit(fine, 2000)),
        ],
    )
    .await;
    // Commands and order events are different topics: the order goes once the limit
    // change is through.
    let mut customer_events = env.events::<CustomerEvent>(CUSTOMER_EVENTS);
    customer_events
        .until("the registration and the limit change", |e| e.len() >= 2)
        .await;
    let order = Uuid::new_v4();
    env.send(ORDER_EVENTS, fine, &created(fine, order, 1500))
        .await;
    credit.until("the reservation", |e| !e.is_empty()).await;
    assert!(matches!(
        nth(&credit.events, 0),
        Some(CreditEventPayload::CreditReserved(r)) if r.order_id == order.to_string()
    ));
    dead.until("the poison dead-lettered", |m| !m.is_empty())
        .await;
    let letter = &dead.messages[0];
    assert_eq!(header(letter, "dlq.error.kind"), Some("permanent"));
    assert!(
        header(letter, "dlq.error").unwrap().contains("0x00"),
        "{:?}",
        header(letter, "dlq.error")
    );
    assert_eq!(
        rdkafka::Message::key(letter),
        Some(poisoned.to_string().as_bytes())
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE id = $1")
        .bind(poisoned)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    service.stop().await;
}
