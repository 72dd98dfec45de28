//! Shared test setup against the real broker and PostgreSQL (started by `infra/up.sh`): each
//! test gets a random topic prefix, its own schema registry (in-process, on the prefix's
//! `_schemas` topic), a fresh database per service, and readers of the real topics.
//!
//! The consumer services' tests use [`TestEnv`] whole; other crates' tests take the pieces
//! ([`random_prefix`], [`start_registry`], [`metric`], [`header`], ...) under their own setup.

pub mod fuzz;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use feedline::codec::{AvroDecoder, AvroEncoder, RegistryClient};
use feedline::contracts::Contracts;
use feedline::{CancellationToken, Metrics, Outgoing, Producer, Settings};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::DropGuard;
use uuid::Uuid;

/// How long any condition may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

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

pub fn database_url() -> String {
    std::env::var("FEEDLINE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://feedline:feedline@127.0.0.1:5432/feedline".into())
}

/// One test's world: topic prefix, schema registry, a producer to play the other services.
pub struct TestEnv {
    pub prefix: String,
    pub partitions: i32,
    pub registry_url: String,
    pub contracts: Contracts,
    pub producer: Producer,
    base: Settings,
    _registry: DropGuard,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("prefix", &self.prefix)
            .field("registry_url", &self.registry_url)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts a registry on a fresh prefix; service topics get `partitions` partitions.
    pub async fn start(partitions: i32) -> Self {
        feedline::telemetry::init();
        let prefix = random_prefix();
        let token = CancellationToken::new();
        let registry_url = start_registry(&prefix, token.clone()).await;
        let base = Self::settings_for(&prefix, partitions, &registry_url, "test", "postgres://x/y");
        let registry = Arc::new(RegistryClient::new(&base.registry));
        let contracts = Contracts::register(registry, &base.kafka)
            .await
            .expect("schemas registered");
        let producer = Producer::new(&base.kafka, Metrics::new("test")).expect("producer");
        TestEnv {
            prefix,
            partitions,
            registry_url,
            contracts,
            producer,
            base,
            _registry: token.drop_guard(),
        }
    }

    fn settings_for(
        prefix: &str,
        partitions: i32,
        registry_url: &str,
        service: &str,
        database_url: &str,
    ) -> Settings {
        Settings::from_toml(&format!(
            r#"
            service_name = "{service}"
            [kafka]
            bootstrap_servers = "{}"
            topic_prefix = "{prefix}"
            default_partitions = {partitions}
            linger_ms = 1
            statistics_interval_ms = 1000
            [consumer]
            session_timeout_ms = 6000
            drain_timeout_ms = 3000
            [registry]
            url = "{registry_url}"
            [database]
            url = "{database_url}"
            max_connections = 5
            [http]
            host = "127.0.0.1"
            port = 0
            "#,
            kafka_bootstrap()
        ))
        .expect("test settings")
    }

    /// Settings of a service of this test, on its own database.
    pub fn settings(&self, service: &str, database_url: &str) -> Settings {
        Self::settings_for(
            &self.prefix,
            self.partitions,
            &self.registry_url,
            service,
            database_url,
        )
    }

    /// `base` with the prefix.
    pub fn topic(&self, base: &str) -> String {
        self.base.kafka.name(base)
    }

    pub async fn encoder<T: Serialize>(&self, topic: &str) -> AvroEncoder<T> {
        self.contracts.encoder(topic).await.expect("encoder")
    }

    pub fn decoder<T: DeserializeOwned>(&self, topic: &str) -> AvroDecoder<T, RegistryClient> {
        self.contracts.decoder(topic).expect("decoder")
    }

    /// Encodes `value` for `topic` (unprefixed) and sends it, keyed by `key`.
    pub async fn send<T: Serialize>(&self, topic: &str, key: Uuid, value: &T) {
        let bytes = self
            .encoder::<T>(topic)
            .await
            .encode(value)
            .expect("encode");
        self.send_raw(topic, key, &bytes).await;
    }

    /// Sends `bytes` as they are to `topic` (unprefixed).
    pub async fn send_raw(&self, topic: &str, key: Uuid, bytes: &[u8]) {
        let (topic, key) = (self.topic(topic), key.to_string());
        self.producer
            .send(Outgoing::new(&topic, Some(key.as_bytes()), bytes))
            .await
            .expect("produce");
    }

