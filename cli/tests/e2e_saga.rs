//! One file: one system started once for every end-to-end check that shares it.
//!
//! The whole system end to end, every part real: Kafka, PostgreSQL, the registry, the four
//! services in-process on port 0, driven through the gateway's HTTP API like a client would.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::system::{Launch, demo_bearer};
use feedline::CancellationToken;
use feedline_testkit::connect;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;

struct Running {
    base: String,
    http: reqwest::Client,
    bearer: String,
    orders_db: PgPool,
    customers_db: PgPool,
    _stop: tokio_util::sync::DropGuard,
}

async fn start() -> Running {
    start_with("").await
}

/// The system with `extra` TOML layered over every service's settings.
async fn start_with(extra: &str) -> Running {
    feedline::telemetry::init();
    let launch = Launch::new(extra).await;
    let (orders_db, customers_db) = (
        connect(&launch.orders_url).await,
        connect(&launch.customers_url).await,
    );
    let token = CancellationToken::new();
    let system = launch.start(token.clone()).await;
    let base = format!("http://{}", system.gateway);
    tokio::spawn(system.join(Duration::from_secs(10)));
    let http = reqwest::Client::new();
    Running {
        bearer: demo_bearer(&http, &base).await,
        base,
        http,
        orders_db,
        customers_db,
        _stop: token.drop_guard(),
    }
}

impl Running {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.bearer).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.bearer)
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// Registers a customer and waits until the view knows it.
    async fn customer(&self, name: &str, limit: &str) -> String {
        let (status, body) = self
            .post(
                "/customers?wait=10s",
                json!({"name": name, "credit_limit": limit}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["customer_id"].as_str().unwrap().to_owned()
    }

    /// Places (or cancels) and waits for the final state; returns (order id, status).
    async fn settle(&self, path: &str, body: Value) -> (String, String) {
        let (status, body) = self.post(&format!("{path}?wait=15s"), body).await;
        assert_eq!(status, 200, "the outcome arrived within the wait: {body}");
        (
            body["order_id"].as_str().unwrap().to_owned(),
            body["status"].as_str().unwrap().to_owned(),
        )
    }

    /// Polls `GET path` until `cond` holds.
    async fn until(&self, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && cond(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens the live feed through the gateway; events arrive on the returned channel.
    async fn feed(
        &self,
        query: &str,
        last_event_id: Option<&str>,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Sse> {
        let mut request = self
            .http
            .get(format!("{}/feed{query}", self.base))
            .bearer_auth(&self.bearer);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = response.bytes_stream();
            let mut buffer = String::new();
            let mut event = Sse::default();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find('\n') {
                    let line = buffer[..end].trim_end_matches('\r').to_owned();
                    buffer.drain(..=end);
                    if line.is_empty() {
                        if !event.data.is_empty() && tx.send(std::mem::take(&mut event)).is_err() {
                            return;
                        }
                        event = Sse::default();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                    }
                }
            }
        });
        rx
    }
}

#[derive(Debug, Default, Clone)]
struct Sse {
    /// The id as sent: `<generation>-<seq>`.
    id: Option<String>,
    event: String,
    data: String,
}

impl Sse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }

    /// The change number of the id (ids of one read model only compare by it).
    fn seq(&self) -> Option<i64> {
        self.id.as_ref()?.rsplit_once('-')?.1.parse().ok()
    }
}

