//! The idempotent producer: a send completes when the broker acknowledged it (`acks=all`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;
use crate::context::FeedlineContext;
use crate::metrics::Metrics;
use crate::telemetry::propagation::{self, TRACEPARENT, TRACESTATE};

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
    /// Set when this message is timed for `produce_seconds` (see [`LATENCY_SAMPLE_EVERY`]).
    started: Option<Instant>,
    counters: Arc<TopicCounters>,
}

/// One in this many messages handed over with [`Producer::enqueue`] is timed for the
/// `produce_seconds` histogram; [`Producer::send`] times every message.
///
/// Two clock reads and a histogram update cost ~60 ns, about 4% of a pipelined send at
/// several hundred thousand messages per second, and a latency distribution needs far fewer
/// samples than that: pipelined senders are the high-rate ones (outbox relay, load tools),
/// while `send` (one message, waiting for it) is the low-rate request path, which keeps full
/// fidelity. The histogram's `_count` is therefore not a message count; `produced_total` is.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

thread_local! {
    /// Per-thread stride for the latency sample: no shared counter to contend on.
    static LATENCY_TICK: Cell<u32> = const { Cell::new(0) };
    /// The topic this thread sent to last, per producer: senders mostly stay on one topic,
    /// and this spares them the shared lock and the hash of the topic name per message.
    static LAST_TOPIC: RefCell<Option<(u64, Arc<TopicCounters>)>> = const { RefCell::new(None) };
}

fn sample_latency() -> bool {
    LATENCY_TICK.with(|tick| {
        let n = tick.get().wrapping_add(1);
        tick.set(n);
        n % LATENCY_SAMPLE_EVERY == 0
    })
}

/// Tells producers apart in [`LAST_TOPIC`]; clones share the id as they share the counters.
static NEXT_PRODUCER_ID: AtomicU64 = AtomicU64::new(0);

/// One topic's series, resolved once: a label look-up per message would cost more than
/// the rest of the send.
struct TopicCounters {
    topic: String,
    produced: prometheus::IntCounter,
    seconds: prometheus::Histogram,
    retryable: prometheus::IntCounter,
    fatal: prometheus::IntCounter,
}

impl TopicCounters {
    fn new(metrics: &Metrics, topic: &str) -> Self {
        TopicCounters {
            topic: topic.to_owned(),
            produced: metrics.produced.with_label_values(&[topic]),
            seconds: metrics.produce_seconds.with_label_values(&[topic]),
            retryable: metrics
                .produce_errors
                .with_label_values(&[topic, "retryable"]),
            fatal: metrics.produce_errors.with_label_values(&[topic, "fatal"]),
        }
    }

    fn count_error(&self, err: &ProduceError) {
        if err.is_retryable() {
            self.retryable.inc()
        } else {
            self.fatal.inc()
        }
    }
}

impl std::fmt::Debug for PendingDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDelivery")
            .field("topic", &self.counters.topic)
            .finish_non_exhaustive()
    }
}

impl PendingDelivery {
    /// Waits for the broker's answer and counts it.
    pub async fn acknowledged(self) -> Result<Delivered, ProduceError> {
        let counters = &self.counters;
        let topic = &counters.topic;
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
                counters.produced.inc();
                if let Some(started) = self.started {
                    counters.seconds.observe(started.elapsed().as_secs_f64());
                }
            }
            Err(e) => counters.count_error(e),
        }
        result
    }
}

