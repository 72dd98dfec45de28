//! The rdkafka client context: librdkafka's logs to `tracing`, its statistics to Prometheus,
//! and partition revocations recorded for the consumer runtime.
//!
//! These callbacks run on librdkafka's threads (or inside a poll): they must return quickly
//! and never block on the async runtime.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use crate::metrics::Metrics;

/// Each assigned partition's lag, `None` until statistics reported it.
type Assigned = BTreeMap<(String, i32), Option<i64>>;

#[derive(Debug, Clone)]
pub struct FeedlineContext {
    metrics: Arc<Metrics>,
    revoked: Arc<Mutex<HashSet<(String, i32)>>>,
    /// Bumped after every revocation, so the fetch loop's check after each poll is one
    /// atomic load; it takes the lock only when the number moved.
    revocations: Arc<AtomicU64>,
    /// Bumped after every assignment, so a fetch thread holding its partitions paused knows
    /// to pause the new ones.
    assignments: Arc<AtomicU64>,
    /// Whether this member holds an assignment (possibly empty) of its group: set when one
    /// was applied, cleared when it was revoked or the rebalance failed.
    joined: Arc<AtomicBool>,
    /// Broker connections seen up in the last statistics that saw any; -1 before that, 0
    /// after "all brokers down" until a connection is seen up again.
    brokers_up: Arc<AtomicI64>,
    /// Whether librdkafka's statistics arrived since this client started: until then the
    /// lag gauges say nothing.
    stats_seen: Arc<AtomicBool>,
    /// The partitions assigned to this consumer, with their lag when statistics gave one:
    /// what the service directory announces.
    assigned: Arc<Mutex<Assigned>>,
}

impl FeedlineContext {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        FeedlineContext {
            metrics,
            revoked: Arc::default(),
            revocations: Arc::default(),
            assignments: Arc::default(),
            joined: Arc::default(),
            brokers_up: Arc::new(AtomicI64::new(-1)),
            stats_seen: Arc::default(),
            assigned: Arc::default(),
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

    /// How many assignments this client has applied.
    pub(crate) fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// Whether the consumer is a member of its group with an assignment applied.
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// Whether the client can reach Kafka: no "all brokers down" since the last statistics
    /// that saw a broker up.
    pub fn kafka_reachable(&self) -> Result<(), String> {
        match self.brokers_up.load(Ordering::Acquire) {
            0 => Err("no broker connection is up".to_owned()),
            _ => Ok(()),
        }
    }

    /// Whether this consumer's lag is known: a group joined and statistics reported.
    pub fn lag_known(&self) -> Result<(), String> {
        if !self.joined() {
            return Err("consumer group not joined".to_owned());
        }
        if !self.stats_seen.load(Ordering::Acquire) {
            return Err("no statistics yet, lag unknown".to_owned());
        }
        Ok(())
    }

    /// The assigned partitions (`topic-partition`) and their total lag, `None` until
    /// statistics gave every partition's.
    pub fn assignment(&self) -> (Vec<String>, Option<i64>) {
        let assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        let partitions = assigned
            .keys()
            .map(|(topic, partition)| format!("{topic}-{partition}"))
            .collect();
        let lag = assigned.values().copied().sum::<Option<i64>>();
        (partitions, lag)
    }

    fn assigned(&self) -> std::sync::MutexGuard<'_, Assigned> {
        self.assigned.lock().unwrap_or_else(|e| e.into_inner())
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

/// A partition's lag for the service directory. librdkafka says -1 until the consumer has
/// a position or a committed offset; the platform's consumers then start from the
/// beginning (`auto.offset.reset=earliest`), so the whole partition is still ahead of them.
fn announced_lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    if p.consumer_lag >= 0 {
        Some(p.consumer_lag)
    } else if p.lo_offset >= 0 && p.hi_offset >= p.lo_offset {
        Some(p.hi_offset - p.lo_offset)
    } else {
        None
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
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_up.store(0, Ordering::Release);
        }
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }

    fn stats(&self, stats: Statistics) {
        // An idle client may hold no connection at all (librdkafka connects sparsely), so
        // only "all brokers down" makes Kafka unreachable, and only a connection seen up
        // ends that.
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        if up > 0 {
            self.brokers_up.store(up as i64, Ordering::Release);
        }
        self.stats_seen.store(true, Ordering::Release);
        self.metrics
            .rdkafka_queue_messages
            .with_label_values(&[&stats.client_id])
            .set(stats.msg_cnt as i64);
        let mut assigned = self.assigned();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's "internal UA partition"; lag -1 means unknown.
                if *partition >= 0
                    && let Some(lag) = assigned.get_mut(&(topic.clone(), *partition))
                {
                    *lag = announced_lag(p);
                }
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
                let mut assigned = self.assigned();
                for elem in tpl.elements() {
                    tracing::info!(
                        topic = elem.topic(),
                        partition = elem.partition(),
                        "partition revoked"
                    );
                    assigned.remove(&(elem.topic().to_owned(), elem.partition()));
                    revoked.push((elem.topic().to_owned(), elem.partition()));
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[elem.topic(), &elem.partition().to_string()]);
                }
                self.record_revoked(revoked);
            }
            Rebalance::Assign(tpl) => {
                let mut assigned = self.assigned();
                for elem in tpl.elements() {
                    assigned.insert((elem.topic().to_owned(), elem.partition()), None);
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

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {
                self.joined.store(true, Ordering::Release);
                self.assignments.fetch_add(1, Ordering::Release);
            }
            Rebalance::Revoke(_) | Rebalance::Error(_) => {
                self.joined.store(false, Ordering::Release)
            }
        }
    }
}
