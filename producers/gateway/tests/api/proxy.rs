//! Queries and the feed passed through to order-view (a stub here), and waiting for a
//! command's outcome.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Options, TestApp};
use crate::stub_order_view::{
    self, BROKEN_CUSTOMER, STUB_CUSTOMER, STUB_LIMIT_CENTS, UNKNOWN_ORDER,
};

async fn app_with_stub(completes: bool) -> TestApp {
    let order_view = stub_order_view::start(completes).await;
    TestApp::spawn_with(Options {
        order_view_url: Some(order_view),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn queries_pass_through_with_status_headers_and_body() {
    let app = app_with_stub(true).await;
    let token = app.token(Some("feed:read")).await;
    let id = Uuid::new_v4();

    let order = app
        .send(
            app.http
                .get(app.at(&format!("/orders/{id}")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(order.status, 200, "{order:#?}");
    assert_eq!(order.body["order_id"], id.to_string());
    assert_eq!(order.body["customer_id"], STUB_CUSTOMER);

    let missing = app
        .send(
            app.http
                .get(app.at(&format!("/orders/{UNKNOWN_ORDER}")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body["error"]["message"], "no such order",
        "order-view's own body"
    );

    let list = app
        .send(
            app.http
                .get(app.at("/orders?status=APPROVED&limit=5"))
                .bearer_auth(&token)
                .header("x-correlation-id", "c-1"),
        )
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(
        list.header("x-stub"),
        "order-view",
        "response headers pass through"
    );
    let echo = &list.body["echo"];
    assert_eq!(echo["query"], "status=APPROVED&limit=5");
    assert_eq!(
        echo["authorization"],
        Value::Null,
        "the token stays at the gateway"
    );
    assert_eq!(echo["correlation_id"], "c-1");

    let customer = app
        .send(
            app.http
                .get(app.at(&format!("/customers/{id}")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(customer.body["credit_limit_cents"], STUB_LIMIT_CENTS);

    // Whatever status order-view answers is passed on, even an odd one.
    let orders = app
        .send(
            app.http
                .get(app.at(&format!("/customers/{id}/orders")))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(orders.status, 418);
    assert_eq!(orders.body["customer_id"], id.to_string());
}

#[tokio::test]
async fn the_feed_streams_through_unbuffered_with_last_event_id() {
    let app = app_with_stub(true).await;
    let token = app.token(Some("feed:read")).await;

    // The stub sends one event and then nothing, ever: seeing it proves nothing is buffered.
    let ticket = app.ticket(&token).await;
    let response = app
        .http
        .get(app.at(&format!("/feed?customer_id=c1&ticket={ticket}")))
        .header("last-event-id", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !text.contains("\n\n") {
            let chunk = body.next().await.expect("stream open").unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("first event arrives while the stream stays open");
    assert!(text.contains("event: echo"), "{text}");
    let data: Value = serde_json::from_str(
        text.lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("a data line"),
    )
    .unwrap();
    assert_eq!(
        data["query"], "customer_id=c1",
        "filter kept, ticket removed: {data}"
    );
    assert_eq!(data["last_event_id"], "41");
    assert_eq!(data["authorization"], Value::Null);

    // Header auth works on the feed too.
    let with_header = app
        .http
        .get(app.at("/feed"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_header.status(), 200);

    // An open feed does not hold up shutdown.
    drop(body);
    let mut open = with_header.bytes_stream();
    let _ = tokio::time::timeout(Duration::from_secs(5), open.next()).await;
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn order_view_down_is_a_503_naming_no_host() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("feed:read")).await;
    for path in [
        format!("/orders/{}", Uuid::new_v4()),
        "/orders".to_owned(),
        format!("/customers/{}/orders", Uuid::new_v4()),
        "/feed".to_owned(),
    ] {
        let answer = app
            .send(app.http.get(app.at(&path)).bearer_auth(&token))
            .await;
        answer.assert_error(503, "upstream_unavailable", None);
        assert!(!answer.header("retry-after").is_empty(), "{answer:#?}");
        // Nothing of where order-view lives reaches the client.
        assert!(!answer.text.contains("127.0.0.1"), "{answer:#?}");
        assert!(!answer.text.contains("http"), "{answer:#?}");
    }
    assert!(app.metrics().await.contains(
        r#"feedline_gateway_upstream_errors_total{kind="unreachable",service="gateway"} 4"#
    ));
}

#[tokio::test]
async fn an_order_view_server_error_is_a_503_with_retry_after_and_no_detail() {
    let app = app_with_stub(false).await;
    let token = app.token(Some("feed:read")).await;
    let answer = app
        .send(
            app.http
                .get(app.at(&format!("/customers/{BROKEN_CUSTOMER}")))
                .bearer_auth(&token),
        )
        .await;
    answer.assert_error(503, "upstream_unavailable", None);
    assert!(!answer.header("retry-after").is_empty(), "{answer:#?}");
    assert!(!answer.text.contains("10.0.0.7"), "{answer:#?}");
    assert!(app.metrics().await.contains(
        r#"feedline_gateway_upstream_errors_total{kind="server_error",service="gateway"} 1"#
    ));
}

#[tokio::test]
async fn waiting_answers_with_the_outcome() {
    let app = app_with_stub(true).await;
    let token = app.token(None).await;
    let customer = Uuid::new_v4();

    let started = Instant::now();
    let placed = app
        .post_json(
            "/orders?wait=5s",
            &token,
            &json!({"customer_id": customer, "total": "60.00"}),
        )
        .await;
    assert_eq!(placed.status, 200, "{placed:#?}");
    assert_eq!(placed.body["status"], "APPROVED");
    assert_eq!(placed.body["order"]["status"], "APPROVED");
    let id = placed.body["order_id"].as_str().unwrap();
    assert_eq!(placed.body["status_url"], format!("/orders/{id}"));
    assert_eq!(placed.header("location"), format!("/orders/{id}"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // The same through `Prefer: wait=`.
    let preferred = app
        .send(
            app.http
                .post(app.at("/orders"))
                .bearer_auth(&token)
                .header("prefer", "wait=5")
                .json(&json!({"customer_id": customer, "total": "1.00"})),
        )
        .await;
    assert_eq!(preferred.status, 200, "{preferred:#?}");

    let registered = app
        .post_json(
            "/customers?wait=5s",
            &token,
            &json!({"name": "waits", "credit_limit": "100.00"}),
        )
        .await;
    assert_eq!(registered.status, 200, "{registered:#?}");
    assert_eq!(
        registered.body["customer"]["customer_id"],
        registered.body["customer_id"]
    );

    // The stub shows a limit of 100.00: waiting for exactly that completes...
    let same = app
        .send(
            app.http
                .put(app.at(&format!("/customers/{customer}/credit-limit?wait=3s")))
                .bearer_auth(&token)
                .json(&json!({"credit_limit": "100.00"})),
        )
        .await;
    assert_eq!(same.status, 200, "{same:#?}");
    // ... and another limit never shows, so the wait times out into a 202.
    let other = app
        .send(
            app.http
                .put(app.at(&format!("/customers/{customer}/credit-limit?wait=500ms")))
                .bearer_auth(&token)
                .json(&json!({"credit_limit": "150.00"})),
        )
        .await;
    assert_eq!(other.status, 202, "{other:#?}");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"feedline_gateway_wait_outcomes_total{outcome="completed",service="gateway"} 4"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_wait_that_times_out_is_still_accepted() {
    let app = app_with_stub(false).await;
    let token = app.token(None).await;
    let started = Instant::now();
    let answer = app
        .post_json(
            "/orders?wait=1s",
            &token,
            &json!({"customer_id": Uuid::new_v4(), "total": "60.00"}),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 202, "{answer:#?}");
    assert!(answer.body["order_id"].is_string());
    assert!(answer.body.get("status").is_none());
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(app.metrics().await.contains(
        r#"feedline_gateway_wait_outcomes_total{outcome="timeout",service="gateway"} 1"#
    ));
}