/// A cheap-to-clone handle on one librdkafka producer (which batches and has its own thread).
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<FeedlineContext>,
    context: FeedlineContext,
    metrics: Arc<Metrics>,
    id: u64,
    topics: Arc<RwLock<HashMap<String, Arc<TopicCounters>>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(settings: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let context = FeedlineContext::new(metrics.clone());
        let inner = settings
            .producer_config()
            .create_with_context(context.clone())?;
        Ok(Producer {
            inner,
            context,
            metrics,
            id: NEXT_PRODUCER_ID.fetch_add(1, Ordering::Relaxed),
            topics: Arc::default(),
        })
    }

    /// Sends one message and waits for the broker's acknowledgement.
    pub async fn send(&self, msg: Outgoing<'_>) -> Result<Delivered, ProduceError> {
        self.hand_over(msg, true).await?.acknowledged().await
    }

    /// Hands the message to librdkafka (waiting for queue space, so a full queue slows the
    /// caller instead of failing it) and returns the acknowledgement to await. Messages
    /// enqueued one after another keep their order per partition.
    pub async fn enqueue(&self, msg: Outgoing<'_>) -> Result<PendingDelivery, ProduceError> {
        self.hand_over(msg, sample_latency()).await
    }

    async fn hand_over(
        &self,
        msg: Outgoing<'_>,
        timed: bool,
    ) -> Result<PendingDelivery, ProduceError> {
        let started = timed.then(Instant::now);
        let mut record = FutureRecord::<[u8], [u8]>::to(msg.topic).payload(msg.payload);
        if let Some(key) = msg.key {
            record = record.key(key);
        }
        if let Some(partition) = msg.partition {
            record = record.partition(partition);
        }
        // The current span's context goes along, unless the message carries one already (an
        // outbox row keeps the context it was written in, a dead letter its original's).
        let trace = if msg.headers.iter().any(|(key, _)| *key == TRACEPARENT) {
            None
        } else {
            propagation::Outgoing::current()
        };
        if !msg.headers.is_empty() || trace.is_some() {
            let mut headers = msg.headers.iter().fold(
                OwnedHeaders::new_with_capacity(msg.headers.len() + 2),
                |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: Some(*value),
                    })
                },
            );
            if let Some(trace) = &trace {
                headers = headers.insert(Header {
                    key: TRACEPARENT,
                    value: Some(trace.traceparent.as_bytes()),
                });
                if !trace.tracestate.is_empty() {
                    headers = headers.insert(Header {
                        key: TRACESTATE,
                        value: Some(trace.tracestate.as_bytes()),
                    });
                }
            }
            record = record.headers(headers);
        }
        let counters = self.counters(msg.topic);
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
                    let err = ProduceError::new(msg.topic, e);
                    counters.count_error(&err);
                    return Err(err);
                }
            }
        };
        Ok(PendingDelivery {
            delivery,
            started,
            counters,
        })
    }

    fn counters(&self, topic: &str) -> Arc<TopicCounters> {
        let cached = LAST_TOPIC.with_borrow(|last| match last {
            Some((id, c)) if *id == self.id && c.topic == topic => Some(c.clone()),
            _ => None,
        });
        if let Some(c) = cached {
            return c;
        }
        let counters = self.shared_counters(topic);
        LAST_TOPIC.set(Some((self.id, counters.clone())));
        counters
    }

    fn shared_counters(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self.topics.read().expect("topics poisoned").get(topic) {
            return c.clone();
        }
        self.topics
            .write()
            .expect("topics poisoned")
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::new(TopicCounters::new(&self.metrics, topic)))
            .clone()
    }

    /// Waits until every queued message was acknowledged or failed.
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// The client's context: its view of the brokers, for readiness.
    pub fn context(&self) -> FeedlineContext {
        self.context.clone()
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

    #[test]
    fn the_per_thread_topic_cache_never_mixes_producers_up() {
        let settings = crate::Settings::from_toml("").unwrap();
        let one = Producer::new(&settings.kafka, Metrics::new("one")).unwrap();
        let two = Producer::new(&settings.kafka, Metrics::new("two")).unwrap();
        let a = one.counters("a");
        assert!(Arc::ptr_eq(&a, &one.counters("a")), "cached");
        assert!(Arc::ptr_eq(&a, &one.clone().counters("a")), "clones share");
        let other = two.counters("a");
        assert!(!Arc::ptr_eq(&a, &other), "another producer, other series");
        let b = one.counters("b");
        assert_eq!(b.topic, "b");
        assert!(
            Arc::ptr_eq(&a, &one.counters("a")),
            "back from the shared map"
        );
    }

    #[test]
    fn one_in_so_many_pipelined_messages_is_timed() {
        let timed = (0..LATENCY_SAMPLE_EVERY * 10)
            .filter(|_| sample_latency())
            .count();
        assert_eq!(timed, 10);
    }
}
