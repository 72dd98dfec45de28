//! Admission control: the gateway stops accepting commands while the services behind it are
//! too far behind, instead of queueing work nobody will see finish in time.
//!
//! Kafka accepts commands far faster than the saga settles them, so without a bound an
//! eager client builds a backlog of minutes: every accepted order is kept (nothing is
//! lost), but its outcome arrives ever later and every consumer's memory grows. The
//! gateway watches the lag of the consumer groups behind it (end offset minus committed
//! offset, summed over their topics; for order-view, whose groups are per replica, the
//! replica furthest behind) and answers `503` with `Retry-After` while the lag is
//! above `max_backlog`; it accepts again once the lag fell to three quarters of it, so the
//! answer does not flap around the bound.
//!
//! A command that arrives while the gateway refuses is first held, up to `max_hold_ms`, and
//! published the moment the lag falls back: a client told to come back after its
//! `Retry-After` second would return to services that had drained their backlog and sat
//! idle for part of it (the saga bench lost a tenth of its throughput to those gaps).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use feedline::CancellationToken;
use feedline::config::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::metrics::GatewayMetrics;

/// `[gateway.admission]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Commands (in fact messages of the watched topics) the watched groups may have left
    /// to consume before the gateway refuses new commands; 0 turns admission control off.
    pub max_backlog: u64,
    /// How often the lag is read. Offsets are committed every second, so the figure is at
    /// most about a second and this interval old.
    pub check_interval_ms: u64,
    /// How long a command that arrives while commands are refused waits for the backlog to
    /// fall before it is answered 503; 0 answers at once.
    pub max_hold_ms: u64,
    /// Consumer group → the topics whose lag counts, names without the topic prefix.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// Group-name prefix → the topics whose lag counts, for groups named per replica
    /// (order-view's are `order-view.<generation>`): every group with that prefix that has
    /// members is read, and the one furthest behind counts (each replica reads everything).
    /// Groups without members are left over from replicas that are gone and do not count.
    #[serde(default)]
    pub group_prefixes: BTreeMap<String, Vec<String>>,
}

impl AdmissionConfig {
    pub fn enabled(&self) -> bool {
        self.max_backlog > 0 && !(self.groups.is_empty() && self.group_prefixes.is_empty())
    }
}

/// Whether commands are admitted, as last decided from the backlog.
#[derive(Debug)]
pub struct Admission {
    max_backlog: u64,
    backlog: AtomicU64,
    refusing: AtomicBool,
    /// Woken when the gateway accepts commands again.
    reopened: Notify,
    max_hold: Duration,
    metrics: Arc<GatewayMetrics>,
}

/// Clients back off for this long; the lag is re-read twice a second.
const RETRY_AFTER_SECS: &str = "1";

impl Admission {
    /// `max_backlog` 0 admits everything.
    pub fn new(max_backlog: u64, max_hold: Duration, metrics: Arc<GatewayMetrics>) -> Self {
        Admission {
            max_backlog,
            backlog: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            reopened: Notify::new(),
            max_hold,
            metrics,
        }
    }

    /// `Ok` when a command may be published, at once or after waiting (at most
    /// `max_hold`) for the backlog to fall; the 503 to answer otherwise.
    pub async fn admit(&self) -> Result<(), ApiError> {
        if !self.refusing() {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.max_hold;
        loop {
            // Registered before the check, so a reopening between the two is not missed.
            let reopened = self.reopened.notified();
            tokio::pin!(reopened);
            reopened.as_mut().enable();
            if !self.refusing() {
                self.metrics
                    .admission_held_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, reopened).await.is_err() {
                break;
            }
        }
        self.metrics.commands_refused.inc();
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the services are {} messages behind (limit {}); nothing was accepted, retry later",
                self.backlog.load(Ordering::Relaxed),
                self.max_backlog
            ),
        )
        .header(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS))
    }

    /// Records a fresh reading of the backlog and decides, with hysteresis, whether to
    /// refuse commands.
    pub fn observe(&self, backlog: u64) {
        self.backlog.store(backlog, Ordering::Relaxed);
        self.metrics.backlog.set(backlog as i64);
        if self.max_backlog == 0 {
            return;
        }
        let refusing = self.refusing.load(Ordering::Relaxed);
        let now_refusing = if refusing {
            backlog > self.max_backlog / 4 * 3
        } else {
            backlog > self.max_backlog
        };
        if now_refusing != refusing {
            self.refusing.store(now_refusing, Ordering::Relaxed);
            if now_refusing {
                tracing::warn!(
                    backlog,
                    max_backlog = self.max_backlog,
                    "backlog over the limit: holding, then refusing commands"
                );
            } else {
                // The held commands go out now.
                self.reopened.notify_waiters();
                tracing::info!(backlog, "backlog back under the limit: accepting commands");
            }
        }
    }

    pub fn refusing(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }
}

