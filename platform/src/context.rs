//! The rdkafka client context: librdkafka's logs to `tracing`, its statistics to Prometheus,
//! and partition revocations recorded for the consumer runtime.
//!
//! These callbacks run on librdkafka's threads (or inside a poll): they must return quickly
//! and never block on the async runtime.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct FeedlineContext {
    metrics: Arc<Metrics>,
    revoked: Arc<Mutex<HashSet<(String, i32)>>>,
    /// Bumped after every revocation, so the fetch loop's check after each poll is one
    /// atomic load; it takes the lock only when the number moved.
    revocations: Arc<AtomicU64>,
}

impl FeedlineContext {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        FeedlineContext {
            metrics,
            revoked: Arc::default(),
            revocations: Arc::default(),
        }
    }

    /// The revocation generation: how many revocations this client has seen. When it differs
    /// from the one the caller saw last, [`Self::take_revoked`] has partitions to return.
    pub(crate) fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Partitions revoked since the last call. The consumer drops buffered messages of these
    /// partitions: their new owner will receive them from the last stored offset.
    pub(crate) fn take_revoked(&self) -> HashSet<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked set poisoned"))
    }

    /// Notes partitions this member lost and starts a new generation.
    pub(crate) fn record_revoked(&self, partitions: Vec<(String, i32)>) {
        self.revoked
            .lock()
            .expect("revoked set poisoned")
            .extend(partitions);
        // After the inserts, so whoever sees the new generation finds the partitions.
        self.revocations.fetch_add(1, Ordering::Release);
    }
}

impl ClientContext for FeedlineContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    fn stats(&self, stats: Statistics) {
        self.metrics
            .rdkafka_queue_messages
            .with_label_values(&[&stats.client_id])
            .set(stats.msg_cnt as i64);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's "internal UA partition"; lag -1 means unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for FeedlineContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut revoked = Vec::new();
                for elem in tpl.elements() {
                    tracing::info!(
                        topic = elem.topic(),
                        partition = elem.partition(),
                        "partition revoked"
                    );
                    revoked.push((elem.topic().to_owned(), elem.partition()));
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[elem.topic(), &elem.partition().to_string()]);
                }
                self.record_revoked(revoked);
            }
            Rebalance::Assign(tpl) => {
                for elem in tpl.elements() {
                    tracing::info!(
                        topic = elem.topic(),
                        partition = elem.partition(),
                        "partition assigned"
                    );
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}
