//! The idempotent producer: a send completes when the broker acknowledged it (`acks=all`).

use std::sync::Arc;
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;
use crate::context::FeedlineContext;
use crate::metrics::Metrics;

/// Where the broker stored an acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// One message to send. Borrowed, so the hot path copies bytes once, into librdkafka.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: &'a [(&'a str, &'a [u8])],
    pub partition: Option<i32>,
}

impl<'a> Outgoing<'a> {
    pub fn new(topic: &'a str, key: Option<&'a [u8]>, payload: &'a [u8]) -> Self {
        Outgoing {
            topic,
            key,
            payload,
            headers: &[],
            partition: None,
        }
    }

    pub fn headers(mut self, headers: &'a [(&'a str, &'a [u8])]) -> Self {
        self.headers = headers;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Worth another try later: the broker or network may recover.
    #[error("retryable produce error on topic {topic}: {source}")]
    Retryable { topic: String, source: KafkaError },
    /// Another try cannot succeed: the message, the topic or the producer is broken.
    #[error("fatal produce error on topic {topic}: {source}")]
    Fatal { topic: String, source: KafkaError },
}

impl ProduceError {
    fn new(topic: &str, source: KafkaError) -> Self {
        let topic = topic.to_owned();
        if is_retryable(&source) {
            ProduceError::Retryable { topic, source }
        } else {
            ProduceError::Fatal { topic, source }
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, ProduceError::Retryable { .. })
    }

    fn kind(&self) -> &'static str {
        if self.is_retryable() {
            "retryable"
        } else {
            "fatal"
        }
    }
}

/// Tells transient broker conditions (worth a retry) from errors that will repeat.
pub fn is_retryable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(
            MessageTimedOut
            | QueueFull
            | RequestTimedOut
            | NetworkException
            | AllBrokersDown
            | BrokerTransportFailure
            | BrokerNotAvailable
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | NotCoordinator
            | CoordinatorNotAvailable
            | CoordinatorLoadInProgress
            | KafkaStorageError
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | Resolve
            | OperationTimedOut
            | ThrottlingQuotaExceeded
            | ISRInsufficient,
        ) => true,
        Some(_) => false,
        // Errors without a librdkafka code (canceled, runtime shut down) do not repeat by themselves.
        None => matches!(error, KafkaError::Canceled),
    }
}

/// A message librdkafka accepted, whose broker acknowledgement is still to come.
pub struct PendingDelivery {
    delivery: DeliveryFuture,
    topic: String,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PendingDelivery {
    /// Waits for the broker's answer and counts it.
    pub async fn acknowledged(self) -> Result<Delivered, ProduceError> {
        let topic = &self.topic;
        let result = match self.delivery.await {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(ProduceError::new(topic, e)),
            Err(_canceled) => Err(ProduceError::new(topic, KafkaError::Canceled)),
        };
        match &result {
            Ok(_) => {
                self.metrics.produced.with_label_values(&[topic]).inc();
                self.metrics
                    .produce_seconds
                    .with_label_values(&[topic])
                    .observe(self.started.elapsed().as_secs_f64());
            }
            Err(e) => self
                .metrics
                .produce_errors
                .with_label_values(&[topic.as_str(), e.kind()])
                .inc(),
        }
        result
    }
}

/// A cheap-to-clone handle on one librdkafka producer (which batches and has its own thread).
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<FeedlineContext>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(settings: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let inner = settings
            .producer_config()
            .create_with_context(FeedlineContext::new(metrics.clone()))?;
        Ok(Producer { inner, metrics })
    }

    /// Sends one message and waits for the broker's acknowledgement.
    pub async fn send(&self, msg: Outgoing<'_>) -> Result<Delivered, ProduceError> {
        self.enqueue(msg).await?.acknowledged().await
    }

    /// Hands the message to librdkafka (waiting for queue space, so a full queue slows the
    /// caller instead of failing it) and returns the acknowledgement to await. Messages
    /// enqueued one after another keep their order per partition.
    pub async fn enqueue(&self, msg: Outgoing<'_>) -> Result<PendingDelivery, ProduceError> {
        let started = Instant::now();
        let mut record = FutureRecord::<[u8], [u8]>::to(msg.topic).payload(msg.payload);
        if let Some(key) = msg.key {
            record = record.key(key);
        }
        if let Some(partition) = msg.partition {
            record = record.partition(partition);
        }
        if !msg.headers.is_empty() {
            let headers = msg.headers.iter().fold(
                OwnedHeaders::new_with_capacity(msg.headers.len()),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(*value),
                    })
                },
            );
            record = record.headers(headers);
        }
        let topic = msg.topic.to_owned();
        let delivery = loop {
            match self.inner.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // librdkafka drains its queue on its own thread; give it a moment.
                    self.inner
                        .poll(Timeout::After(std::time::Duration::from_millis(1)));
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    let err = ProduceError::new(&topic, e);
                    self.count_error(&topic, &err);
                    return Err(err);
                }
            }
        };
        Ok(PendingDelivery {
            delivery,
            topic,
            started,
            metrics: self.metrics.clone(),
        })
    }

    fn count_error(&self, topic: &str, err: &ProduceError) {
        self.metrics
            .produce_errors
            .with_label_values(&[topic, err.kind()])
            .inc();
    }

    /// Waits until every queued message was acknowledged or failed.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    pub fn inner(&self) -> &FutureProducer<FeedlineContext> {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_hiccups_are_retryable_and_bad_messages_are_not() {
        let retry = KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas);
        let fatal = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let unknown_topic =
            KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(is_retryable(&retry));
        assert!(!is_retryable(&fatal));
        assert!(!is_retryable(&unknown_topic));
        assert!(ProduceError::new("t", retry).is_retryable());
    }
}
