//! feedline's own contracts (`feedline-schemas`) bound to the platform: the topics a
//! deployment creates, the envelopes registered per topic, and the encoders and decoders a
//! service builds from them. The schemas crate stays a leaf (no Kafka, database or HTTP); this
//! is the one module of the platform that names the domain's topics.

use std::collections::HashMap;
use std::sync::Arc;

use feedline_schemas::types::{Consumed, TopicSink};
use feedline_schemas::{
    EVENT_TOPICS, SCHEMAS_TOPIC, TOPICS, contracts, envelope_schema, value_subject,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::{Admin, AdminError, TopicSpec};
use crate::codec::{
    AvroDecoder, AvroEncoder, CodecError, RegistryClient, SchemaResolver, TopicDecoders,
};
use crate::config::KafkaSettings;

/// The topics a deployment needs, with the configured prefix, partitions, replication and
/// topic-level config (the event topics' retention, then `kafka.topic_config`).
pub fn topic_specs(kafka: &KafkaSettings) -> Vec<TopicSpec> {
    let spec = |topic: &str, partitions| {
        let spec =
            TopicSpec::new(kafka.name(topic), partitions).replication(kafka.replication_factor);
        let spec = match topic {
            SCHEMAS_TOPIC => spec.compacted(),
            t if EVENT_TOPICS.contains(&t) => spec.retention_ms(kafka.event_retention_ms),
            _ => spec,
        };
        let own = kafka.topic_config.get(topic).into_iter().flatten();
        own.fold(spec, |spec, (key, value)| spec.config(key, value))
    };
    TOPICS
        .iter()
        .map(|t| spec(t, kafka.default_partitions))
        .chain(std::iter::once(spec(SCHEMAS_TOPIC, 1)))
        .chain(std::iter::once(crate::discovery::topic_spec(kafka)))
        .collect()
}

/// Creates whichever of [`topic_specs`] are missing; existing topics are left as they are.
pub async fn ensure_topics(kafka: &KafkaSettings) -> Result<(), AdminError> {
    Admin::new(kafka)?.ensure_topics(&topic_specs(kafka)).await
}

/// Registers every topic's envelope schema under `<prefix><topic>-value` and returns the
/// ids by (unprefixed) topic. Services call it at start; registering again is a no-op.
pub async fn register_all<R: SchemaResolver>(
    resolver: &R,
    kafka: &KafkaSettings,
) -> Result<HashMap<&'static str, u32>, CodecError> {
    let mut ids = HashMap::new();
    for (topic, _) in contracts::TOPIC_ENVELOPES {
        let schema = envelope_schema(topic).expect("every topic has an envelope");
        let id = resolver
            .register(&value_subject(&kafka.name(topic)), schema)
            .await?;
        ids.insert(*topic, id);
    }
    Ok(ids)
}

/// An encoder for `topic`'s envelope (unprefixed name), registered under its subject.
pub async fn encoder<T: Serialize, R: SchemaResolver>(
    resolver: &R,
    kafka: &KafkaSettings,
    topic: &str,
) -> Result<AvroEncoder<T>, CodecError> {
    let schema = envelope_schema(topic)
        .ok_or_else(|| CodecError::InvalidSchema(format!("no contract for topic {topic}")))?;
    AvroEncoder::new(resolver, &value_subject(&kafka.name(topic)), schema).await
}

/// Every contract registered with the schema registry: what a service builds its decoders
/// and encoders from at start-up.
#[derive(Debug, Clone)]
pub struct Contracts {
    registry: Arc<RegistryClient>,
    kafka: KafkaSettings,
    ids: HashMap<&'static str, u32>,
}

impl Contracts {
    /// Registers every topic's envelope (see [`register_all`]) and keeps the ids.
    pub async fn register(
        registry: Arc<RegistryClient>,
        kafka: &KafkaSettings,
    ) -> Result<Self, CodecError> {
        let ids = register_all(&*registry, kafka).await?;
        Ok(Contracts {
            registry,
            kafka: kafka.clone(),
            ids,
        })
    }

    pub fn registry(&self) -> &Arc<RegistryClient> {
        &self.registry
    }

