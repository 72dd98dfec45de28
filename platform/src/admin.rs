//! Topic administration: create what a service needs, idempotently.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("kafka admin client: {0}")]
    Client(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot delete topic {topic}: {code}")]
    DeleteTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("cannot read the configuration of topic {topic}: {code}")]
    DescribeTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

/// The in-sync replicas a write with `acks=all` needs on a topic replicated at least
/// [`MIN_ISR_FROM_REPLICATION`] times.
pub const MIN_INSYNC_REPLICAS: i32 = 2;
/// From this replication factor on, one broker down must not leave a single copy
/// acknowledging writes alone: with `min.insync.replicas = 1` (the broker default) a write
/// acknowledged by the leader only is lost when that broker's disk is.
pub const MIN_ISR_FROM_REPLICATION: i32 = 3;

/// A topic to create: partitions, replication and topic-level config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// -1 lets the broker decide (`default.replication.factor`).
    pub replication: i32,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            replication: -1,
            config: Vec::new(),
        }
    }

    pub fn replication(mut self, factor: i32) -> Self {
        self.replication = factor;
        self
    }

    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A compacted topic keeps the last record per key forever (e.g. `_schemas`).
    pub fn compacted(self) -> Self {
        self.config("cleanup.policy", "compact")
    }

    /// How long the broker keeps records, in milliseconds; -1 keeps them forever (what a
    /// topic needs when a read model is rebuilt from it).
    pub fn retention_ms(self, millis: i64) -> Self {
        self.config("retention.ms", &millis.to_string())
    }

    /// The topic-level config to create the topic with, at `replication` (resolved: -1 here
    /// means the broker's default, which this client cannot see). A key set twice takes its
    /// last value, and `min.insync.replicas` is [`MIN_INSYNC_REPLICAS`] from
    /// [`MIN_ISR_FROM_REPLICATION`] replicas on unless the spec sets it.
    pub fn effective_config(&self, replication: i32) -> BTreeMap<String, String> {
        let mut config: BTreeMap<String, String> = self.config.iter().cloned().collect();
        if replication >= MIN_ISR_FROM_REPLICATION {
            config
                .entry("min.insync.replicas".to_owned())
                .or_insert_with(|| MIN_INSYNC_REPLICAS.to_string());
        }
        config
    }
}

/// A topic-level setting of an existing topic that is not what its spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub key: String,
    pub wanted: String,
    /// `None` when the broker reports no value.
    pub actual: Option<String>,
}

#[derive(Debug)]
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    default_replication: i32,
}

impl Admin {
    pub fn new(settings: &KafkaSettings) -> Result<Self, AdminError> {
        let mut config = settings.client_config();
        config.remove("statistics.interval.ms");
        Ok(Admin {
            client: Arc::new(config.create()?),
            default_replication: settings.replication_factor,
        })
    }

    /// The replication `spec` is created with, and its topic-level config.
    fn resolve(&self, spec: &TopicSpec) -> (i32, BTreeMap<String, String>) {
        let replication = if spec.replication == -1 {
            self.default_replication
        } else {
            spec.replication
        };
        (replication, spec.effective_config(replication))
    }

    /// Creates the topics that do not exist yet. Existing ones are left as they are (their
    /// config may have been tuned on purpose), but every setting that differs from what
    /// their spec asks for is logged as a warning: a retention shorter than a rebuild needs
    /// must not go unnoticed.
    pub async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<(), AdminError> {
        if specs.is_empty() {
            return Ok(());
        }
        let resolved: Vec<(i32, BTreeMap<String, String>)> =
            specs.iter().map(|spec| self.resolve(spec)).collect();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&resolved)
            .map(|(spec, (replication, config))| {
                config.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(*replication),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let mut existing = Vec::new();
        for result in self.client.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => tracing::info!(topic, "topic created"),
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
                Err((topic, code)) => return Err(AdminError::CreateTopic { topic, code }),
            }
        }
        let existing: Vec<TopicSpec> = specs
            .iter()
            .filter(|spec| existing.contains(&spec.name))
            .cloned()
            .collect();
        if existing.is_empty() {
            return Ok(());
        }
        // Only a check: a broker that cannot describe configs must not stop a service.
        match self.config_drift(&existing).await {
            Ok(drifts) => {
                for d in drifts {
                    tracing::warn!(
                        topic = d.topic,
                        key = d.key,
                        wanted = d.wanted,
                        actual = d.actual.as_deref().unwrap_or("unset"),
                        "an existing topic's config differs from feedline's, change it with \
                         kafka-configs.sh --alter --entity-type topics --add-config key=wanted"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the config of existing topics"),
        }
        Ok(())
    }

    /// The settings of the (existing) topics of `specs` that differ from what their spec
    /// asks for ([`TopicSpec::effective_config`]).
    pub async fn config_drift(&self, specs: &[TopicSpec]) -> Result<Vec<Drift>, AdminError> {
        let mut drifts = Vec::new();
        for spec in specs {
            let actual = self.topic_config(&spec.name).await?;
            for (key, wanted) in self.resolve(spec).1 {
                if actual.get(&key) != Some(&wanted) {
                    drifts.push(Drift {
                        topic: spec.name.clone(),
                        actual: actual.get(&key).cloned(),
                        key,
                        wanted,
                    });
                }
            }
        }
        Ok(drifts)
    }

    /// Every topic whose name starts with `prefix`: a bench run's or a test's topics.
    pub async fn topics_with_prefix(&self, prefix: &str) -> Result<Vec<String>, AdminError> {
        let client = self.client.clone();
        let prefix = prefix.to_owned();
        // librdkafka's metadata request blocks: keep it off the async workers.
        let listed = tokio::task::spawn_blocking(move || {
            let metadata = client
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))?;
            Ok(metadata
                .topics()
                .iter()
                .map(|t| t.name())
                .filter(|name| name.starts_with(&prefix))
                .map(str::to_owned)
                .collect())
        })
        .await;
        match listed {
            Ok(topics) => topics,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The topic-level configuration the broker reports for `topic` (defaults included).
    pub async fn topic_config(&self, topic: &str) -> Result<BTreeMap<String, String>, AdminError> {
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
        let mut config = BTreeMap::new();
        for result in self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
            .await?
        {
            let resource = result.map_err(|code| AdminError::DescribeTopic {
                topic: topic.to_owned(),
                code,
            })?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(config)
    }

    pub async fn delete_topics(&self, topics: &[&str]) -> Result<(), AdminError> {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self.client.delete_topics(topics, &options).await? {
            if let Err((topic, code)) = result
                && code != RDKafkaErrorCode::UnknownTopicOrPartition
            {
                return Err(AdminError::DeleteTopic { topic, code });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_replicas_or_more_need_two_in_sync() {
        let spec = TopicSpec::new("t", 6);
        for (replication, expected) in [
            (-1, None),
            (1, None),
            (2, None),
            (3, Some("2")),
            (5, Some("2")),
        ] {
            assert_eq!(
                spec.effective_config(replication)
                    .get("min.insync.replicas")
                    .map(String::as_str),
                expected,
                "replication {replication}"
            );
        }
    }

    #[test]
    fn a_spec_keeps_its_own_min_isr_and_its_last_value_wins() {
        let spec = TopicSpec::new("t", 1)
            .config("min.insync.replicas", "3")
            .retention_ms(1000)
            .retention_ms(-1);
        let config = spec.effective_config(5);
        assert_eq!(config["min.insync.replicas"], "3");
        assert_eq!(config["retention.ms"], "-1");
    }
}
