//! Topic administration: create what a service needs, idempotently.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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
}

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

    /// Creates the topics that do not exist yet; existing ones are left as they are.
    pub async fn ensure_topics(&self, specs: &[TopicSpec]) -> Result<(), AdminError> {
        if specs.is_empty() {
            return Ok(());
        }
        let configs: Vec<Vec<(&str, &str)>> = specs
            .iter()
            .map(|s| {
                s.config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            })
            .collect();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&configs)
            .map(|(spec, config)| {
                let replication = if spec.replication == -1 {
                    self.default_replication
                } else {
                    spec.replication
                };
                config.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(replication),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in self.client.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => tracing::info!(topic, "topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(AdminError::CreateTopic { topic, code }),
            }
        }
        Ok(())
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
