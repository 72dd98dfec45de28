//! Commands reach Kafka as Avro with the right key, metadata and cents, and only then are
//! accepted; without Kafka nothing is.

use std::time::{Duration, Instant};

use feedline_schemas::types::{
    CancelOrder, ChangeCreditLimit, CustomerCommand, CustomerCommandPayload, OrderCommand,
    OrderCommandPayload, PlaceOrder, RegisterCustomer,
};
use feedline_schemas::{CUSTOMER_COMMANDS, ORDER_COMMANDS};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Answer, Options, TestApp};
use crate::stub_order_view::{self, STUB_CUSTOMER, UNKNOWN_ORDER};

#[track_caller]
fn assert_accepted(answer: &Answer, id_field: &str, collection: &str, feed_param: &str) -> String {
    assert_eq!(answer.status, 202, "{answer:#?}");
    let id = answer.body[id_field].as_str().expect("an id").to_owned();
    Uuid::parse_str(&id).expect("a uuid");
    assert_eq!(answer.body["status_url"], format!("/{collection}/{id}"));
    assert_eq!(answer.body["feed_url"], format!("/feed?{feed_param}={id}"));
    assert_eq!(answer.header("location"), format!("/{collection}/{id}"));
    assert!(
        answer.body["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    id
}

#[tokio::test]
async fn placing_orders_publishes_place_order_keyed_by_customer() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("orders:write")).await;
    let customer = Uuid::new_v4().to_string();

    let first = app
        .post_json(
            "/orders",
            &token,
            &json!({"customer_id": customer, "total": "60.00"}),
        )
        .await;
    let first_id = assert_accepted(&first, "order_id", "orders", "order_id");

    // A JSON number, and the client's own correlation id.
    let second = app
        .send(
            app.http
                .post(app.at("/orders"))
                .bearer_auth(&token)
                .header("x-correlation-id", "flow-42")
                .json(&json!({"customer_id": customer.to_uppercase(), "total": 12.5})),
        )
        .await;
    let second_id = assert_accepted(&second, "order_id", "orders", "order_id");
    assert_eq!(second.body["correlation_id"], "flow-42");
    assert_eq!(second.header("x-correlation-id"), "flow-42");

    let published = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    let find = |id: &str| {
        published
            .iter()
            .find(|(_, c)| matches!(&c.payload, OrderCommandPayload::PlaceOrder(p) if p.order_id == id))
            .unwrap_or_else(|| panic!("order {id} not published: {published:#?}"))
    };
    let (key, command) = find(&first_id);
    assert_eq!(key, &customer);
    assert_eq!(
        command.payload,
        OrderCommandPayload::PlaceOrder(PlaceOrder {
            order_id: first_id.clone(),
            customer_id: customer.clone(),
            total_cents: 6000,
        })
    );
    assert_eq!(command.correlation_id, first.body["correlation_id"]);
    assert_eq!(command.causation_id, None);
    assert_eq!(command.producer, "gateway-test");
    Uuid::parse_str(&command.event_id).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let age = now_ms - command.occurred_at;
    assert!(
        (0..60_000).contains(&age),
        "occurred_at {}",
        command.occurred_at
    );

    let (key, command) = find(&second_id);
    assert_eq!(key, &customer, "uuid normalized to lower case");
    assert_eq!(command.correlation_id, "flow-42");
    assert!(
        matches!(&command.payload, OrderCommandPayload::PlaceOrder(p) if p.total_cents == 1250)
    );
    assert_ne!(published[0].1.event_id, published[1].1.event_id);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"feedline_gateway_commands_published_total{command="PlaceOrder",service="gateway"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"feedline_gateway_requests_total{method="POST",route="/orders",status="202",service="gateway"} 2"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn customers_and_credit_limits_publish_customer_commands() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("customers:write")).await;

    let registered = app
        .post_json(
            "/customers",
            &token,
            &json!({"name": "  Ada Lovelace ", "credit_limit": "100.00"}),
        )
        .await;
    let customer = assert_accepted(&registered, "customer_id", "customers", "customer_id");

    let changed = app
        .send(
            app.http
                .put(app.at(&format!("/customers/{customer}/credit-limit")))
                .bearer_auth(&token)
                .json(&json!({"credit_limit": 150})),
        )
        .await;
    assert_eq!(
        assert_accepted(&changed, "customer_id", "customers", "customer_id"),
        customer
    );

    let published = app
        .read_commands::<CustomerCommand>(CUSTOMER_COMMANDS, 2)
        .await;
    // Same key, so same partition, so this order.
    assert_eq!(published[0].0, customer);
    assert_eq!(published[1].0, customer);
    assert_eq!(
        published[0].1.payload,
        CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
            customer_id: customer.clone(),
            name: "Ada Lovelace".into(),
            credit_limit_cents: 10_000,
        })
    );
    assert_eq!(
        published[1].1.payload,
        CustomerCommandPayload::ChangeCreditLimit(ChangeCreditLimit {
            customer_id: customer.clone(),
            credit_limit_cents: 15_000,
        })
    );
    for (_, command) in &published {
        assert_eq!(command.producer, "gateway-test");
        assert_eq!(command.causation_id, None);
    }
    assert_eq!(
        published[0].1.correlation_id,
        registered.body["correlation_id"]
    );
}

