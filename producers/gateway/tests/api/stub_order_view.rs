//! A STUB of order-view, for the gateway's proxy and wait plumbing only: it answers the
//! few routes the gateway calls with canned JSON and echoes what it received, so the tests
//! can see what the gateway passed on. It knows nothing of Kafka; the real order-view and
//! the end-to-end tests with every service live elsewhere.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;

/// The customer of every order the stub knows.
pub const STUB_CUSTOMER: &str = "5b0c6f6e-58a6-4a31-9d5e-2f1f1b2c0d11";
/// The one order id the stub does not know.
pub const UNKNOWN_ORDER: &str = "00000000-0000-0000-0000-000000000000";
/// The one customer the stub fails on, with a plain-text 500.
pub const BROKEN_CUSTOMER: &str = "5b0c6f6e-58a6-4a31-9d5e-2f1f1b2c0d66";
/// The credit limit the stub reports for every customer, in cents.
pub const STUB_LIMIT_CENTS: i64 = 10_000;
/// How long after its first look-up an order turns APPROVED (when `completes`).
const DECIDES_AFTER: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
struct Stub {
    completes: bool,
    first_seen: Mutex<HashMap<String, Instant>>,
}

/// Serves the stub on a free local port; returns its URL.
pub async fn start(completes: bool) -> String {
    let stub = Arc::new(Stub {
        completes,
        ..Stub::default()
    });
    let router = Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{id}", get(order))
        .route("/customers/{id}", get(customer))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/feed", get(feed))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn echo(headers: &HeaderMap, query: &Option<String>) -> serde_json::Value {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    json!({
        "query": query,
        "authorization": header("authorization"),
        "last_event_id": header("last-event-id"),
        "correlation_id": header("x-correlation-id"),
    })
}

async fn list_orders(headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    (
        [("x-stub", "order-view"), ("cache-control", "no-cache")],
        axum::Json(json!({"orders": [], "echo": echo(&headers, &query)})),
    )
        .into_response()
}

async fn order(State(stub): State<Arc<Stub>>, Path(id): Path<String>) -> Response {
    if id == UNKNOWN_ORDER {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "not_found", "message": "no such order"}})),
        )
            .into_response();
    }
    let first_seen = *stub
        .first_seen
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_insert_with(Instant::now);
    let status = if stub.completes && first_seen.elapsed() >= DECIDES_AFTER {
        "APPROVED"
    } else {
        "PENDING"
    };
    axum::Json(json!({
        "order_id": id,
        "customer_id": STUB_CUSTOMER,
        "total_cents": 6000,
        "status": status,
    }))
    .into_response()
}

async fn customer(Path(id): Path<String>) -> Response {
    if id == BROKEN_CUSTOMER {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom at 10.0.0.7").into_response();
    }
    axum::Json(json!({
        "customer_id": id,
        "name": "stub",
        "credit_limit_cents": STUB_LIMIT_CENTS,
    }))
    .into_response()
}

async fn customer_orders(Path(id): Path<String>) -> Response {
    (
        StatusCode::IM_A_TEAPOT,
        axum::Json(json!({"customer_id": id, "orders": []})),
    )
        .into_response()
}

/// One `echo` event at once, then: with an `order_id` filter a `tick` every 100 ms (what a
/// waiting gateway rings its bell on); without, nothing more, ever (so a client that sees
/// the first event proves the gateway does not buffer).
async fn feed(
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = Event::default()
        .id("1")
        .event("echo")
        .data(echo(&headers, &query).to_string());
    let ticking = query.as_deref().is_some_and(|q| q.contains("order_id="));
    let rest = stream::unfold(1u64, move |n| async move {
        if ticking {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Event::default()
                    .id((n + 1).to_string())
                    .event("tick")
                    .data("{}"),
                n + 1,
            ))
        } else {
            std::future::pending().await
        }
    });
    Sse::new(stream::once(async { first }).chain(rest).map(Ok))
}
