//! `Idempotency-Key`: a retry gets the same ids and answer and reaches Kafka as the same
//! command (or not at all), on this gateway and on a fresh one; a used key with another
//! request is refused; requests without a key are new commands as before.

use feedline_schemas::types::{
    CustomerCommand, CustomerCommandPayload, OrderCommand, OrderCommandPayload,
};
use feedline_schemas::{CUSTOMER_COMMANDS, ORDER_COMMANDS};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Answer, Options, TestApp};
use crate::stub_order_view::{self, STUB_CUSTOMER};

async fn post_keyed(app: &TestApp, path: &str, token: &str, key: &str, body: &Value) -> Answer {
    app.send(
        app.http
            .post(app.at(path))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body),
    )
    .await
}

fn placed_order_id(command: &OrderCommand) -> &str {
    match &command.payload {
        OrderCommandPayload::PlaceOrder(p) => &p.order_id,
        other => panic!("not a PlaceOrder: {other:?}"),
    }
}

#[tokio::test]
async fn the_same_key_twice_gets_the_same_answer_and_publishes_once() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let customer = Uuid::new_v4().to_string();
    let key = Uuid::new_v4().to_string();
    let order = json!({"customer_id": customer, "total": "60.00"});

    let first = post_keyed(&app, "/orders", &token, &key, &order).await;
    assert_eq!(first.status, 202, "{first:#?}");
    assert_eq!(first.header("idempotent-replayed"), "");
    // The same request in another JSON spelling is a retry too.
    let retry = post_keyed(
        &app,
        "/orders",
        &token,
        &key,
        &json!({"total": 60, "customer_id": customer.to_uppercase()}),
    )
    .await;
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.text, first.text);
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(retry.header("idempotent-replayed"), "true");
    let order_id = first.body["order_id"].as_str().unwrap();

    // A marker for the same customer, so on the same partition, after the retry: had the
    // retry published, its command would come before the marker.
    let marker = app.post_json("/orders", &token, &order).await;
    assert_eq!(marker.status, 202, "{marker:#?}");
    let published = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    assert_eq!(placed_order_id(&published[0].1), order_id);
    assert_eq!(placed_order_id(&published[1].1), marker.body["order_id"]);
    assert_eq!(published[0].1.correlation_id, first.body["correlation_id"]);

    let customer = json!({"name": "Ada", "credit_limit": "100.00"});
    let registered = post_keyed(&app, "/customers", &token, &key, &customer).await;
    registered.assert_error(422, "idempotency_key_reused", Some("Idempotency-Key"));
    let key = Uuid::new_v4().to_string();
    let registered = post_keyed(&app, "/customers", &token, &key, &customer).await;
    let again = post_keyed(&app, "/customers", &token, &key, &customer).await;
    assert_eq!(registered.status, 202, "{registered:#?}");
    assert_eq!(again.text, registered.text);

    let metrics = app.metrics().await;
    for line in [
        r#"feedline_gateway_idempotency_total{outcome="replayed",service="gateway"} 2"#,
        r#"feedline_gateway_idempotency_total{outcome="reused",service="gateway"} 1"#,
        r#"feedline_gateway_commands_published_total{command="RegisterCustomer",service="gateway"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_with_another_request_is_a_422_naming_the_header() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let customer = Uuid::new_v4();
    let key = "order-1";

    let first = post_keyed(
        &app,
        "/orders",
        &token,
        key,
        &json!({"customer_id": customer, "total": "60.00"}),
    )
    .await;
    assert_eq!(first.status, 202, "{first:#?}");
    for other in [
        json!({"customer_id": customer, "total": "61.00"}),
        json!({"customer_id": Uuid::new_v4(), "total": "60.00"}),
    ] {
        post_keyed(&app, "/orders", &token, key, &other)
            .await
            .assert_error(422, "idempotency_key_reused", Some("Idempotency-Key"));
    }
    // Still the first request's key: its retry is answered as before.
    let retry = post_keyed(
        &app,
        "/orders",
        &token,
        key,
        &json!({"customer_id": customer, "total": "60.00"}),
    )
    .await;
    assert_eq!(retry.text, first.text);
}

