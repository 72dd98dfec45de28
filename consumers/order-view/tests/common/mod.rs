//! order-view's test setup on testkit: each test gets a random topic prefix on the real
//! broker (started by `infra/up.sh`), its own schema registry (the workspace's, in-process on
//! port 0), temp SQLite files, and order-view spawned in-process on port 0. The messages come
//! from testkit's fixtures; the feed is read by [`SseClient`].
#![allow(dead_code)]

mod sse;

use std::path::PathBuf;

use feedline::codec::{AvroEncoder, RegistryClient};
use feedline::{CancellationToken, Metrics, Outgoing, Producer, Settings};
use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_EVENTS, ORDER_EVENTS};
// Not every test binary uses every helper (`dead_code` above does not cover imports).
#[allow(unused_imports)]
pub use feedline_testkit::fixtures::*;
#[allow(unused_imports)]
pub use feedline_testkit::{
    PATIENCE, eventually, header, kafka_bootstrap, metric, random_prefix, read_topic,
    start_registry,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde_json::Value;
pub use sse::*;
use tokio::task::JoinHandle;

/// One test's world: topics under a fresh prefix, a registry, encoders and a producer.
pub struct TestEnv {
    pub prefix: String,
    pub registry_url: String,
    pub dir: tempfile::TempDir,
    pub producer: Producer,
    pub http: reqwest::Client,
    registry_token: CancellationToken,
    order: AvroEncoder<OrderEvent>,
    customer: AvroEncoder<CustomerEvent>,
    credit: AvroEncoder<CreditEvent>,
}

impl TestEnv {
    pub async fn start() -> Self {
        feedline::telemetry::init();
        let prefix = random_prefix();
        // The registry runs until the token is cancelled (on drop).
        let registry_token = CancellationToken::new();
        let registry_url = start_registry(&prefix, registry_token.clone()).await;

        let settings = Self::base_settings(&prefix, &registry_url, "sqlite::memory:", "");
        let client = RegistryClient::new(&settings.registry);
        let producer = Producer::new(&settings.kafka, Metrics::new("test")).expect("producer");
        TestEnv {
            order: feedline::contracts::encoder(&client, &settings.kafka, ORDER_EVENTS)
                .await
                .expect("order encoder"),
            customer: feedline::contracts::encoder(&client, &settings.kafka, CUSTOMER_EVENTS)
                .await
                .expect("customer encoder"),
            credit: feedline::contracts::encoder(&client, &settings.kafka, CREDIT_EVENTS)
                .await
                .expect("credit encoder"),
            prefix,
            registry_url,
            dir: tempfile::tempdir().expect("temp dir"),
            producer,
            http: reqwest::Client::new(),
            registry_token,
        }
    }

    fn base_settings(prefix: &str, registry_url: &str, db: &str, extra: &str) -> Settings {
        Settings::from_toml(&format!(
            r#"
            service_name = "order-view"
            [kafka]
            bootstrap_servers = "{}"
            topic_prefix = "{prefix}"
            default_partitions = 3
            linger_ms = 1
            statistics_interval_ms = 1000
            [consumer]
            session_timeout_ms = 6000
            drain_timeout_ms = 3000
            batch_max = 100
            [registry]
            url = "{registry_url}"
            [database]
            url = "{db}"
            max_connections = 4
            [http]
            port = 0
            {extra}
            "#,
            kafka_bootstrap()
        ))
        .expect("order-view settings")
    }

    /// The path of a (not yet existing) SQLite file in this test's temp dir.
    pub fn db(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// Starts order-view on the SQLite file `db`; `extra` is more TOML (an `[order_view]`
    /// section, say).
    pub async fn spawn_app(&self, db: &std::path::Path, extra: &str) -> TestApp {
        let settings = Self::base_settings(
            &self.prefix,
            &self.registry_url,
            &format!("sqlite:{}", db.display()),
            extra,
        );
        let token = CancellationToken::new();
        let (addr, handle) = tokio::time::timeout(
            PATIENCE,
            feedline_order_view::spawn(settings, token.clone()),
        )
        .await
        .expect("order-view started in time")
        .expect("order-view started");
        TestApp {
            url: format!("http://{addr}"),
            addr,
            generation: generation(db),
            http: self.http.clone(),
            token,
            handle: Some(handle),
        }
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    async fn send(&self, topic: &str, key: &str, payload: &[u8]) {
        self.producer
            .send(Outgoing::new(
                &self.topic(topic),
                Some(key.as_bytes()),
                payload,
            ))
            .await
            .expect("produce");
    }

    pub async fn send_order(&self, event: &OrderEvent) {
        let bytes = self.order.encode(event).unwrap();
        self.send(ORDER_EVENTS, order_key(event), &bytes).await;
    }

    pub async fn send_customer(&self, event: &CustomerEvent) {
        let bytes = self.customer.encode(event).unwrap();
        self.send(CUSTOMER_EVENTS, customer_key(event), &bytes)
            .await;
    }

    pub async fn send_credit(&self, event: &CreditEvent) {
        let bytes = self.credit.encode(event).unwrap();
        self.send(CREDIT_EVENTS, credit_key(event), &bytes).await;
    }

    /// Sends many order events without waiting for each acknowledgement.
    pub async fn send_orders_fast(&self, events: &[OrderEvent]) {
        let topic = self.topic(ORDER_EVENTS);
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let bytes = self.order.encode(event).unwrap();
            let key = order_key(event);
            pending.push(
                self.producer
                    .enqueue(Outgoing::new(&topic, Some(key.as_bytes()), &bytes))
                    .await
                    .expect("enqueue"),
            );
        }
        for p in pending {
            p.acknowledged().await.expect("acknowledged");
        }
    }

    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        self.send(topic, key, payload).await;
    }

    pub fn encode_order(&self, event: &OrderEvent) -> Vec<u8> {
        self.order.encode(event).unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.registry_token.cancel();
    }
}

pub fn payload(m: &OwnedMessage) -> &[u8] {
    m.payload().unwrap_or_default()
}

/// The generation of the read model in the SQLite file `db` (what its feed ids start with).
pub fn generation(db: &std::path::Path) -> String {
    rusqlite::Connection::open(db)
        .expect("open the read model")
        .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get(0)
        })
        .expect("the read model has a generation")
}

