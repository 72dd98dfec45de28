//! What needs the workspace's schema registry (the `registry` feature): the registry itself,
//! in-process, and [`TestEnv`], the whole world of a consumer service's test.

use std::sync::Arc;
use std::time::Duration;

use feedline::codec::{AvroDecoder, AvroEncoder, RegistryClient};
use feedline::contracts::Contracts;
use feedline::{CancellationToken, Metrics, Outgoing, Producer, Settings};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::DropGuard;
use uuid::Uuid;

use crate::{Events, Reader, kafka_bootstrap, random_prefix};

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
        Events::new(self.reader(topic), self.decoder(topic))
    }
}

/// Starts a schema registry in-process on port 0, on `prefix`'s `_schemas` topic; it runs
/// until `token` is cancelled. Returns its URL.
pub async fn start_registry(prefix: &str, token: CancellationToken) -> String {
    let settings = crate::registry_settings(prefix);
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