#[tokio::test]
async fn different_clients_with_the_same_key_get_different_ids() {
    // Two admin clients: a tenant's client would first need order-view to show the
    // customer as its own (see the tenancy tests).
    let app = TestApp::spawn_with(Options {
        extra_toml: format!(
            "[gateway.clients.other]\nsecret_sha256 = \"{}\"\nscopes = [\"orders:write\", \"admin\"]",
            feedline_gateway::auth::hash_secret("other-secret")
        ),
        ..Options::default()
    })
    .await;
    let demo = app.token(Some("orders:write")).await;
    let limited = app.token_for("other", "other-secret", None).await;
    let order = json!({"customer_id": Uuid::new_v4(), "total": "60.00"});

    let a = post_keyed(&app, "/orders", &demo, "shared", &order).await;
    let b = post_keyed(&app, "/orders", &limited, "shared", &order).await;
    assert_eq!(a.status, 202, "{a:#?}");
    assert_eq!(b.status, 202, "{b:#?}");
    assert_ne!(a.body["order_id"], b.body["order_id"]);
    assert_ne!(a.body["correlation_id"], b.body["correlation_id"]);

    let published = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    assert_ne!(published[0].1.event_id, published[1].1.event_id);
}

#[tokio::test]
async fn without_a_key_every_request_is_a_new_command() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let order = json!({"customer_id": Uuid::new_v4(), "total": "60.00"});

    let a = app.post_json("/orders", &token, &order).await;
    let b = app.post_json("/orders", &token, &order).await;
    assert_eq!(a.status, 202, "{a:#?}");
    assert_eq!(b.status, 202, "{b:#?}");
    assert_ne!(a.body["order_id"], b.body["order_id"]);
    let id = Uuid::parse_str(a.body["order_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "time-ordered as before");

    let published = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    assert_ne!(published[0].1.event_id, published[1].1.event_id);
}

#[tokio::test]
async fn malformed_keys_are_a_400_naming_the_header() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let order = json!({"customer_id": Uuid::new_v4(), "total": "60.00"});
    let long = "k".repeat(256);
    for key in ["", "\"\"", "tab\there", long.as_str()] {
        post_keyed(&app, "/orders", &token, key, &order)
            .await
            .assert_error(400, "invalid_parameter", Some("Idempotency-Key"));
    }
    let twice = app
        .send(
            app.http
                .post(app.at("/orders"))
                .bearer_auth(&token)
                .header("idempotency-key", "a")
                .header("idempotency-key", "b")
                .json(&order),
        )
        .await;
    twice.assert_error(400, "invalid_parameter", Some("Idempotency-Key"));
    // The draft's quoted form names the same key as the bare one.
    let bare = post_keyed(&app, "/orders", &token, "k-1", &order).await;
    let quoted = post_keyed(&app, "/orders", &token, "\"k-1\"", &order).await;
    assert_eq!(bare.status, 202, "{bare:#?}");
    assert_eq!(quoted.text, bare.text);
}