/// Reads the watched groups' lag every `check_interval_ms` until `token` is cancelled.
/// A failed reading keeps the last decision: when the broker is away the publish itself
/// fails with its own clear error.
pub async fn watch(
    admission: Arc<Admission>,
    kafka: KafkaSettings,
    config: AdmissionConfig,
    token: CancellationToken,
) {
    let lag = match GroupLag::new(&kafka, &config) {
        Ok(lag) => Arc::new(Mutex::new(lag)),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the consumer groups: admission control is off");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(config.check_interval_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reader = lag.clone();
        // librdkafka's offset and watermark queries block on the network.
        match tokio::task::spawn_blocking(move || {
            // A panic inside a reading leaves no half-done state behind: read on.
            reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .total()
        })
        .await
        {
            Ok(Ok(backlog)) => admission.observe(backlog),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the consumer groups' lag"),
            Err(e) => tracing::warn!(error = %e, "lag reader panicked"),
        }
    }
}

/// One idle client per watched group: it never subscribes, so it never joins the group;
/// it only asks the group coordinator for the committed offsets.
struct GroupLag {
    kafka: KafkaSettings,
    /// Fixed groups, each with its client and the (full) names of its topics.
    groups: Vec<(BaseConsumer, Vec<String>)>,
    /// (full) prefix → the (full) names of the topics.
    prefixes: Vec<(String, Vec<String>)>,
    /// Clients for the groups found under a prefix, by group name; kept while the group is.
    found: BTreeMap<String, BaseConsumer>,
    /// Lists the groups; belongs to no group of its own.
    lister: BaseConsumer,
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl GroupLag {
    fn new(kafka: &KafkaSettings, config: &AdmissionConfig) -> Result<Self, KafkaError> {
        let topics = |topics: &[String]| topics.iter().map(|t| kafka.name(t)).collect();
        let groups = config
            .groups
            .iter()
            .map(|(group, t)| Ok((Self::client(kafka, &kafka.name(group))?, topics(t))))
            .collect::<Result<_, KafkaError>>()?;
        Ok(GroupLag {
            kafka: kafka.clone(),
            groups,
            prefixes: config
                .group_prefixes
                .iter()
                .map(|(prefix, t)| (kafka.name(prefix), topics(t)))
                .collect(),
            found: BTreeMap::new(),
            lister: kafka.client_config().create()?,
        })
    }

    fn client(kafka: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
        kafka
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
    }

    /// Σ over the fixed groups of their lag, plus for each prefix the largest lag among its
    /// groups that have members.
    fn total(&mut self) -> Result<u64, KafkaError> {
        let mut total = 0u64;
        for (consumer, topics) in &self.groups {
            total += Self::lag(consumer, topics)?;
        }
        if self.prefixes.is_empty() {
            return Ok(total);
        }
        let listed = self.lister.fetch_group_list(None, QUERY_TIMEOUT)?;
        let active: Vec<&str> = listed
            .groups()
            .iter()
            .filter(|g| !g.members().is_empty())
            .map(|g| g.name())
            .collect();
        self.found.retain(|name, _| active.contains(&name.as_str()));
        for (prefix, topics) in &self.prefixes {
            let mut furthest = 0;
            for name in active.iter().filter(|n| n.starts_with(prefix.as_str())) {
                let consumer = match self.found.entry((*name).to_owned()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(Self::client(&self.kafka, name)?)
                    }
                };
                furthest = furthest.max(Self::lag(consumer, topics)?);
            }
            total += furthest;
        }
        Ok(total)
    }

    /// Σ over the group's partitions of `topics` of (end offset − committed offset); a
    /// partition the group never committed counts from its first retained offset.
    fn lag(consumer: &BaseConsumer, topics: &[String]) -> Result<u64, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(topic, p.id());
                }
            }
        }
        let committed = consumer.committed_offsets(tpl, QUERY_TIMEOUT)?;
        let mut total = 0u64;
        for elem in committed.elements() {
            let (low, high) =
                consumer.fetch_watermarks(elem.topic(), elem.partition(), QUERY_TIMEOUT)?;
            let from = match elem.offset() {
                Offset::Offset(n) => n.max(low),
                _ => low,
            };
            total += (high - from).max(0) as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline::Metrics;

    fn admission(max: u64, hold_ms: u64) -> Admission {
        Admission::new(
            max,
            Duration::from_millis(hold_ms),
            GatewayMetrics::new(&Metrics::new("test")),
        )
    }

    #[tokio::test]
    async fn refuses_over_the_limit_and_resumes_below_three_quarters() {
        let a = admission(1000, 0);
        a.observe(1000);
        assert!(a.admit().await.is_ok(), "at the limit is still admitted");
        a.observe(1001);
        let refused = a.admit().await.unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        a.observe(800);
        assert!(a.refusing(), "between 3/4 and the limit the decision holds");
        a.observe(750);
        assert!(a.admit().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_command_is_admitted_when_the_backlog_falls_in_time() {
        let a = Arc::new(admission(1000, 1000));
        a.observe(2000);
        let held = tokio::spawn({
            let a = a.clone();
            async move { a.admit().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !held.is_finished(),
            "held while the backlog is over the limit"
        );
        a.observe(700);
        assert!(held.await.unwrap(), "admitted once the backlog fell");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_command_is_refused_when_the_hold_runs_out() {
        let a = admission(1000, 1000);
        a.observe(2000);
        let started = tokio::time::Instant::now();
        let refused = a.admit().await.unwrap_err();
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn zero_turns_it_off() {
        let a = admission(0, 1000);
        a.observe(u64::MAX);
        assert!(a.admit().await.is_ok());
    }
}
