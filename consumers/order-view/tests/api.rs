//! The read model and its HTTP API against the real broker and registry: a saga's events,
//! paging, out-of-order arrival, duplicates, bad input and poison messages.

mod common;

use std::collections::BTreeSet;

use common::*;
use feedline::dlq::header as dlqh;
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Follows `next_cursor` from `path` to the end; returns every order id, in order.
async fn all_pages(app: &TestApp, path: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(cursor) => format!("{path}{sep}cursor={cursor}"),
            None => path.to_owned(),
        };
        let page = app.ok(&url).await;
        pages += 1;
        out.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => next = Some(cursor.to_owned()),
            None => return (out, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_builds_the_read_model_and_listings_page() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;
    let (ada, bob) = (new_id(), new_id());
    let (o1, o2, o3, o4) = (new_id(), new_id(), new_id(), new_id());

    env.send_customer(&registered(&ada, "Ada", 1000)).await;
    env.send_customer(&registered(&bob, "Bob", 500)).await;
    // Approved.
    env.send_order(&created(&ada, &o1, 600)).await;
    env.send_credit(&reserved(&ada, &o1, 600, 600, 1000)).await;
    env.send_order(&approved(&ada, &o1, 600)).await;
    // Rejected.
    env.send_order(&created(&ada, &o2, 700)).await;
    env.send_credit(&exceeded(&ada, &o2, 700, 400)).await;
    env.send_order(&rejected(&ada, &o2, 700, "credit limit exceeded"))
        .await;
    // Approved, then cancelled.
    env.send_order(&created(&ada, &o3, 300)).await;
    env.send_credit(&reserved(&ada, &o3, 300, 900, 1000)).await;
    env.send_order(&approved(&ada, &o3, 300)).await;
    env.send_order(&cancelled(&ada, &o3, 300)).await;
    env.send_credit(&released(&ada, &o3, 300, 600)).await;
    // Another customer.
    env.send_order(&created(&bob, &o4, 100)).await;
    env.send_credit(&reserved(&bob, &o4, 100, 100, 500)).await;
    env.send_order(&approved(&bob, &o4, 100)).await;

    let o3_json = app
        .until(&format!("/orders/{o3}"), |s, b| {
            s == 200 && b["status"] == "CANCELLED"
        })
        .await;
    assert_eq!(o3_json["reason"], "customer asked");
    app.until(&format!("/orders/{o4}"), |s, b| {
        s == 200 && b["status"] == "APPROVED"
    })
    .await;
    let ada_json = app
        .until(&format!("/customers/{ada}"), |s, b| {
            s == 200 && b["credit_reserved_cents"] == 600
        })
        .await;
    assert_eq!(ada_json["name"], "Ada");
    assert_eq!(ada_json["credit_limit_cents"], 1000);
    assert_eq!(ada_json["available_cents"], 400);
    let bob_json = app
        .until(&format!("/customers/{bob}"), |s, b| {
            s == 200 && b["credit_reserved_cents"] == 100
        })
        .await;
    assert_eq!(bob_json["available_cents"], 400);

    let o1_json = app.ok(&format!("/orders/{o1}")).await;
    assert_eq!(o1_json["status"], "APPROVED");
    assert_eq!(o1_json["customer_name"], "Ada");
    assert_eq!(o1_json["customer_id"], json!(ada));
    assert_eq!(o1_json["total_cents"], 600);
    assert!(
        o1_json["created_at"].as_str().unwrap().ends_with('Z'),
        "{o1_json}"
    );
    let o2_json = app
        .until(&format!("/orders/{o2}"), |s, b| {
            s == 200 && b["status"] == "REJECTED"
        })
        .await;
    assert_eq!(o2_json["reason"], "credit limit exceeded");
    // Upper-case ids are the same ids.
    let upper = app.ok(&format!("/orders/{}", o1.to_uppercase())).await;
    assert_eq!(upper["id"], json!(o1));

    // Listings: newest first, every order once across pages, filters.
    let (all, pages) = all_pages(&app, "/orders?limit=1").await;
    assert_eq!(pages, 4);
    assert_eq!(
        all,
        ids(&app.ok("/orders").await),
        "pages follow one stable order"
    );
    assert_eq!(
        all.iter().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([o1.clone(), o2.clone(), o3.clone(), o4.clone()])
    );
    let (all, pages) = all_pages(&app, "/orders?limit=3").await;
    assert_eq!((all.len(), pages), (4, 2));
    let approved_ids: BTreeSet<String> = ids(&app.ok("/orders?status=APPROVED").await)
        .into_iter()
        .collect();
    assert_eq!(approved_ids, BTreeSet::from([o1.clone(), o4.clone()]));
    assert_eq!(
        ids(&app
            .ok(&format!("/orders?status=approved&customer_id={ada}"))
            .await),
        vec![o1.clone()]
    );
    assert_eq!(
        ids(&app.ok(&format!("/customers/{ada}/orders")).await),
        [o3.clone(), o2.clone(), o1.clone()]
    );
    let (ada_orders, pages) = all_pages(&app, &format!("/customers/{ada}/orders?limit=2")).await;
    assert_eq!((ada_orders.len(), pages), (3, 2));
    assert_eq!(
        ids(&app
            .ok(&format!("/customers/{bob}/orders?status=CANCELLED"))
            .await),
        Vec::<String>::new()
    );

    // Served from the cache, counted.
    let metrics = app.metrics().await;
    assert!(
        metric(&metrics, "feedline_order_view_cache_lookups_total") >= 5.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "feedline_order_view_events_applied_total") >= 16.0,
        "{metrics}"
    );
    assert!(metrics.contains("feedline_order_view_batch_seconds_bucket"));
    assert_eq!(app.ok("/health/live").await["status"], "live");
    // Ready once the consumer joined its group and reported its lag, with the registry and
    // the read model reachable; 503 (with the report) until then.
    let ready = || async {
        let response = app
            .http
            .get(format!("{}/health/ready", app.url))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON report");
        assert!(status == 200 || status == 503, "{status}: {body}");
        (status, body)
    };
    eventually("order-view ready", PATIENCE, async || {
        let (status, body) = ready().await;
        status == 200
            && body["checks"]["consumer"]["ok"] == true
            && body["checks"]["read model"]["ok"] == true
    })
    .await;
    let health = app
        .http
        .get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "/health is readiness");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_parameter() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;

    let expect = |status: u16, code: &str, field: Option<&str>, (got, body): (u16, Value)| {
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["field"], json!(field), "{body}");
        assert!(body["error"]["message"].as_str().is_some(), "{body}");
    };
    expect(
        422,
        "invalid_parameter",
        Some("id"),
        app.get("/orders/not-a-uuid").await,
    );
    expect(
        422,
        "invalid_parameter",
        Some("id"),
        app.get("/customers/12345/orders").await,
    );
    expect(
        404,
        "not_found",
        None,
        app.get(&format!("/orders/{}", new_id())).await,
    );
    expect(
        404,
        "not_found",
        None,
        app.get(&format!("/customers/{}", new_id())).await,
    );
    expect(
        404,
        "not_found",
        None,
        app.get(&format!("/customers/{}/orders", new_id())).await,
    );
    expect(
        422,
        "invalid_parameter",
        Some("status"),
        app.get("/orders?status=SHIPPED").await,
    );
    expect(
        422,
        "invalid_parameter",
        Some("customer_id"),
        app.get("/orders?customer_id=bob").await,
    );
    for limit in ["0", "501", "ten", "-1"] {
        expect(
            422,
            "invalid_parameter",
            Some("limit"),
            app.get(&format!("/orders?limit={limit}")).await,
        );
    }
    expect(
        422,
        "invalid_parameter",
        Some("cursor"),
        app.get("/orders?cursor=abc").await,
    );
    expect(
        422,
        "unknown_parameter",
        Some("colour"),
        app.get("/orders?colour=red").await,
    );
    expect(
        422,
        "invalid_parameter",
        Some("limit"),
        app.get("/orders?limit=1&limit=2").await,
    );
    expect(
        422,
        "invalid_parameter",
        Some("order_id"),
        app.get("/feed?order_id=x").await,
    );
    expect(404, "not_found", None, app.get("/nothing/here").await);
    let response = app
        .http
        .post(format!("{}/orders", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // An empty listing is fine.
    let empty = app.ok("/orders").await;
    assert_eq!(empty, json!({"orders": [], "next_cursor": null}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_out_of_order_across_topics_end_in_the_right_state() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;
    let t = 1_700_000_000_000;
    let (ada, order, later) = (new_id(), new_id(), new_id());

    // The credit reservation (credit-events) overtakes the registration (customer-events).
    env.send_credit(&reserved(&ada, &order, 500, 500, 2000).at(t + 3))
        .await;
    let early = app
        .until(&format!("/customers/{ada}"), |s, _| s == 200)
        .await;
    assert_eq!(early["name"], Value::Null);
    assert_eq!(early["available_cents"], 1500);
    // The approval overtakes the creation.
    env.send_order(&approved(&ada, &order, 500).at(t + 4)).await;
    app.until(&format!("/orders/{order}"), |s, b| {
        s == 200 && b["status"] == "APPROVED"
    })
    .await;

    // The registration is older than the reservation: it names the customer, but its
    // limit is not the newest.
    env.send_customer(&registered(&ada, "Ada", 1000).at(t + 1))
        .await;
    let ada_json = app
        .until(&format!("/customers/{ada}"), |_, b| b["name"] == "Ada")
        .await;
    assert_eq!(ada_json["credit_limit_cents"], 2000);
    assert_eq!(ada_json["credit_reserved_cents"], 500);
    assert_eq!(ada_json["available_cents"], 1500);
    // ... and the order that came first now carries the name.
    app.until(&format!("/orders/{order}"), |_, b| {
        b["customer_name"] == "Ada"
    })
    .await;

    // The creation arrives last: the status does not go back to PENDING.
    env.send_order(&created(&ada, &order, 500).at(t + 2)).await;
    app.until(&format!("/orders/{order}"), |_, b| {
        b["created_at"] == "2023-11-14T22:13:20.002Z"
    })
    .await;
    let order_json = app.ok(&format!("/orders/{order}")).await;
    assert_eq!(order_json["status"], "APPROVED");
    assert_eq!(order_json["updated_at"], "2023-11-14T22:13:20.004Z");

    // A cancellation before the approval: cancelled stays cancelled.
    env.send_order(&cancelled(&ada, &later, 100).at(t + 10))
        .await;
    env.send_order(&approved(&ada, &later, 100).at(t + 9)).await;
    env.send_order(&created(&ada, &later, 100).at(t + 8)).await;
    app.until(&format!("/orders/{later}"), |_, b| {
        b["created_at"] == "2023-11-14T22:13:20.008Z"
    })
    .await;
    assert_eq!(
        app.ok(&format!("/orders/{later}")).await["status"],
        "CANCELLED"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_changes_nothing_twice() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;
    let t = 1_700_000_000_000;
    let (ada, o1, o2) = (new_id(), new_id(), new_id());

    env.send_customer(&registered(&ada, "Ada", 1000).at(t))
        .await;
    // Two reservations in the same millisecond: only the event id tells a repeat of the
    // first from a newer figure.
    let first = reserved(&ada, &o1, 100, 100, 1000).at(t + 5);
    let second = reserved(&ada, &o2, 200, 300, 1000).at(t + 5);
    let create = created(&ada, &o1, 100).at(t + 1);
    env.send_order(&create).await;
    env.send_credit(&first).await;
    env.send_credit(&second).await;
    app.until(&format!("/customers/{ada}"), |_, b| {
        b["credit_reserved_cents"] == 300
    })
    .await;
    let (_, before) = feed_ids(&app).await;

    env.send_credit(&first).await;
    env.send_order(&create).await;
    eventually("both repeats seen", PATIENCE, async || {
        app.metric("feedline_order_view_events_duplicate_total")
            .await
            >= 2.0
    })
    .await;
    assert_eq!(
        app.ok(&format!("/customers/{ada}")).await["credit_reserved_cents"],
        300,
        "the repeat did not put back the older figure"
    );
    let (_, after) = feed_ids(&app).await;
    assert_eq!(before, after, "no change was made or published twice");
    app.stop().await;
}

/// Every change in the log: (events, last id).
async fn feed_ids(app: &TestApp) -> (Vec<Sse>, i64) {
    let mut feed = app.feed("", Some(0)).await;
    let mut events = Vec::new();
    while let Some(e) = feed
        .next_within(std::time::Duration::from_millis(500))
        .await
    {
        events.push(e);
    }
    let last = events.last().and_then(|e| e.id).unwrap_or(0);
    (events, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_and_the_service_goes_on() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;
    let ada = new_id();
    let order = new_id();

    env.send_raw("order-events", &ada, b"{\"not\": \"avro\"}")
        .await;
    // Well-formed Avro, but an id the API could never look up.
    let bad_id = created("ada", &order, 100);
    let bytes = env.encode_order(&bad_id);
    env.send_raw("order-events", &ada, &bytes).await;
    env.send_order(&created(&ada, &order, 100)).await;

    app.until(&format!("/orders/{order}"), |s, _| s == 200)
        .await;
    let dlq = read_topic(&env.topic("order-events.dlq"), 2).await;
    assert_eq!(dlq.len(), 2, "both poison messages dead-lettered");
    let kinds: BTreeSet<&str> = dlq
        .iter()
        .map(|m| header(m, dlqh::ERROR_KIND).unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["framing", "validation"]));
    for m in &dlq {
        assert_eq!(
            header(m, dlqh::SOURCE_TOPIC),
            Some(env.topic("order-events").as_str())
        );
    }
    assert!(
        dlq.iter()
            .any(|m| payload(m) == b"{\"not\": \"avro\"}".as_slice()),
        "payload kept as it was"
    );
    assert!(
        app.metric("feedline_dead_lettered_total").await >= 2.0,
        "counted"
    );
    // Still consuming.
    let other = new_id();
    env.send_order(&created(&ada, &other, 5)).await;
    app.until(&format!("/orders/{other}"), |s, _| s == 200)
        .await;
    app.stop().await;
}