    /// The registered id of `topic`'s envelope (unprefixed name).
    pub fn id(&self, topic: &str) -> Option<u32> {
        self.ids.get(topic).copied()
    }

    /// A decoder of `topic`'s envelope (unprefixed name); data written with the registered
    /// reader schema takes the direct path.
    pub fn decoder<T: DeserializeOwned>(
        &self,
        topic: &str,
    ) -> Result<AvroDecoder<T, RegistryClient>, CodecError> {
        let schema = envelope_schema(topic)
            .ok_or_else(|| CodecError::InvalidSchema(format!("no contract for topic {topic}")))?;
        AvroDecoder::new(self.registry.clone(), schema, self.id(topic))
    }

    /// The decoders of every topic `M` is consumed from, each with its topic's envelope.
    pub fn decoders<M: Consumed + Send + 'static>(&self) -> Result<TopicDecoders<M>, CodecError> {
        let sink = DecoderSink {
            contracts: self,
            decoders: TopicDecoders::new(),
        };
        Ok(M::decoders(sink)?.decoders)
    }

    /// An encoder of `topic`'s envelope (unprefixed name), see [`encoder`].
    pub async fn encoder<T: Serialize>(&self, topic: &str) -> Result<AvroEncoder<T>, CodecError> {
        encoder(&*self.registry, &self.kafka, topic).await
    }
}

/// Builds [`Contracts::decoders`].
struct DecoderSink<'a, M> {
    contracts: &'a Contracts,
    decoders: TopicDecoders<M>,
}

impl<M: Send + 'static> TopicSink<M> for DecoderSink<'_, M> {
    type Error = CodecError;

    fn topic<T>(mut self, topic: &'static str) -> Result<Self, CodecError>
    where
        T: DeserializeOwned + Into<M> + Send + 'static,
    {
        let decoder = self.contracts.decoder::<T>(topic)?;
        self.decoders = self
            .decoders
            .topic(self.contracts.kafka.name(topic), decoder);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS, ORDER_EVENTS};

    #[test]
    fn the_schemas_topic_is_compacted_with_one_partition() {
        let settings = crate::Settings::from_toml("").unwrap();
        let specs = topic_specs(&settings.kafka);
        let schemas = specs.iter().find(|s| s.name == SCHEMAS_TOPIC).unwrap();
        assert_eq!(schemas.partitions, 1);
        assert!(
            schemas
                .config
                .contains(&("cleanup.policy".into(), "compact".into()))
        );
        // Plus `_schemas` and the service directory's `_services`.
        assert_eq!(specs.len(), TOPICS.len() + 2);
    }

    #[test]
    fn event_topics_keep_their_events_and_commands_the_broker_default() {
        let settings = crate::Settings::from_toml("").unwrap();
        for spec in topic_specs(&settings.kafka) {
            let config = spec.effective_config(1);
            let retention = config.get("retention.ms").map(String::as_str);
            if EVENT_TOPICS.contains(&spec.name.as_str()) {
                assert_eq!(retention, Some("-1"), "{}", spec.name);
            } else {
                assert_eq!(retention, None, "{}", spec.name);
            }
        }
    }

    #[test]
    fn topic_config_and_the_event_retention_are_configurable() {
        let settings = crate::Settings::from_toml(
            r#"
            [kafka]
            topic_prefix = "p."
            event_retention_ms = 86400000
            replication_factor = 3
            [kafka.topic_config.order-events]
            "retention.ms" = "-1"
            "segment.ms" = "3600000"
            "#,
        )
        .unwrap();
        let specs = topic_specs(&settings.kafka);
        let config = |topic: &str| {
            let spec = specs
                .iter()
                .find(|s| s.name == format!("p.{topic}"))
                .unwrap();
            spec.effective_config(spec.replication)
        };
        let orders = config(ORDER_EVENTS);
        assert_eq!(orders["retention.ms"], "-1", "a topic's own config wins");
        assert_eq!(orders["segment.ms"], "3600000");
        assert_eq!(config(CREDIT_EVENTS)["retention.ms"], "86400000");
        for topic in [ORDER_COMMANDS, CREDIT_EVENTS, SCHEMAS_TOPIC] {
            assert_eq!(config(topic)["min.insync.replicas"], "2", "{topic}");
        }
    }
}