/// A running order-view.
pub struct TestApp {
    pub url: String,
    pub addr: std::net::SocketAddr,
    /// Its read model's generation, read when it started.
    pub generation: String,
    pub http: reqwest::Client,
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// GETs `path`: status and JSON body (asserting it is JSON, and no 5xx).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(status < 500, "{path}: server error {status}: {text}");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// GETs `path` and asserts 200.
    pub async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// Polls `path` until `cond` holds for its answer (any status).
    pub async fn until(&self, path: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
        eventually(
            &format!("an answer of {path} that holds"),
            PATIENCE,
            async || {
                let (status, body) = self.get(path).await;
                if cond(status, &body) {
                    Ok(body)
                } else {
                    Err(format!("answer {status}: {body}"))
                }
            },
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of the series `name` (or `name{label="value",...}`) in `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    /// Stops the service and waits until it has (consumer committed and left its group).
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(PATIENCE, handle)
                .await
                .expect("order-view stopped in time")
                .expect("order-view task joined")
                .expect("order-view stopped cleanly");
        }
    }

    /// GETs `path` as the gateway does for a client of `tenant`: status and JSON body.
    pub async fn get_as(&self, tenant: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .header("x-feedline-tenant", tenant)
            .send()
            .await
            .expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(status < 500, "{path}: server error {status}: {text}");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, body)
    }

    /// The feed as a client of `tenant` sees it, sending `last_event_id` as it is.
    pub async fn feed_as(
        &self,
        tenant: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-feedline-tenant", tenant.parse().expect("a header value"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client");
        SseClient::connect(&http, &format!("{}/feed{query}", self.url), last_event_id).await
    }

    /// The feed, resuming after change `after` of this app's own generation.
    pub async fn feed(&self, query: &str, after: Option<i64>) -> SseClient {
        let id = after.map(|seq| format!("{}-{seq}", self.generation));
        self.feed_from(query, id.as_deref()).await
    }

    /// The feed, sending `last_event_id` as it is.
    pub async fn feed_from(&self, query: &str, last_event_id: Option<&str>) -> SseClient {
        SseClient::connect(
            &self.http,
            &format!("{}/feed{query}", self.url),
            last_event_id,
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Polls `url` until it answers 200, failing after [`PATIENCE`]. A plain loop, not
/// [`eventually`], so a spawned (`Send`) task can wait with it.
pub async fn until_ok(http: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {url}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
