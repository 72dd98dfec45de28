//! A STUB of order-view, for the gateway's proxy and wait plumbing only: it answers the
//! few routes the gateway calls with canned JSON and echoes what it received, so the tests
//! can see what the gateway passed on. It knows nothing of Kafka; the real order-view and
//! the end-to-end tests with every service live elsewhere.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// An order the stub takes a minute to answer for.
pub const SLOW_ORDER: &str = "00000000-0000-0000-0000-00000000005a";
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
    /// Unfiltered feed subscriptions opened so far (a waiting gateway's).
    unfiltered_feeds: AtomicUsize,
}

/// Serves the stub on a free local port; returns its URL.
pub async fn start(completes: bool) -> String {
    start_counted(completes).await.0
}

/// Feed subscriptions the stub has seen, by the test.
#[derive(Debug, Clone)]
pub struct FeedCount(Arc<Stub>);

impl FeedCount {
    /// Unfiltered subscriptions opened so far.
    pub fn unfiltered(&self) -> usize {
        self.0.unfiltered_feeds.load(Ordering::SeqCst)
    }
}

/// [`start`], and a view of how many feed subscriptions it served.
pub async fn start_counted(completes: bool) -> (String, FeedCount) {
    let stub = Arc::new(Stub {
        completes,
        ..Stub::default()
    });
    let count = FeedCount(stub.clone());
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
    (url, count)
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
    if id == SLOW_ORDER {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
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

/// One `echo` event at once, then:
/// - with `flood`: 16 KiB events as fast as they are taken (a reader that stops reading
///   fills every buffer on the way quickly);
/// - with a filter: nothing more, ever (so a client that sees the first event proves the
///   gateway does not buffer);
/// - unfiltered (a waiting gateway's subscription): an `OrderApproved` event naming each
///   order as it turns APPROVED, what the waiters ring their bells on.
async fn feed(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = Event::default()
        .id("1")
        .event("echo")
        .data(echo(&headers, &query).to_string());
    let query = query.unwrap_or_default();
    let flood = query.contains("flood");
    let unfiltered = query.is_empty();
    if unfiltered {
        stub.unfiltered_feeds.fetch_add(1, Ordering::SeqCst);
    }
    let announced = HashSet::new();
    let rest = stream::unfold((stub, announced), move |(stub, mut announced)| async move {
        if flood {
            let data = "x".repeat(16 * 1024);
            return Some((
                vec![Event::default().event("flood").data(data)],
                (stub, announced),
            ));
        }
        if !unfiltered {
            return std::future::pending().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let decided: Vec<String> = stub
            .first_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, seen)| {
                stub.completes && seen.elapsed() >= DECIDES_AFTER && !announced.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let events = decided
            .into_iter()
            .map(|id| {
                let event = Event::default()
                    .event("OrderApproved")
                    .data(json!({"order_id": id, "status": "APPROVED"}).to_string());
                announced.insert(id);
                event
            })
            .collect();
        Some((events, (stub, announced)))
    })
    .flat_map(stream::iter);
    Sse::new(stream::once(async { first }).chain(rest).map(Ok))
}
