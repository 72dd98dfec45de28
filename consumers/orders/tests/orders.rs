//! The order service against the real broker, registry and PostgreSQL, playing the gateway
//! (commands) and the customer service (credit decisions) by hand.

use std::time::Duration;

use feedline::dlq::header as dlqh;
use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS, ORDER_EVENTS};
use feedline_testkit::*;
use rdkafka::Message;
use sqlx::PgPool;
use uuid::Uuid;

async fn start() -> (TestEnv, Service, PgPool) {
    let env = TestEnv::start(3).await;
    let url = fresh_database().await;
    let service = Service::start(feedline_orders::spawn, env.settings("orders", &url)).await;
    let pool = connect(&url).await;
    (env, service, pool)
}

/// (status, reason, version) of an order, if it exists.
async fn order_row(pool: &PgPool, id: Uuid) -> Option<(String, Option<String>, i32)> {
    sqlx::query_as("SELECT status, reason, version FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("query orders")
}

/// The event of `order` matching `kind`, once read.
fn find(
    events: &[(String, OrderEvent)],
    order: Uuid,
    kind: fn(&OrderEventPayload) -> bool,
) -> Option<&(String, OrderEvent)> {
    let order = order.to_string();
    events
        .iter()
        .find(|(_, e)| order_id(e) == order && kind(&e.payload))
}

fn is_created(p: &OrderEventPayload) -> bool {
    matches!(p, OrderEventPayload::OrderCreated(_))
}
fn is_approved(p: &OrderEventPayload) -> bool {
    matches!(p, OrderEventPayload::OrderApproved(_))
}
fn is_rejected(p: &OrderEventPayload) -> bool {
    matches!(p, OrderEventPayload::OrderRejected(_))
}
fn is_cancelled(p: &OrderEventPayload) -> bool {
    matches!(p, OrderEventPayload::OrderCancelled(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_lifecycle_follows_commands_and_credit_decisions() {
    let (env, service, pool) = start().await;
    let mut events = env.events::<OrderEvent>(ORDER_EVENTS);
    let customer = Uuid::new_v4();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    // PlaceOrder → PENDING + OrderCreated, caused by the command, in its flow, keyed by
    // customer, and dated when the gateway accepted the command (here: a minute ago).
    let mut command = place(customer, a, 6000);
    command.occurred_at -= 60_000;
    env.send(ORDER_COMMANDS, customer, &command).await;
    events
        .until("OrderCreated", |e| find(e, a, is_created).is_some())
        .await;
    let (key, created) = find(&events.events, a, is_created).unwrap();
    assert_eq!(key, &customer.to_string());
    assert_eq!(
        created.causation_id.as_deref(),
        Some(command.event_id.as_str())
    );
    assert_eq!(created.correlation_id, command.correlation_id);
    assert_eq!(
        created.occurred_at, command.occurred_at,
        "placed when accepted"
    );
    assert!(
        created.producer.starts_with("orders-"),
        "{}",
        created.producer
    );
    let OrderEventPayload::OrderCreated(payload) = &created.payload else {
        unreachable!()
    };
    assert_eq!(payload.total_cents, 6000);
    assert_eq!(payload.customer_id, customer.to_string());
    assert_eq!(order_row(&pool, a).await, Some(("PENDING".into(), None, 1)));

    // CreditReserved → APPROVED + OrderApproved.
    let credit = reserved(customer, a, 6000, 6000, 10_000);
    env.send(CREDIT_EVENTS, customer, &credit).await;
    events
        .until("OrderApproved", |e| find(e, a, is_approved).is_some())
        .await;
    let (_, approved) = find(&events.events, a, is_approved).unwrap();
    assert_eq!(
        approved.causation_id.as_deref(),
        Some(credit.event_id.as_str())
    );
    assert_eq!(
        order_row(&pool, a).await,
        Some(("APPROVED".into(), None, 2))
    );

    // CreditLimitExceeded → REJECTED with the reason + OrderRejected.
    env.send(ORDER_COMMANDS, customer, &place(customer, b, 5000))
        .await;
    events
        .until("OrderCreated of b", |e| find(e, b, is_created).is_some())
        .await;
    env.send(CREDIT_EVENTS, customer, &exceeded(customer, b, 5000, 4000))
        .await;
    events
        .until("OrderRejected", |e| find(e, b, is_rejected).is_some())
        .await;
    let (_, rejected) = find(&events.events, b, is_rejected).unwrap();
    assert!(
        matches!(&rejected.payload, OrderEventPayload::OrderRejected(r) if r.reason == "credit limit exceeded")
    );
    assert_eq!(
        order_row(&pool, b).await,
        Some(("REJECTED".into(), Some("credit limit exceeded".into()), 2))
    );

    // CancelOrder of the APPROVED order → CANCELLED + OrderCancelled.
    env.send(ORDER_COMMANDS, customer, &cancel(customer, a))
        .await;
    events
        .until("OrderCancelled", |e| find(e, a, is_cancelled).is_some())
        .await;
    let (_, cancelled) = find(&events.events, a, is_cancelled).unwrap();
    assert!(
        matches!(&cancelled.payload, OrderEventPayload::OrderCancelled(c) if c.total_cents == 6000 && c.reason.as_deref() == Some("changed my mind"))
    );
    assert_eq!(
        order_row(&pool, a).await,
        Some(("CANCELLED".into(), Some("changed my mind".into()), 3))
    );

    // Nothing moves a REJECTED or CANCELLED order, nor an unknown one: logged and counted.
    env.send(ORDER_COMMANDS, customer, &cancel(customer, b))
        .await;
    env.send(
        CREDIT_EVENTS,
        customer,
        &reserved(customer, a, 6000, 6000, 10_000),
    )
    .await;
    env.send(ORDER_COMMANDS, customer, &cancel(customer, Uuid::new_v4()))
        .await;
    let text = eventually("the ignored messages counted", PATIENCE, async || {
        let text = service.metrics().await;
        let ignored = |reason: &str| {
            metric(
                &text,
                &format!("feedline_orders_ignored_total{{reason=\"{reason}\"}}"),
            )
        };
        (ignored("not_cancellable") == 1.0
            && ignored("not_pending") == 1.0
            && ignored("unknown_order") == 1.0)
            .then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "feedline_orders_created_total"), 2.0);
    assert_eq!(metric(&text, "feedline_orders_approved_total"), 1.0);
    assert_eq!(metric(&text, "feedline_orders_rejected_total"), 1.0);
    assert_eq!(metric(&text, "feedline_orders_cancelled_total"), 1.0);
    assert_eq!(order_row(&pool, a).await.unwrap().0, "CANCELLED");
    assert_eq!(order_row(&pool, b).await.unwrap().0, "REJECTED");
    events.settle(Duration::from_millis(500)).await;
    assert_eq!(events.events.len(), 5, "no event for ignored messages");

    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_command_is_applied_once() {
    let (env, service, pool) = start().await;
    let mut events = env.events::<OrderEvent>(ORDER_EVENTS);
    let customer = Uuid::new_v4();
    let order = Uuid::new_v4();

    // The same message twice (what a producer retry or a redelivery looks like), then the
    // same order again under a new event id (a client retry).
    let command = place(customer, order, 700);
    let bytes = env
        .encoder::<OrderCommand>(ORDER_COMMANDS)
        .await
        .encode(&command)
        .unwrap();
    env.send_raw(ORDER_COMMANDS, customer, &bytes).await;
    env.send_raw(ORDER_COMMANDS, customer, &bytes).await;
    env.send(ORDER_COMMANDS, customer, &place(customer, order, 700))
        .await;
    // Same key, same partition: once this one is out, the three before it were handled.
    let sentinel = Uuid::new_v4();
    env.send(ORDER_COMMANDS, customer, &place(customer, sentinel, 1))
        .await;
    events
        .until("the sentinel's OrderCreated", |e| {
            find(e, sentinel, is_created).is_some()
        })
        .await;
    events.settle(Duration::from_millis(500)).await;

    let created: Vec<_> = events
        .events
        .iter()
        .filter(|(_, e)| order_id(e) == order.to_string())
        .collect();
    assert_eq!(created.len(), 1, "one OrderCreated for the order");
    assert_eq!(
        order_row(&pool, order).await,
        Some(("PENDING".into(), None, 1))
    );
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_events WHERE event_id = $1")
            .bind(&command.event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(processed, 1);
    let text = service.metrics().await;
    assert_eq!(
        metric(
            &text,
            "feedline_orders_ignored_total{reason=\"already_placed\"}"
        ),
        1.0,
        "the client retry was seen and ignored"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_and_the_consumer_goes_on() {
    let (env, service, pool) = start().await;
    let customer = Uuid::new_v4();

    // Not Avro; Confluent-framed but with a schema id nobody registered; valid Avro but
    // not a valid order.
    env.send_raw(ORDER_COMMANDS, customer, b"{\"not\": \"avro\"}")
        .await;
    env.send_raw(
        ORDER_COMMANDS,
        customer,
        &[0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
    )
    .await;
    env.send(
        ORDER_COMMANDS,
        customer,
        &place(customer, Uuid::new_v4(), 0),
    )
    .await;
    let good = Uuid::new_v4();
    env.send(ORDER_COMMANDS, customer, &place(customer, good, 100))
        .await;

    eventually("the good order", PATIENCE, async || {
        order_row(&pool, good).await
    })
    .await;
    let mut dlq = env.reader(&format!("{ORDER_COMMANDS}.dlq"));
    dlq.until("three dead letters", |m| m.len() >= 3).await;
    let mut dead = dlq.messages.clone();
    dead.sort_by_key(|m| {
        header(m, dlqh::SOURCE_OFFSET)
            .unwrap()
            .parse::<i64>()
            .unwrap()
    });

    let source = env.topic(ORDER_COMMANDS);
    let kinds: Vec<_> = dead
        .iter()
        .map(|m| header(m, dlqh::ERROR_KIND).unwrap())
        .collect();
    assert_eq!(kinds, ["framing", "unknown-schema", "validation"]);
    for m in &dead {
        assert_eq!(header(m, dlqh::SOURCE_TOPIC), Some(source.as_str()));
        assert!(header(m, dlqh::SOURCE_PARTITION).is_some());
        assert_eq!(header(m, dlqh::GROUP), Some(env.topic("orders").as_str()));
        assert!(!header(m, dlqh::ERROR).unwrap().is_empty());
        assert_eq!(m.key(), Some(customer.to_string().as_bytes()));
    }
    assert_eq!(
        dead[0].payload(),
        Some(&b"{\"not\": \"avro\"}"[..]),
        "original bytes kept"
    );
    assert!(
        header(&dead[2], dlqh::ERROR)
            .unwrap()
            .contains("total_cents")
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "only the good order was stored");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_before_its_database_it_waits_for_it_instead_of_exiting() {
    let env = TestEnv::start(3).await;
    let url = fresh_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = connect(&database_url()).await;
    sqlx::query(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let outage = async {
        // The outage lasts three seconds (the fault's length, not a wait for a condition):
        // the service keeps trying all along instead of exiting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        sqlx::query(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
            .execute(&admin)
            .await
            .unwrap();
        tokio::time::Instant::now()
    };
    let starting = async {
        let service = Service::start(feedline_orders::spawn, env.settings("orders", &url)).await;
        (service, tokio::time::Instant::now())
    };
    let (reopened, (service, started)) = tokio::join!(outage, starting);
    assert!(
        started >= reopened,
        "started before its database took connections"
    );

    let mut events = env.events::<OrderEvent>(ORDER_EVENTS);
    let (order, customer) = (Uuid::new_v4(), Uuid::new_v4());
    env.send(ORDER_COMMANDS, customer, &place(customer, order, 500))
        .await;
    events.until("the order created", |e| !e.is_empty()).await;
    service.stop().await;
}
