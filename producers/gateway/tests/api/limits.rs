//! Limits: token buckets on the token endpoint and the API, caps on live feeds and waiters,
//! the write timeout that drops a reader that stopped reading, the request timeout, and
//! the one-use feed tickets.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{Answer, Options, TestApp};
use crate::stub_order_view::{self, FeedCount, SLOW_ORDER};

const READER_ID: &str = "reader";
const READER_SECRET: &str = "reader-secret";

/// A gateway in front of the stub order-view, with `limits` (TOML lines of
/// `[gateway.limits]`) and a second client that may only read.
async fn app(completes: bool, limits: &str) -> (TestApp, FeedCount) {
    let (order_view, count) = stub_order_view::start_counted(completes).await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(order_view),
        extra_toml: format!(
            "[gateway.clients.{READER_ID}]\nsecret_sha256 = \"{}\"\nscopes = [\"feed:read\"]\ntenant = \"readers\"\n[gateway.limits]\n{limits}",
            feedline_gateway::auth::hash_secret(READER_SECRET)
        ),
        ..Options::default()
    })
    .await;
    (app, count)
}

#[track_caller]
fn assert_retry_after(answer: &Answer) {
    let secs: u64 = answer
        .header("retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("a Retry-After in seconds: {answer:#?}"));
    assert!(secs >= 1, "{answer:#?}");
}

async fn guess(app: &TestApp, id: &str, secret: &str, from: Option<&str>) -> Answer {
    let mut request = app.http.post(app.at("/auth/token")).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
    ]);
    if let Some(ip) = from {
        request = request.header("x-forwarded-for", ip);
    }
    app.send(request).await
}

#[tokio::test]
async fn guessing_a_client_secret_is_rate_limited_by_default() {
    let app = TestApp::spawn().await;
    // The default burst is ten attempts; refill one a second.
    for n in 0..10 {
        let wrong = guess(&app, "demo", &format!("guess-{n}"), None).await;
        wrong.assert_error(401, "invalid_client", None);
    }
    let limited = guess(&app, "demo", "demo-secret", None).await;
    limited.assert_error(429, "rate_limited", None);
    assert_retry_after(&limited);
    assert!(
        app.metric("feedline_gateway_rate_limited_total").await >= 1.0,
        "counted"
    );
}

#[tokio::test]
async fn token_requests_are_limited_per_client_id_and_per_address() {
    let (app, _) = app(
        false,
        "token_per_client = { burst = 3, per_second = 0.01 }\n\
         token_per_ip = { burst = 5, per_second = 0.01 }\n\
         trusted_proxies = [\"127.0.0.1\"]",
    )
    .await;
    let a = Some("192.0.2.1");
    for _ in 0..3 {
        guess(&app, "demo", "wrong", a)
            .await
            .assert_error(401, "invalid_client", None);
    }
    // The client id is spent, from any address, whether the secret is right or not.
    let spent = guess(&app, "demo", "demo-secret", Some("192.0.2.9")).await;
    spent.assert_error(429, "rate_limited", None);
    assert_retry_after(&spent);
    // Another client from the same address still gets its token.
    let other = guess(&app, READER_ID, READER_SECRET, a).await;
    assert_eq!(other.status, 200, "{other:#?}");
    // Address a has had 4 of its 5: one more, then 429 whichever client it names.
    guess(&app, READER_ID, READER_SECRET, a).await;
    let address = guess(&app, READER_ID, READER_SECRET, a).await;
    address.assert_error(429, "rate_limited", None);
    // Another address (behind the trusted proxy) is unaffected.
    let b = guess(&app, READER_ID, READER_SECRET, Some("192.0.2.2")).await;
    assert_eq!(b.status, 200, "{b:#?}");
}

#[tokio::test]
async fn api_requests_are_limited_per_client() {
    let (app, _) = app(true, "api_per_client = { burst = 3, per_second = 0.01 }").await;
    let demo = app.token(Some("feed:read")).await;
    let reader = app.token_for(READER_ID, READER_SECRET, None).await;
    for _ in 0..3 {
        let ok = app
            .send(app.http.get(app.at("/orders")).bearer_auth(&demo))
            .await;
        assert_eq!(ok.status, 200, "{ok:#?}");
    }
    let limited = app
        .send(app.http.get(app.at("/orders")).bearer_auth(&demo))
        .await;
    limited.assert_error(429, "rate_limited", None);
    assert_retry_after(&limited);
    let other = app
        .send(app.http.get(app.at("/orders")).bearer_auth(&reader))
        .await;
    assert_eq!(
        other.status, 200,
        "another client is not limited: {other:#?}"
    );
}

