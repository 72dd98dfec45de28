//! Where the commands connect: the loaded settings plus the time any one broker or registry
//! call may take, and the Kafka clients built from them. Every command asks the cluster for
//! metadata first, so an unreachable broker or a missing topic is one clear error within
//! `--timeout` instead of a hang.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use feedline::codec::RegistryClient;
use feedline::{Metrics, Producer, Settings};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaRespErr;

/// The settings of one invocation and its per-call timeout.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub settings: Settings,
    pub timeout: Duration,
}

impl Cluster {
    pub fn new(settings: Settings, timeout: Duration) -> Self {
        Cluster { settings, timeout }
    }

    pub fn registry(&self) -> RegistryClient {
        RegistryClient::new(&self.settings.registry)
    }

    pub fn registry_url(&self) -> &str {
        &self.settings.registry.url
    }

    /// Brokers and pass-through properties, without the statistics the services export.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = self.settings.kafka.client_config();
        config.remove("statistics.interval.ms");
        // How this tool shows up in `groups describe` and broker logs, unless configured.
        if config.get("client.id").is_none() {
            config.set("client.id", "feedline-cli");
        }
        config
    }

    /// A consumer that commits nothing by itself and reports the end of each partition.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.settings.consumer.session_timeout_ms.to_string(),
            );
        config
    }

    /// A client for metadata, watermarks and committed offsets (it joins no group).
    pub fn metadata_client(&self) -> anyhow::Result<BaseConsumer> {
        self.client_config()
            .create()
            .context("cannot create a Kafka client")
    }

    pub fn producer(&self) -> anyhow::Result<Producer> {
        Producer::new(&self.settings.kafka, Metrics::new("feedline-cli"))
            .context("cannot create a Kafka producer")
    }

    /// What a Kafka call that failed for lack of a broker says.
    pub fn unreachable(&self, error: KafkaError) -> anyhow::Error {
        anyhow!(
            "cannot reach Kafka at {} within {} s: {error}",
            self.settings.kafka.bootstrap_servers,
            self.timeout.as_secs_f64()
        )
    }

    /// The cluster's metadata (all topics, or one).
    pub fn metadata<C: Consumer>(
        &self,
        client: &C,
        topic: Option<&str>,
    ) -> anyhow::Result<Metadata> {
        client
            .fetch_metadata(topic, self.timeout)
            .map_err(|e| self.unreachable(e))
    }

    /// The partition ids of `topic`, or an error saying it does not exist.
    pub fn partitions<C: Consumer>(&self, client: &C, topic: &str) -> anyhow::Result<Vec<i32>> {
        let metadata = self.metadata(client, Some(topic))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            bail!(missing_topic(topic));
        };
        match found.error() {
            None => {}
            Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                bail!(missing_topic(topic))
            }
            Some(e) => bail!("topic {topic} is not available: {e:?}"),
        }
        let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
        if partitions.is_empty() {
            bail!(missing_topic(topic));
        }
        partitions.sort_unstable();
        Ok(partitions)
    }

    /// Low and high watermark of one partition.
    pub fn watermarks<C: Consumer>(
        &self,
        client: &C,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<(i64, i64)> {
        client
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|e| self.unreachable(e))
            .with_context(|| format!("cannot read the end offsets of {topic}/{partition}"))
    }
}

fn missing_topic(topic: &str) -> String {
    format!(
        "topic {topic} does not exist; create it with `feedline topics create {topic}` or see `feedline topics list`"
    )
}

/// `k=v` as used by `--header` and `--filter`.
pub fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

/// Seconds as given on the command line (`10`, `2.5`).
pub fn seconds(arg: &str) -> Result<Duration, String> {
    arg.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("expected a positive number of seconds, got {arg:?}"))
}