#[tokio::test]
async fn cancelling_asks_order_view_for_the_customer() {
    let order_view = stub_order_view::start(false).await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(order_view),
        ..Options::default()
    })
    .await;
    let token = app.token(Some("orders:write")).await;
    let order = Uuid::new_v4().to_string();

    let cancelled = app
        .post_json(
            &format!("/orders/{order}/cancel"),
            &token,
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(
        assert_accepted(&cancelled, "order_id", "orders", "order_id"),
        order
    );
    // No body at all is fine too.
    let again = app
        .send(
            app.http
                .post(app.at(&format!("/orders/{order}/cancel")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(again.status, 202, "{again:#?}");

    let published = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    assert_eq!(published[0].0, STUB_CUSTOMER);
    assert_eq!(
        published[0].1.payload,
        OrderCommandPayload::CancelOrder(CancelOrder {
            order_id: order.clone(),
            customer_id: STUB_CUSTOMER.into(),
            reason: Some("changed my mind".into()),
        })
    );
    assert!(
        matches!(&published[1].1.payload, OrderCommandPayload::CancelOrder(c) if c.reason.is_none())
    );

    let unknown = app
        .post_json(
            &format!("/orders/{UNKNOWN_ORDER}/cancel"),
            &token,
            &json!({}),
        )
        .await;
    unknown.assert_error(404, "not_found", None);
}

#[tokio::test]
async fn cancelling_without_order_view_is_a_bad_gateway() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("orders:write")).await;
    let answer = app
        .post_json(
            &format!("/orders/{}/cancel", Uuid::new_v4()),
            &token,
            &json!({}),
        )
        .await;
    answer.assert_error(503, "upstream_unavailable", None);
}

#[tokio::test]
async fn nothing_is_accepted_when_kafka_is_unreachable() {
    // The registry runs on the real broker; the gateway's Kafka is a port where nothing
    // listens, and a short message timeout stands for "the broker never acknowledged".
    let app = TestApp::spawn_with(Options {
        kafka_bootstrap: Some("127.0.0.1:1".into()),
        ensure_topics: false,
        message_timeout_ms: 1500,
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;

    let started = Instant::now();
    let order = app
        .post_json(
            "/orders",
            &token,
            &json!({"customer_id": Uuid::new_v4(), "total": "60.00"}),
        )
        .await;
    order.assert_error(503, "kafka_unavailable", None);
    assert!(!order.header("retry-after").is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));

    let customer = app
        .post_json(
            "/customers",
            &token,
            &json!({"name": "x", "credit_limit": "1.00"}),
        )
        .await;
    customer.assert_error(503, "kafka_unavailable", None);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"feedline_gateway_command_failures_total{command="PlaceOrder",service="gateway"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("feedline_gateway_commands_published_total{"),
        "{metrics}"
    );
}