    /// Sends many values to `topic` (unprefixed), all in flight at once.
    pub async fn send_all<T: Serialize>(&self, topic: &str, values: &[(Uuid, T)]) {
        let encoder = self.encoder::<T>(topic).await;
        let topic = self.topic(topic);
        let mut pending = Vec::with_capacity(values.len());
        for (key, value) in values {
            let bytes = encoder.encode(value).expect("encode");
            let key = key.to_string();
            let outgoing = Outgoing::new(&topic, Some(key.as_bytes()), &bytes);
            pending.push(self.producer.enqueue(outgoing).await.expect("enqueue"));
        }
        for delivery in pending {
            delivery.acknowledged().await.expect("acknowledged");
        }
    }

    /// Reads `topic` (unprefixed) from the beginning.
    pub fn reader(&self, topic: &str) -> Reader {
        Reader::new(&self.topic(topic))
    }

    /// Reads and decodes the envelopes of `topic` (unprefixed) from the beginning.
    pub fn events<T: DeserializeOwned>(&self, topic: &str) -> Events<T> {
        Events {
            reader: self.reader(topic),
            decoder: self.decoder(topic),
            events: Vec::new(),
        }
    }
}

/// A topic prefix of its own for one test: `t` and 10 hex digits and a dash.
pub fn random_prefix() -> String {
    format!("t{}-", &Uuid::new_v4().simple().to_string()[..10])
}

/// Starts a schema registry in-process on port 0, on `prefix`'s `_schemas` topic; it runs
/// until `token` is cancelled. Returns its URL.
pub async fn start_registry(prefix: &str, token: CancellationToken) -> String {
    let settings = Settings::from_toml(&format!(
        r#"
        service_name = "registry"
        [kafka]
        bootstrap_servers = "{}"
        topic_prefix = "{prefix}"
        linger_ms = 0
        [http]
        host = "127.0.0.1"
        port = 0
        [registry_server]
        dev_mode = true
        # One librdkafka client less per test; the discovery tests announce on their own.
        [discovery]
        enabled = false
        "#,
        kafka_bootstrap()
    ))
    .expect("registry settings");
    // Creating the `_schemas` topic and reading it back can take a while on a cold broker.
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        feedline_registry::spawn(settings, token),
    )
    .await
    .expect("registry started in time")
    .expect("registry started");
    format!("http://{}", running.addr)
}

/// A fresh, empty database; returns its URL. Never dropped: a failed test leaves its data
/// for a look, and CI machines are throwaway.
pub async fn fresh_database() -> String {
    let admin = PgPool::connect(&database_url())
        .await
        .expect("connect to postgres");
    let name = format!("test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let base = database_url();
    format!(
        "{}/{name}",
        &base[..base.rfind('/').expect("a database name")]
    )
}

pub async fn connect(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(3)
        .connect(url)
        .await
        .expect("connect to the test database")
}

/// A service started in-process.
pub struct Service {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub async fn start<F, Fut>(spawn: F, settings: Settings) -> Self
    where
        F: FnOnce(Settings, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)>>,
    {
        let token = CancellationToken::new();
        let (addr, handle) = tokio::time::timeout(PATIENCE, spawn(settings, token.clone()))
            .await
            .expect("service started in time")
            .expect("service started");
        Service {
            addr,
            token,
            handle: Some(handle),
        }
    }

    /// Cancels the service and waits until it has stopped cleanly.
    pub async fn stop(mut self) {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("service stopped in time")
            .expect("service task joined")
            .expect("service stopped cleanly");
    }

    /// The Prometheus text of the service's `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        let response = reqwest::get(&url).await.expect("GET /metrics");
        assert!(response.status().is_success());
        response.text().await.expect("metrics text")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The value of the series `name` (exact, labels included) in Prometheus text, 0 if absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            // The registry adds `service="..."`; match the name and the given labels.
            let (series_name, labels) = series.split_once('{').unwrap_or((series, ""));
            let (want_name, want_labels) = name.split_once('{').unwrap_or((name, ""));
            series_name == want_name
                && want_labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .all(|l| labels.contains(l))
        })
        .map_or(0.0, |(_, v)| v.parse().expect("a number"))
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    fn new(topic: &str) -> Self {
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

/// The workspace binary `name` (`feedline-order-view`, ...), for tests that run services as
/// real processes (to kill -9 them). A test executable lives in `target/<profile>/deps`, the
/// binaries one level up; `cargo test --workspace` builds them all before any test runs.
pub fn service_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let profile = deps.parent().expect("the target profile directory");
    let path = profile.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the services first (`cargo build --workspace --bins`, which \
         `cargo test --workspace` does)",
        path.display()
    );
    path
}
