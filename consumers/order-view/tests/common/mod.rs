//! Shared test setup: each test gets a random topic prefix on the real broker (started by
//! `infra/up.sh`), its own schema registry (the workspace's, in-process on port 0), temp
//! SQLite files, and order-view spawned in-process on port 0.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use feedline::codec::{AvroEncoder, RegistryClient};
use feedline::{CancellationToken, Metrics, Outgoing, Producer, Settings};
use feedline_schemas::types::*;
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_EVENTS, ORDER_EVENTS};
// Not every test binary uses every helper (`dead_code` above does not cover imports).
#[allow(unused_imports)]
pub use feedline_testkit::{header, kafka_bootstrap, random_prefix, start_registry};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message};
use serde_json::Value;
use tokio::task::JoinHandle;

/// How long any wait in these tests may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

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
            Duration::from_secs(30),
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
        let key = order_customer(&event.payload).to_owned();
        self.send(ORDER_EVENTS, &key, &self.order.encode(event).unwrap())
            .await;
    }

    pub async fn send_customer(&self, event: &CustomerEvent) {
        let key = match &event.payload {
            CustomerEventPayload::CustomerRegistered(p) => p.customer_id.clone(),
            CustomerEventPayload::CreditLimitChanged(p) => p.customer_id.clone(),
        };
        self.send(CUSTOMER_EVENTS, &key, &self.customer.encode(event).unwrap())
            .await;
    }

    pub async fn send_credit(&self, event: &CreditEvent) {
        let key = match &event.payload {
            CreditEventPayload::CreditReserved(p) => p.customer_id.clone(),
            CreditEventPayload::CreditLimitExceeded(p) => p.customer_id.clone(),
            CreditEventPayload::CreditReleased(p) => p.customer_id.clone(),
        };
        self.send(CREDIT_EVENTS, &key, &self.credit.encode(event).unwrap())
            .await;
    }

    /// Sends many order events without waiting for each acknowledgement.
    pub async fn send_orders_fast(&self, events: &[OrderEvent]) {
        let topic = self.topic(ORDER_EVENTS);
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let bytes = self.order.encode(event).unwrap();
            let key = order_customer(&event.payload);
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

    /// Reads `topic` from the beginning until `expected` messages arrived (or the patience
    /// ran out).
    pub fn read_topic(&self, topic: &str, expected: usize) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", format!("{}reader", self.prefix))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut out = Vec::new();
        while out.len() < expected && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        out
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

fn order_customer(payload: &OrderEventPayload) -> &str {
    match payload {
        OrderEventPayload::OrderCreated(p) => &p.customer_id,
        OrderEventPayload::OrderApproved(p) => &p.customer_id,
        OrderEventPayload::OrderRejected(p) => &p.customer_id,
        OrderEventPayload::OrderCancelled(p) => &p.customer_id,
    }
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
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(path).await;
            if cond(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out polling {path}, last answer {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// The value of the first series of `name` in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Stops the service and waits until it has (consumer committed and left its group).
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
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

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` until it holds; panics with `what` after the patience ran out.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One Server-Sent Event; its id split into the generation and the change number.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<i64>,
    pub generation: Option<String>,
    pub event: String,
    pub data: Value,
}

impl Sse {
    /// The id as the feed sent it.
    pub fn raw_id(&self) -> Option<String> {
        Some(format!("{}-{}", self.generation.as_ref()?, self.id?))
    }
}

/// A feed client over reqwest, parsing the event stream itself.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    pub comments: usize,
}

impl SseClient {
    pub async fn connect(http: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("feed connected");
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        SseClient {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The next event; panics when none came in time.
    pub async fn next(&mut self) -> Sse {
        self.next_within(PATIENCE).await.expect("an event in time")
    }

    /// Reads until an event satisfies `stop`, returning everything read (it included).
    pub async fn read_until(&mut self, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut out = Vec::new();
        loop {
            let event = self.next().await;
            let done = stop(&event);
            out.push(event);
            if done {
                return out;
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Sse> {
        let (event, comments) = parse_block(block);
        self.comments += comments;
        event
    }
}

/// Parses one SSE block (the text up to a blank line): the event, if it has fields, and
/// the number of comment lines.
pub fn parse_block(block: &str) -> (Option<Sse>, usize) {
    let (mut id, mut generation) = (None, None);
    let (mut event, mut data) = (String::from("message"), String::new());
    let (mut fields, mut comments) = (0, 0);
    for line in block.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(':') {
            comments += 1;
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        fields += 1;
        match name {
            "id" => {
                let (g, seq) = value.rsplit_once('-').expect("<generation>-<seq>");
                generation = Some(g.to_owned());
                id = Some(seq.parse().expect("a change number"));
            }
            "event" => event = value.to_owned(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    let event = (fields > 0).then(|| Sse {
        id,
        generation,
        event,
        data: serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("JSON data ({e}) in {block:?}")),
    });
    (event, comments)
}

/// Every event of an SSE body.
pub fn parse_events(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter_map(|block| parse_block(block).0)
        .collect()
}

// Event builders, stamped now (see `At` for another time).

pub fn order_event(payload: OrderEventPayload) -> OrderEvent {
    OrderEvent::new("test", new_id(), None, payload)
}

pub fn customer_event(payload: CustomerEventPayload) -> CustomerEvent {
    CustomerEvent::new("test", new_id(), None, payload)
}

pub fn credit_event(payload: CreditEventPayload) -> CreditEvent {
    CreditEvent::new("test", new_id(), None, payload)
}

pub fn registered(customer: &str, name: &str, limit: i64) -> CustomerEvent {
    customer_event(CustomerEventPayload::CustomerRegistered(
        CustomerRegistered {
            customer_id: customer.into(),
            name: name.into(),
            credit_limit_cents: limit,
            tenant: None,
        },
    ))
}

/// A registration of a customer of `tenant`.
pub fn registered_in(customer: &str, name: &str, limit: i64, tenant: &str) -> CustomerEvent {
    let mut event = registered(customer, name, limit);
    if let CustomerEventPayload::CustomerRegistered(p) = &mut event.payload {
        p.tenant = Some(tenant.into());
    }
    event
}

pub fn created(customer: &str, order: &str, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderCreated(OrderCreated {
        order_id: order.into(),
        customer_id: customer.into(),
        total_cents: total,
    }))
}

pub fn approved(customer: &str, order: &str, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderApproved(OrderApproved {
        order_id: order.into(),
        customer_id: customer.into(),
        total_cents: total,
    }))
}

pub fn rejected(customer: &str, order: &str, total: i64, reason: &str) -> OrderEvent {
    order_event(OrderEventPayload::OrderRejected(OrderRejected {
        order_id: order.into(),
        customer_id: customer.into(),
        total_cents: total,
        reason: reason.into(),
    }))
}

pub fn cancelled(customer: &str, order: &str, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderCancelled(OrderCancelled {
        order_id: order.into(),
        customer_id: customer.into(),
        total_cents: total,
        reason: Some("customer asked".into()),
    }))
}

pub fn reserved(
    customer: &str,
    order: &str,
    amount: i64,
    reserved: i64,
    limit: i64,
) -> CreditEvent {
    credit_event(CreditEventPayload::CreditReserved(CreditReserved {
        order_id: order.into(),
        customer_id: customer.into(),
        amount_cents: amount,
        credit_reserved_cents: reserved,
        credit_limit_cents: limit,
    }))
}

pub fn exceeded(customer: &str, order: &str, amount: i64, available: i64) -> CreditEvent {
    credit_event(CreditEventPayload::CreditLimitExceeded(
        CreditLimitExceeded {
            order_id: order.into(),
            customer_id: customer.into(),
            amount_cents: amount,
            credit_available_cents: available,
            reason: "credit limit exceeded".into(),
        },
    ))
}

pub fn released(customer: &str, order: &str, amount: i64, reserved: i64) -> CreditEvent {
    credit_event(CreditEventPayload::CreditReleased(CreditReleased {
        order_id: order.into(),
        customer_id: customer.into(),
        amount_cents: amount,
        credit_reserved_cents: reserved,
    }))
}

/// Sets `occurred_at`.
pub trait At: Sized {
    fn at(self, millis: i64) -> Self;
}

impl At for OrderEvent {
    fn at(mut self, millis: i64) -> Self {
        self.occurred_at = millis;
        self
    }
}

impl At for CustomerEvent {
    fn at(mut self, millis: i64) -> Self {
        self.occurred_at = millis;
        self
    }
}

impl At for CreditEvent {
    fn at(mut self, millis: i64) -> Self {
        self.occurred_at = millis;
        self
    }
}