#[tokio::test]
async fn a_retry_on_a_restarted_gateway_gets_the_same_ids_and_event_id() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let (order_key, customer_key) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let order = json!({"customer_id": Uuid::new_v4(), "total": "60.00"});
    let customer = json!({"name": "Grace Hopper", "credit_limit": "250.00"});

    let placed = post_keyed(&app, "/orders", &token, &order_key, &order).await;
    let registered = post_keyed(&app, "/customers", &token, &customer_key, &customer).await;
    assert_eq!(placed.status, 202, "{placed:#?}");
    assert_eq!(registered.status, 202, "{registered:#?}");

    // A fresh process knows nothing of the first answers: only the derivation is left.
    let app = app.restart().await;
    let token = app.token(None).await;
    let placed_again = post_keyed(&app, "/orders", &token, &order_key, &order).await;
    let registered_again = post_keyed(&app, "/customers", &token, &customer_key, &customer).await;
    assert_eq!(placed_again.status, 202, "{placed_again:#?}");
    assert_eq!(placed_again.header("idempotent-replayed"), "");
    assert_eq!(placed_again.body, placed.body);
    assert_eq!(registered_again.body, registered.body);

    let orders = app.read_commands::<OrderCommand>(ORDER_COMMANDS, 2).await;
    assert_eq!(orders[0].1.event_id, orders[1].1.event_id);
    assert_eq!(orders[0].1.payload, orders[1].1.payload);
    assert_eq!(orders[0].1.correlation_id, orders[1].1.correlation_id);
    assert_eq!(orders[0].0, orders[1].0);
    assert_eq!(placed_order_id(&orders[0].1), placed.body["order_id"]);

    let customers = app
        .read_commands::<CustomerCommand>(CUSTOMER_COMMANDS, 2)
        .await;
    assert_eq!(customers[0].1.event_id, customers[1].1.event_id);
    assert_eq!(customers[0].1.payload, customers[1].1.payload);
    assert!(matches!(
        &customers[0].1.payload,
        CustomerCommandPayload::RegisterCustomer(r) if r.customer_id == registered.body["customer_id"]
    ));
    app.stop().await;
}

/// Across processes the gateway cannot remember the first body; order-view (a stub here
/// that knows every order, for `STUB_CUSTOMER` and 60.00) tells it what the id stands for.
#[tokio::test]
async fn a_key_whose_order_order_view_holds_for_another_request_is_a_422() {
    let order_view = stub_order_view::start(false).await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(order_view),
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;

    let other = post_keyed(
        &app,
        "/orders",
        &token,
        "k",
        &json!({"customer_id": Uuid::new_v4(), "total": "60.00"}),
    )
    .await;
    other.assert_error(422, "idempotency_key_reused", Some("Idempotency-Key"));
    let same = post_keyed(
        &app,
        "/orders",
        &token,
        "k2",
        &json!({"customer_id": STUB_CUSTOMER, "total": "60.00"}),
    )
    .await;
    assert_eq!(same.status, 202, "{same:#?}");

    // Cancels take keys too.
    let cancel = format!("/orders/{}/cancel", Uuid::new_v4());
    let reason = json!({"reason": "changed my mind"});
    let cancelled = post_keyed(&app, &cancel, &token, "c", &reason).await;
    let again = post_keyed(&app, &cancel, &token, "c", &reason).await;
    assert_eq!(cancelled.status, 202, "{cancelled:#?}");
    assert_eq!(again.text, cancelled.text);
    assert_eq!(again.header("idempotent-replayed"), "true");
    post_keyed(&app, &cancel, &token, "c", &json!({}))
        .await
        .assert_error(422, "idempotency_key_reused", Some("Idempotency-Key"));
}

/// A retry while the first request is still waiting for its outcome gets 409; once the
/// first is answered, the retry gets that answer.
#[tokio::test]
async fn a_retry_while_the_first_is_in_flight_is_a_409() {
    // The stub's orders stay PENDING, so the first request waits out its whole wait.
    let order_view = stub_order_view::start(false).await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(order_view),
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;
    let order = json!({"customer_id": STUB_CUSTOMER, "total": "60.00"});

    let first = {
        let request = app
            .http
            .post(app.at("/orders?wait=5s"))
            .bearer_auth(&token)
            .header("idempotency-key", "slow")
            .json(&order);
        tokio::spawn(async move { Answer::read(request.send().await.unwrap()).await })
    };
    // Published means it is waiting now.
    app.read_commands::<OrderCommand>(ORDER_COMMANDS, 1).await;
    let busy = post_keyed(&app, "/orders?wait=5s", &token, "slow", &order).await;
    busy.assert_error(409, "idempotency_key_in_use", Some("Idempotency-Key"));
    assert_eq!(busy.header("retry-after"), "1");

    let first = first.await.unwrap();
    assert_eq!(first.status, 202, "the wait ran out: {first:#?}");
    let retry = post_keyed(&app, "/orders?wait=5s", &token, "slow", &order).await;
    assert_eq!(retry.status, 202);
    assert_eq!(retry.text, first.text);
}
