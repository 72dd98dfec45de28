//! The test broker: where it is, a topic prefix per test, and readers of its topics.

use std::time::Duration;

use feedline::codec::{AvroDecoder, RegistryClient};
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::PATIENCE;

pub fn kafka_bootstrap() -> String {
    std::env::var("FEEDLINE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Where the broker's TLS listeners are, and the files and credentials of their clients, as
/// `infra/kafka.sh` generates them (`infra/kafka.sh tls` prints the same).
#[derive(Debug, Clone)]
pub struct KafkaTls {
    /// The SSL listener, which requires a client certificate.
    pub ssl_bootstrap: String,
    /// The SASL_SSL listener (SCRAM-SHA-512).
    pub sasl_bootstrap: String,
    pub dir: std::path::PathBuf,
}

impl KafkaTls {
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_certificate(&self) -> std::path::PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> std::path::PathBuf {
        self.dir.join("client.key")
    }
    pub fn client_key_password(&self) -> String {
        self.read("client-key-password")
    }
    pub fn scram_username(&self) -> &'static str {
        "feedline"
    }
    pub fn scram_password(&self) -> String {
        self.read("scram-password")
    }

    fn read(&self, name: &str) -> String {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot read {} ({e}); start the broker with infra/kafka.sh start, or point \
                     FEEDLINE_TEST_KAFKA_TLS_DIR at its tls directory",
                    path.display()
                )
            })
            .trim()
            .to_owned()
    }
}

/// The TLS listeners of the test broker: FEEDLINE_TEST_KAFKA_SSL, FEEDLINE_TEST_KAFKA_SASL and
/// FEEDLINE_TEST_KAFKA_TLS_DIR, by default those `infra/kafka.sh start` sets up
/// (9094, 9095, `$FEEDLINE_STATE/kafka/tls`).
pub fn kafka_tls() -> KafkaTls {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let state = var("FEEDLINE_STATE", "/tmp/feedline-infra");
    KafkaTls {
        ssl_bootstrap: var("FEEDLINE_TEST_KAFKA_SSL", "127.0.0.1:9094"),
        sasl_bootstrap: var("FEEDLINE_TEST_KAFKA_SASL", "127.0.0.1:9095"),
        dir: var("FEEDLINE_TEST_KAFKA_TLS_DIR", &format!("{state}/kafka/tls")).into(),
    }
}

/// A topic prefix of its own for one test: `t` and 10 hex digits and a dash.
pub fn random_prefix() -> String {
    format!("t{}-", &Uuid::new_v4().simple().to_string()[..10])
}

/// Raw messages of one topic, read from the beginning by a group of its own.
pub struct Reader {
    consumer: StreamConsumer,
    pub messages: Vec<OwnedMessage>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("read", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl Reader {
    pub fn new(topic: &str) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", format!("reader-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        Reader {
            consumer,
            messages: Vec::new(),
        }
    }

    /// The next message, if one comes within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<OwnedMessage> {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Ok(Ok(m)) => Some(m.detach()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "test reader");
                None
            }
            Err(_) => None,
        }
    }

    /// Reads until `done` holds for what was read, failing after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&[OwnedMessage]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.messages) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; read {} message(s)",
                self.messages.len()
            );
            if let Some(m) = self.next(Duration::from_millis(100)).await {
                self.messages.push(m);
            }
        }
    }
}

impl Reader {
    /// Reads until nothing new came for `quiet`: what a surplus or a duplicate would need to
    /// show up.
    pub async fn settle(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while let Some(m) = self.next(quiet).await {
            self.messages.push(m);
            assert!(
                tokio::time::Instant::now() < deadline,
                "the topic never went quiet"
            );
        }
    }
}

/// Every message of `topic`, read from the beginning: at least `expected` (failing after
/// [`PATIENCE`]), and whatever else comes before the topic has been quiet for half a
/// second, so that a surplus shows too.
pub async fn read_topic(topic: &str, expected: usize) -> Vec<OwnedMessage> {
    let mut reader = Reader::new(topic);
    reader
        .until(&format!("{expected} message(s) on {topic}"), |m| {
            m.len() >= expected
        })
        .await;
    reader.settle(Duration::from_millis(500)).await;
    reader.messages
}

/// The envelopes of one topic, decoded, with their Kafka keys.
pub struct Events<T> {
    reader: Reader,
    decoder: AvroDecoder<T, RegistryClient>,
    /// (key, envelope) in the order read.
    pub events: Vec<(String, T)>,
}

impl<T> std::fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("read", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Events<T> {
    /// Decodes what `reader` reads with `decoder`.
    pub fn new(reader: Reader, decoder: AvroDecoder<T, RegistryClient>) -> Self {
        Events {
            reader,
            decoder,
            events: Vec::new(),
        }
    }

    async fn read(&mut self, wait: Duration) -> bool {
        let Some(m) = self.reader.next(wait).await else {
            return false;
        };
        let value = self
            .decoder
            .decode(m.payload().unwrap_or_default())
            .await
            .expect("a decodable envelope");
        let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).expect("utf-8 key");
        self.events.push((key, value));
        true
    }

    /// Reads until `done` holds for the events read, failing after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&[(String, T)]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !done(&self.events) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; read {} event(s)",
                self.events.len()
            );
            self.read(Duration::from_millis(100)).await;
        }
    }

    /// Reads until nothing new came for `quiet`: what a duplicate would need to show up.
    pub async fn settle(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.read(quiet).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the topic never went quiet"
            );
        }
    }
}

pub fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).expect("utf-8 header"))
}

/// The offsets `group` committed for `topic`'s partitions (-1001, librdkafka's "invalid",
/// where it committed none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", group)
        .create()
        .expect("a consumer to read committed offsets");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1001,
            },
        )
        .collect()
}
