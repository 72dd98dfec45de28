//! The platform's test setup on testkit's core: every test gets a random topic prefix, its
//! own consumer groups and, when it needs one, its own PostgreSQL database with the platform
//! tables, against the real broker and server started by `infra/up.sh`.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use feedline::admin::{Admin, TopicSpec};
use feedline::config::{ConsumerSettings, Settings};
use feedline::consumer::{Consumer, ConsumerError, Handler, Progress};
use feedline::outbox::OutboxMessage;
use feedline::{CancellationToken, Metrics, Outgoing, Producer};
// Not every test binary uses every helper (`dead_code` above does not cover imports).
#[allow(unused_imports)]
pub use feedline_testkit::{PATIENCE, database_url, eventually, header, kafka_bootstrap};
use feedline_testkit::{connect, random_prefix, read_topic};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use tokio::task::JoinHandle;

pub struct TestCtx {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub producer: Producer,
}

impl TestCtx {
    pub fn new() -> Self {
        feedline::telemetry::init();
        let prefix = random_prefix();
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
        feedline_testkit::committed(&self.name(group), topic, partitions)
    }

    /// Reads `topic` from the beginning until `expected` messages arrived, and a surplus.
    pub async fn read_all(&self, topic: &str, expected: usize) -> Vec<OwnedMessage> {
        read_topic(topic, expected).await
    }
}

/// A fresh database with the platform tables.
pub async fn fresh_database() -> PgPool {
    let pool = connect(&feedline_testkit::fresh_database().await).await;
    feedline::db::install_platform_schema(&pool)
        .await
        .expect("platform tables installed");
    pool
}

pub fn text(m: &OwnedMessage) -> String {
    String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap()
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
