//! Shared test setup: every test gets a random topic prefix, its own consumer groups and,
//! when it needs one, its own PostgreSQL database, against the real broker and server
//! started by `infra/up.sh`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use feedline::admin::{Admin, TopicSpec};
use feedline::config::{ConsumerSettings, Settings};
use feedline::consumer::{Consumer, ConsumerError, Handler, Progress};
use feedline::outbox::OutboxMessage;
use feedline::{CancellationToken, Metrics, Outgoing, Producer};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;

pub fn kafka_bootstrap() -> String {
    std::env::var("FEEDLINE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn database_url() -> String {
    std::env::var("FEEDLINE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://feedline:feedline@127.0.0.1:5432/feedline".into())
}

pub struct TestCtx {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub producer: Producer,
}

impl TestCtx {
    pub fn new() -> Self {
        feedline::telemetry::init();
        let prefix = format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let settings = Settings::from_toml(&format!(
            r#"
            service_name = "test"
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
            "#,
            kafka_bootstrap()
        ))
        .expect("test settings");
        let metrics = Metrics::new("test");
        let producer = Producer::new(&settings.kafka, metrics.clone()).expect("producer");
        TestCtx {
            settings,
            metrics,
            producer,
        }
    }

    pub fn name(&self, base: &str) -> String {
        self.settings.kafka.name(base)
    }

    /// Creates `<prefix><base>` with `partitions` partitions and returns its full name.
    pub async fn topic(&self, base: &str, partitions: i32) -> String {
        let name = self.name(base);
        Admin::new(&self.settings.kafka)
            .unwrap()
            .ensure_topics(&[TopicSpec::new(&name, partitions)])
            .await
            .expect("create topic");
        name
    }

    pub async fn produce(&self, topic: &str, key: &str, payload: &[u8], headers: &[(&str, &[u8])]) {
        self.producer
            .send(Outgoing::new(topic, Some(key.as_bytes()), payload).headers(headers))
            .await
            .expect("produce");
    }

    pub fn spawn_consumer<H: Handler>(
        &self,
        group: &str,
        topics: &[String],
        handler: H,
    ) -> (CancellationToken, JoinHandle<Result<(), ConsumerError>>) {
        let (token, handle, _) =
            self.spawn_watched(group, topics, handler, &self.settings.consumer);
        (token, handle)
    }

    /// [`TestCtx::spawn_consumer`] with its own consumer settings, returning the consumer's
    /// progress (what its health endpoints read) too.
    pub fn spawn_watched<H: Handler>(
        &self,
        group: &str,
        topics: &[String],
        handler: H,
        settings: &ConsumerSettings,
    ) -> (
        CancellationToken,
        JoinHandle<Result<(), ConsumerError>>,
        Progress,
    ) {
        let consumer = Consumer::new(
            &self.settings.kafka,
            settings,
            &self.name(group),
            topics,
            handler,
            self.producer.clone(),
            self.metrics.clone(),
        )
        .expect("consumer");
        let progress = consumer.progress();
        let token = CancellationToken::new();
        let handle = tokio::spawn(consumer.run(token.clone()));
        (token, handle, progress)
    }

    /// The offsets the group committed for `topic`'s partitions (-1001 when none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", self.name(group))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).unwrap().offset() {
                    Offset::Offset(o) => o,
                    _ => -1001,
                },
            )
            .collect()
    }

    /// Reads `topic` from the beginning until `expected` messages arrived (or 30 s passed),
    /// then half a second more, so a surplus shows too.
    pub fn read_all(&self, topic: &str, expected: usize) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", format!("{}reader", self.name("")))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        let mut surplus_deadline = None;
        loop {
            let now = std::time::Instant::now();
            if now > deadline || surplus_deadline.is_some_and(|d| now > d) {
                return out;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
            if out.len() >= expected && surplus_deadline.is_none() {
                surplus_deadline = Some(now + Duration::from_millis(500));
            }
        }
    }
}

/// A fresh database with the platform tables, dropped never: CI machines are throwaway and
/// a failed test leaves its data for a look.
pub async fn fresh_database() -> PgPool {
    let admin = PgPool::connect(&database_url())
        .await
        .expect("connect to postgres");
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let base = database_url();
    let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&url)
        .await
        .unwrap();
    feedline::db::install_platform_schema(&pool).await.unwrap();
    pool
}

pub fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).unwrap())
}

pub fn text(m: &OwnedMessage) -> String {
    String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap()
}

/// Waits until `cond` holds, polling; panics with `what` after 30 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type Seen = Arc<Mutex<Vec<OwnedMessage>>>;

/// Outbox message `i` for `key`: payload `key:i`, header `event-id: ev<i>`.
pub fn message(topic: &str, key: &str, i: usize) -> OutboxMessage {
    OutboxMessage {
        topic: topic.to_owned(),
        key: Some(key.as_bytes().to_vec()),
        payload: format!("{key}:{i}").into_bytes(),
        headers: vec![("event-id".to_owned(), format!("ev{i}").into_bytes())],
        trace_context: None,
    }
}