async fn list_from(app: &TestApp, token: &str, ip: &str) -> Answer {
    app.send(
        app.http
            .get(app.at("/orders"))
            .bearer_auth(token)
            .header("x-forwarded-for", ip),
    )
    .await
}

#[tokio::test]
async fn api_requests_are_limited_per_address_and_forwarded_for_only_from_trusted_proxies() {
    let limit = "api_per_ip = { burst = 3, per_second = 0.01 }\n";
    let (trusting, _) = app(true, &format!("{limit}trusted_proxies = [\"127.0.0.0/8\"]")).await;
    let token = trusting.token(Some("feed:read")).await;
    for _ in 0..3 {
        assert_eq!(list_from(&trusting, &token, "192.0.2.1").await.status, 200);
    }
    let limited = list_from(&trusting, &token, "192.0.2.1").await;
    limited.assert_error(429, "rate_limited", None);
    assert_retry_after(&limited);
    let other = list_from(&trusting, &token, "192.0.2.2").await;
    assert_eq!(other.status, 200, "{other:#?}");

    // By default the header is not believed: inventing addresses does not help.
    let (default, _) = app(true, limit).await;
    let token = default.token(Some("feed:read")).await;
    for n in 0..3 {
        let ok = list_from(&default, &token, &format!("198.51.100.{n}")).await;
        assert_eq!(ok.status, 200);
    }
    list_from(&default, &token, "198.51.100.9")
        .await
        .assert_error(429, "rate_limited", None);
}