/// Collects feed events until `cond` holds over what arrived.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Sse>,
    what: &str,
    cond: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond(&seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => seen.push(event),
            _ => panic!("timed out waiting for {what}; saw {seen:#?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_credit_saga_from_the_gateway_to_the_live_feed() {
    let sys = start().await;
    let mut feed = sys.feed("", None).await;

    let customer = sys.customer("Ada Lovelace", "100.00").await;
    let (first, status) = sys
        .settle(
            "/orders",
            json!({"customer_id": customer, "total": "60.00"}),
        )
        .await;
    assert_eq!(status, "APPROVED");
    let (second, status) = sys
        .settle(
            "/orders",
            json!({"customer_id": customer, "total": "50.00"}),
        )
        .await;
    assert_eq!(status, "REJECTED", "60 + 50 exceeds the limit of 100");
    let (_, status) = sys
        .settle(&format!("/orders/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, "CANCELLED");
    sys.until(
        &format!("/customers/{customer}"),
        "the credit released",
        |c| c["credit_reserved_cents"] == 0,
    )
    .await;
    let (third, status) = sys
        .settle(
            "/orders",
            json!({"customer_id": customer, "total": "50.00"}),
        )
        .await;
    assert_eq!(status, "APPROVED", "the released credit makes room");

    let view = sys
        .until(
            &format!("/customers/{customer}"),
            "the last reservation",
            |c| c["credit_reserved_cents"] == 5000,
        )
        .await;
    assert_eq!(view["credit_limit_cents"], 10000);
    assert_eq!(view["available_cents"], 5000);
    assert_eq!(view["name"], "Ada Lovelace");
    let (_, orders) = sys.get(&format!("/customers/{customer}/orders")).await;
    let statuses: HashMap<String, String> = orders["orders"]
        .as_array()
        .or(orders.as_array())
        .expect("a list of orders")
        .iter()
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(statuses[&first], "CANCELLED");
    assert_eq!(statuses[&second], "REJECTED");
    assert_eq!(statuses[&third], "APPROVED");

    // The live feed saw every step, in order, with increasing ids.
    let events = collect(&mut feed, "the whole saga on the feed", |seen| {
        seen.iter().any(|e| {
            e.event == "order"
                && e.json()["id"] == third.as_str()
                && e.json()["status"] == "APPROVED"
        }) && seen
            .iter()
            .any(|e| e.event == "customer" && e.json()["credit_reserved_cents"] == 5000)
    })
    .await;
    let ids: Vec<i64> = events.iter().filter_map(Sse::seq).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let history = |order: &str| -> Vec<String> {
        let mut steps: Vec<String> = events
            .iter()
            .filter(|e| e.event == "order" && e.json()["id"] == order)
            .map(|e| e.json()["status"].as_str().unwrap().to_owned())
            .collect();
        steps.dedup();
        steps
    };
    assert_eq!(history(&first), ["PENDING", "APPROVED", "CANCELLED"]);
    assert_eq!(history(&second), ["PENDING", "REJECTED"]);
    assert_eq!(history(&third), ["PENDING", "APPROVED"]);
    let mut reserved: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "customer")
        .map(|e| e.json()["credit_reserved_cents"].as_i64().unwrap())
        .collect();
    reserved.dedup();
    assert_eq!(
        reserved,
        [0, 6000, 0, 5000],
        "the customer's credit, step by step"
    );

    // The services' own databases agree with the view.
    let (reserved_db,): (i64,) =
        sqlx::query_as("SELECT credit_reserved_cents FROM customers WHERE id = $1::uuid")
            .bind(&customer)
            .fetch_one(&sys.customers_db)
            .await
            .unwrap();
    assert_eq!(reserved_db, 5000);
    for (order, status) in &statuses {
        let (db_status,): (String,) =
            sqlx::query_as("SELECT status FROM orders WHERE id = $1::uuid")
                .bind(order)
                .fetch_one(&sys.orders_db)
                .await
                .unwrap();
        assert_eq!(&db_status, status);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_orders_each_reach_one_final_state_and_the_books_balance() {
    let sys = start().await;
    let mut customers = Vec::new();
    for i in 0..10 {
        customers.push(
            sys.customer(&format!("customer {i}"), &format!("{}.00", 100 + 20 * i))
                .await,
        );
    }
    // 200 orders from 8 concurrent clients, one in ten cancelled right after it was placed.
    let placed: Vec<(String, bool)> = futures::stream::iter(0..200)
        .map(|i| {
            let customer = customers[i % customers.len()].clone();
            let sys = &sys;
            async move {
                let total = format!("{}.{:02}", 5 + (i * 7) % 40, i % 100);
                let (status, body) = sys
                    .post("/orders", json!({"customer_id": customer, "total": total}))
                    .await;
                assert_eq!(status, 202, "{body}");
                let order = body["order_id"].as_str().unwrap().to_owned();
                if i % 10 == 3 {
                    // The view may not know the order yet; retry until the gateway can route it.
                    for _ in 0..100 {
                        let (status, _) = sys
                            .post(&format!("/orders/{order}/cancel"), json!({}))
                            .await;
                        if status == 202 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                (order, i % 10 == 3)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(placed.len(), 200);
    let cancelled: Vec<&str> = placed
        .iter()
        .filter(|(_, cancel)| *cancel)
        .map(|(order, _)| order.as_str())
        .collect();

    // Every order reaches exactly one final state in the order service's database; an
    // order whose cancellation was accepted ends CANCELLED (or REJECTED, when the credit
    // check came first), never APPROVED.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (pending, total, cancel_due): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'PENDING'), count(*),
                    count(*) FILTER (WHERE status = 'APPROVED' AND id::text = ANY($1))
             FROM orders",
        )
        .bind(&cancelled)
        .fetch_one(&sys.orders_db)
        .await
        .unwrap();
        if pending == 0 && total == 200 && cancel_due == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} of {total} orders still pending, {cancel_due} cancellations not applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT id::text, customer_id::text, status, total_cents FROM orders")
            .fetch_all(&sys.orders_db)
            .await
            .unwrap();
    // Reserved credit = the sum of approved, uncancelled orders, customer by customer.
    let mut approved: BTreeMap<String, i64> = customers.iter().map(|c| (c.clone(), 0)).collect();
    for (_, customer, status, total) in &rows {
        if status == "APPROVED" {
            *approved.get_mut(customer).unwrap() += total;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reserved: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT id::text, credit_reserved_cents FROM customers",
        )
        .fetch_all(&sys.customers_db)
        .await
        .unwrap()
        .into_iter()
        .collect();
        if reserved == approved {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reserved {reserved:?} != approved {approved:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let limits: Vec<(i64, i64)> =
        sqlx::query_as("SELECT credit_limit_cents, credit_reserved_cents FROM customers")
            .fetch_all(&sys.customers_db)
            .await
            .unwrap();
    assert!(
        limits.iter().all(|(limit, reserved)| reserved <= limit),
        "no customer over their limit"
    );

    // The view equals the services' databases.
    for (id, _, status, _) in &rows {
        sys.until(&format!("/orders/{id}"), "the view to catch up", |o| {
            o["status"] == status.as_str()
        })
        .await;
    }
    for (customer, reserved) in &approved {
        sys.until(
            &format!("/customers/{customer}"),
            "the view's credit",
            |c| c["credit_reserved_cents"] == *reserved,
        )
        .await;
    }
}

/// A retry the gateway does not remember (after a restart, or on another replica; here a
/// gateway that keeps no answers) reaches the services as the same command, with the same
/// `event_id`, and they apply it once; another request under the key is told apart by
/// order-view's copy of the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_order_retried_without_the_gateways_memory_is_applied_once() {
    let sys = start_with("[gateway.idempotency]\nmax_entries = 0\n").await;
    let customer = sys.customer("Barbara Liskov", "100.00").await;
    let key = uuid::Uuid::new_v4().to_string();
    let order = json!({"customer_id": customer, "total": "60.00"});

    let (status, first) = sys.post_keyed("/orders?wait=15s", &key, &order).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["status"], "APPROVED");
    let (status, retry) = sys.post_keyed("/orders?wait=15s", &key, &order).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["order_id"], first["order_id"]);
    assert_eq!(retry["status"], "APPROVED");
    let (status, other) = sys
        .post_keyed(
            "/orders",
            &key,
            &json!({"customer_id": customer, "total": "5.00"}),
        )
        .await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(other["error"]["field"], "Idempotency-Key");

    // Behind the retries on the customer's partition: once it is decided, they were too.
    // Had a retry been applied, its 60.00 more would leave no room for this 30.00.
    let (_, status) = sys
        .settle(
            "/orders",
            json!({"customer_id": customer, "total": "30.00"}),
        )
        .await;
    assert_eq!(status, "APPROVED");
    let orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id::text = $1")
            .bind(&customer)
            .fetch_one(&sys.orders_db)
            .await
            .unwrap();
    assert_eq!(orders, 2);
    let reserved: i64 =
        sqlx::query_scalar("SELECT credit_reserved_cents FROM customers WHERE id::text = $1")
            .bind(&customer)
            .fetch_one(&sys.customers_db)
            .await
            .unwrap();
    assert_eq!(reserved, 9_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_client_that_reconnects_with_last_event_id_misses_nothing() {
    let sys = start().await;
    let customer = sys.customer("Grace Hopper", "1000.00").await;
    // A new client gets live changes: place an order and read until it settled.
    let mut feed = sys.feed(&format!("?customer_id={customer}"), None).await;
    let (status, body) = sys
        .post("/orders", json!({"customer_id": customer, "total": "1.00"}))
        .await;
    assert_eq!(status, 202);
    let first_order = body["order_id"].as_str().unwrap().to_owned();
    let first = collect(&mut feed, "the first order settled", |seen| {
        seen.iter().any(|e| {
            e.event == "order"
                && e.json()["id"] == first_order.as_str()
                && e.json()["status"] == "APPROVED"
        })
    })
    .await;
    let last_id = first.last().unwrap().id.clone().unwrap();
    let last = first.last().unwrap().seq().unwrap();
    drop(feed);

    // Changes happen while the client is away.
    let mut orders = Vec::new();
    for i in 0..5 {
        let (status, body) = sys
            .post(
                "/orders",
                json!({"customer_id": customer, "total": format!("{}.00", 10 + i)}),
            )
            .await;
        assert_eq!(status, 202);
        orders.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let mut resumed = sys
        .feed(&format!("?customer_id={customer}"), Some(&last_id))
        .await;
    let events = collect(&mut resumed, "every order settled", |seen| {
        orders.iter().all(|o| {
            seen.iter().any(|e| {
                e.event == "order"
                    && e.json()["id"] == o.as_str()
                    && e.json()["status"] == "APPROVED"
            })
        })
    })
    .await;
    let ids: Vec<i64> = events.iter().filter_map(Sse::seq).collect();
    assert!(
        ids.iter().all(|id| *id > last),
        "nothing before the resume point again: {ids:?}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order: {ids:?}"
    );
    for o in &orders {
        let steps: Vec<&str> = events
            .iter()
            .filter(|e| e.event == "order" && e.json()["id"] == o.as_str())
            .map(|e| {
                if e.json()["status"] == "PENDING" {
                    "PENDING"
                } else {
                    "FINAL"
                }
            })
            .collect();
        assert_eq!(
            steps.first(),
            Some(&"PENDING"),
            "order {o} seen from its creation: {steps:?}"
        );
    }
}
