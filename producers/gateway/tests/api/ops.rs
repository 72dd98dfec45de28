//! `GET /ops` for admins only: the messages in each DLQ topic of the gateway's prefix, read
//! from the real broker, and order-view's freshness estimated from two replicas'
//! histograms; `null` quantiles while no replica exports the histogram.

use axum::Router;
use axum::routing::get;
use feedline::admin::{Admin, TopicSpec};
use feedline::{Metrics, Outgoing, Producer};
use feedline_testkit::{PATIENCE, eventually};
use reqwest::StatusCode;

use crate::helpers::{JWT_SECRET, Options, TestApp, claims, sign};

/// An order-view stand-in whose `/metrics` has the freshness histogram: 10 changes within
/// 10 ms, 80 more within 100 ms, the last 10 within 1 s.
async fn replica_with_histogram() -> String {
    const METRICS: &str = "\
# TYPE feedline_order_view_freshness_seconds histogram
feedline_order_view_freshness_seconds_bucket{service=\"order-view\",le=\"0.01\"} 10
feedline_order_view_freshness_seconds_bucket{service=\"order-view\",le=\"0.1\"} 90
feedline_order_view_freshness_seconds_bucket{service=\"order-view\",le=\"1\"} 100
feedline_order_view_freshness_seconds_bucket{service=\"order-view\",le=\"+Inf\"} 100
feedline_order_view_freshness_seconds_sum{service=\"order-view\"} 4.5
feedline_order_view_freshness_seconds_count{service=\"order-view\"} 100
";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route("/metrics", get(|| async { METRICS }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn ops_counts_dead_letters_for_admins_only() {
    let app = TestApp::spawn().await;
    let anonymous = app.send(app.http.get(app.at("/ops"))).await;
    anonymous.assert_error(401, "invalid_token", None);
    let reader = sign(JWT_SECRET.as_bytes(), &claims("feed:read", 300));
    let refused = app
        .send(app.http.get(app.at("/ops")).bearer_auth(&reader))
        .await;
    refused.assert_error(403, "insufficient_scope", None);

    // Three dead letters in one DLQ topic of this gateway's prefix, none in another.
    let kafka = &app.settings.kafka;
    let full = kafka.name("order-commands.dlq");
    let empty = kafka.name("credit-events.dlq");
    Admin::new(kafka)
        .unwrap()
        .ensure_topics(&[TopicSpec::new(&full, 2), TopicSpec::new(&empty, 1)])
        .await
        .unwrap();
    let producer = Producer::new(kafka, Metrics::new("ops-test")).unwrap();
    for n in 0..3u8 {
        producer
            .send(Outgoing::new(&full, Some(&[n]), b"dead"))
            .await
            .unwrap();
    }

    let admin = app.token(Some("admin")).await;
    let ops = eventually("three dead letters counted", PATIENCE, async || {
        let ops = app
            .send(app.http.get(app.at("/ops")).bearer_auth(&admin))
            .await;
        let topics = ops.body["dead_letters"].as_array()?;
        let count = |name: &str| {
            topics
                .iter()
                .find(|t| t["topic"] == name)
                .and_then(|t| t["messages"].as_i64())
        };
        (count(&full) == Some(3) && count(&empty) == Some(0)).then_some(ops)
    })
    .await;
    assert_eq!(ops.status, StatusCode::OK, "{ops:#?}");
    assert_eq!(ops.header("cache-control"), "no-store");
    assert!(ops.body["dead_letters_error"].is_null(), "{ops:#?}");
    let topics = ops.body["dead_letters"].as_array().unwrap();
    assert!(
        topics.iter().all(|t| t["topic"]
            .as_str()
            .unwrap()
            .starts_with(&kafka.topic_prefix)),
        "only this prefix's DLQ topics: {ops:#?}"
    );
    // Nothing listens at the static order-view URL: no figures, and no error for it.
    let freshness = &ops.body["freshness"];
    assert!(freshness["p50_seconds"].is_null(), "{ops:#?}");
    assert!(freshness["p99_seconds"].is_null(), "{ops:#?}");
    assert_eq!(freshness["replicas_scraped"], 0, "{ops:#?}");

    // Within the cache's two seconds the same answer comes back.
    let again = app
        .send(app.http.get(app.at("/ops")).bearer_auth(&admin))
        .await;
    let first = ops.body["generated_at_ms"].as_u64().unwrap();
    let second = again.body["generated_at_ms"].as_u64().unwrap();
    assert!(
        second == first || second >= first + 2000,
        "cached for two seconds: {first} then {second}"
    );
}

#[tokio::test]
async fn freshness_quantiles_come_from_the_replicas_histograms() {
    let one = replica_with_histogram().await;
    let two = replica_with_histogram().await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(format!("{one},{two}")),
        ..Options::default()
    })
    .await;
    let admin = app.token(Some("admin")).await;
    let ops = app
        .send(app.http.get(app.at("/ops")).bearer_auth(&admin))
        .await;
    assert_eq!(ops.status, StatusCode::OK, "{ops:#?}");
    let freshness = &ops.body["freshness"];
    assert_eq!(freshness["replicas"], 2, "{ops:#?}");
    assert_eq!(freshness["replicas_scraped"], 2, "{ops:#?}");
    assert_eq!(freshness["observations"], 200.0, "merged: {ops:#?}");
    // Rank 100 of 200 falls in (0.01, 0.1], 80 of its 160 past the start; rank 198 in
    // (0.1, 1], 18 of its 20.
    let p50 = freshness["p50_seconds"].as_f64().unwrap();
    let p99 = freshness["p99_seconds"].as_f64().unwrap();
    assert!((p50 - 0.055).abs() < 1e-9, "{p50}");
    assert!((p99 - 0.91).abs() < 1e-9, "{p99}");
}