async fn open_feed(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.at("/feed?customer_id=c1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

const FEED_STREAMS: &str = "feedline_gateway_feed_streams";

#[tokio::test]
async fn live_feeds_are_capped_per_client_and_in_total() {
    let (app, _) = app(
        true,
        "max_streams_per_client = 2\nmax_streams = 3\nkeep_alive_ms = 200",
    )
    .await;
    let demo = app.token(Some("feed:read")).await;
    let reader = app.token_for(READER_ID, READER_SECRET, None).await;
    let first = open_feed(&app, &demo).await;
    let second = open_feed(&app, &demo).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = Answer::read(open_feed(&app, &demo).await).await;
    third.assert_error(429, "too_many_streams", None);
    assert_retry_after(&third);

    let theirs = open_feed(&app, &reader).await;
    assert_eq!(theirs.status(), 200);
    app.until_metric(FEED_STREAMS, 3.0).await;
    let full = Answer::read(open_feed(&app, &reader).await).await;
    full.assert_error(503, "too_many_streams", None);
    assert_retry_after(&full);

    // A closed feed gives its place back.
    drop(first);
    app.until_metric(FEED_STREAMS, 2.0).await;
    let again = open_feed(&app, &demo).await;
    assert_eq!(again.status(), 200);
    drop((second, theirs, again));
    app.until_metric(FEED_STREAMS, 0.0).await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected() {
    let (app, _) = app(true, "write_timeout_ms = 1000").await;
    let token = app.token(Some("feed:read")).await;
    let addr = app.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window, so the gateway's writes block soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /feed?flood=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The stub floods the feed; this client reads nothing.
    app.until_metric(FEED_STREAMS, 1.0).await;
    let started = Instant::now();
    app.until_metric(FEED_STREAMS, 0.0).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // And the connection is closed: what was buffered, then the end (or a reset).
    let mut sink = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink)).await;
    assert!(end.is_ok(), "the gateway closed the connection");
    assert_eq!(
        app.metric("feedline_gateway_write_timeouts_total").await,
        1.0
    );
    assert!(app.metric("feedline_gateway_request_timeouts_total").await == 0.0);
}

#[tokio::test]
async fn many_waiters_share_one_feed_subscription() {
    let (app, feeds) = app(true, "").await;
    let token = app.token(None).await;
    let customer = Uuid::new_v4();
    let body = json!({"customer_id": customer, "total": "1.00"});
    // Warm the producer up, so the waits below overlap.
    let warm = app.post_json("/orders", &token, &body).await;
    assert_eq!(warm.status, 202, "{warm:#?}");
    assert_eq!(feeds.unfiltered(), 0, "nobody waits: no subscription");

    let waits = (0..20).map(|_| app.post_json("/orders?wait=10s", &token, &body));
    for answer in futures::future::join_all(waits).await {
        assert_eq!(answer.status, 200, "{answer:#?}");
        assert_eq!(answer.body["status"], "APPROVED");
    }
    assert_eq!(feeds.unfiltered(), 1, "one subscription for all twenty");
    assert_eq!(
        app.metric("feedline_gateway_wait_feed_connections_total")
            .await,
        1.0
    );
    app.until_metric("feedline_gateway_waiters", 0.0).await;
}

#[tokio::test]
async fn waiters_are_capped_before_anything_is_published() {
    let (app, _) = app(false, "max_waiters = 2").await;
    let token = app.token(None).await;
    let body = json!({"customer_id": Uuid::new_v4(), "total": "1.00"});
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = app
                .http
                .post(app.at("/orders?wait=3s"))
                .bearer_auth(&token)
                .json(&body);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    app.until_metric("feedline_gateway_waiters", 2.0).await;
    let published = app
        .metric("feedline_gateway_commands_published_total")
        .await;
    let refused = app.post_json("/orders?wait=3s", &token, &body).await;
    refused.assert_error(503, "too_many_waiters", Some("wait"));
    assert_retry_after(&refused);
    assert_eq!(
        app.metric("feedline_gateway_commands_published_total")
            .await,
        published,
        "the refused command was not published"
    );
    // Without a wait the command is accepted as ever.
    let plain = app.post_json("/orders", &token, &body).await;
    assert_eq!(plain.status, 202, "{plain:#?}");
    for waiting in held {
        assert_eq!(waiting.await.unwrap(), 202, "the wait ran out: 202");
    }
}

#[tokio::test]
async fn a_feed_ticket_works_once_and_expires() {
    let (app, _) = app(true, "ticket_ttl_secs = 1").await;
    let token = app.token(Some("feed:read")).await;

    let ticket = app.ticket(&token).await;
    let url = app.at(&format!("/feed?ticket={ticket}"));
    let first = app.http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    drop(first);
    let again = app.send(app.http.get(&url)).await;
    again.assert_error(401, "invalid_ticket", Some("ticket"));

    let late = app
        .send(app.http.post(app.at("/feed/ticket")).bearer_auth(&token))
        .await;
    assert_eq!(
        late.body["expires_in"], 1,
        "the configured lifetime: {late:#?}"
    );
    let late = late.body["ticket"].as_str().unwrap();
    // The ticket's lifetime is the condition here: it has to pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = app
        .send(app.http.get(app.at(&format!("/feed?ticket={late}"))))
        .await;
    expired.assert_error(401, "invalid_ticket", Some("ticket"));

    let made_up = app.send(app.http.get(app.at("/feed?ticket=abc"))).await;
    made_up.assert_error(401, "invalid_ticket", Some("ticket"));
    let in_query = app
        .send(app.http.get(app.at(&format!("/feed?access_token={token}"))))
        .await;
    in_query.assert_error(400, "invalid_parameter", Some("access_token"));

    // A ticket needs feed:read, as the feed does.
    let writer = app.token(Some("orders:write")).await;
    let refused = app
        .send(app.http.post(app.at("/feed/ticket")).bearer_auth(&writer))
        .await;
    refused.assert_error(403, "insufficient_scope", None);
    let anonymous = app.send(app.http.post(app.at("/feed/ticket"))).await;
    anonymous.assert_error(401, "invalid_token", None);
}

#[tokio::test]
async fn a_slow_request_is_answered_503_but_a_feed_is_not_cut() {
    let (app, _) = app(true, "request_timeout_ms = 300\nkeep_alive_ms = 200").await;
    let token = app.token(Some("feed:read")).await;
    let started = Instant::now();
    let slow = app
        .send(
            app.http
                .get(app.at(&format!("/orders/{SLOW_ORDER}")))
                .bearer_auth(&token),
        )
        .await;
    slow.assert_error(503, "timeout", None);
    assert_retry_after(&slow);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        app.metric("feedline_gateway_request_timeouts_total").await,
        1.0
    );

    // The feed outlives the request timeout, kept alive by comments.
    let feed = open_feed(&app, &token).await;
    let mut body = feed.bytes_stream();
    let opened = Instant::now();
    let mut text = String::new();
    while opened.elapsed() < Duration::from_millis(900) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the feed is alive")
            .expect("the feed is open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("event: echo"), "{text}");
    assert!(text.contains(": keep-alive\n\n"), "{text}");
}
