//! The Directory: every instance's latest announcement, read from `_services`, and which of
//! them are up (their heartbeats on time), ready and caught up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::announcement::Announcement;
use super::{DiscoveryError, DiscoverySettings, SCHEMA, now_ms, topic_spec};
use crate::codec::{AvroDecoder, RegistryClient};
use crate::config::{KafkaSettings, Settings};

/// One instance as the Directory sees it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instance {
    pub service: String,
    pub instance_id: String,
    pub version: String,
    pub url: String,
    pub started_at_ms: i64,
    pub announced_at_ms: i64,
    pub heartbeat_ms: i64,
    pub ready: bool,
    pub lag: Option<i64>,
    pub partitions: Vec<String>,
    /// False once it missed `discovery.missed_heartbeats` heartbeats.
    pub up: bool,
    /// How long ago its last announcement was sent, in milliseconds.
    pub last_seen_ms: i64,
}

impl Instance {
    fn at(record: &Announcement, now: i64, missed: u32) -> Self {
        let age = (now - record.announced_at_ms).max(0);
        Instance {
            service: record.service.clone(),
            instance_id: record.instance_id.clone(),
            version: record.version.clone(),
            url: record.url.clone(),
            started_at_ms: record.started_at_ms,
            announced_at_ms: record.announced_at_ms,
            heartbeat_ms: record.heartbeat_ms,
            ready: record.ready,
            lag: record.lag,
            partitions: record.partitions.clone(),
            up: age <= record.heartbeat_ms.max(1) * i64::from(missed),
            last_seen_ms: age,
        }
    }

    /// Whether reads may go here: up and ready.
    pub fn serves(&self) -> bool {
        self.up && self.ready
    }

    /// How long the instance has been running, in milliseconds (as of its last announcement).
    pub fn uptime_ms(&self) -> i64 {
        (self.announced_at_ms - self.started_at_ms).max(0)
    }
}

/// Reads `_services` in the background; clones share what it read.
#[derive(Debug, Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: DiscoverySettings,
    /// The latest announcement by key, with whether it counted as up when last looked at.
    entries: Mutex<BTreeMap<String, (Announcement, bool)>>,
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
}

impl Directory {
    /// Starts reading the topic from its beginning; the reader task ends with `token`. Kafka
    /// or the registry being away delays the Directory's knowledge, never fails it.
    pub async fn start(
        settings: &Settings,
        token: CancellationToken,
    ) -> Result<Directory, DiscoveryError> {
        let directory = Directory::empty(settings.discovery.clone());
        let mut config = settings.kafka.client_config();
        config.remove("statistics.interval.ms");
        config
            .set(
                "group.id",
                format!(
                    "{}.directory.{}",
                    settings.kafka.name(super::TOPIC),
                    uuid::Uuid::new_v4().simple()
                ),
            )
            // Partitions are assigned, never subscribed: no group is joined and nothing is
            // committed; every Directory reads the whole (compacted) topic.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = config.create()?;
        let registry = Arc::new(RegistryClient::new(&settings.registry));
        let decoder = AvroDecoder::new(registry, SCHEMA, None)?;
        let reader = Reader {
            directory: directory.clone(),
            kafka: settings.kafka.clone(),
            consumer: Arc::new(consumer),
            decoder,
        };
        tokio::spawn(reader.run(token));
        Ok(directory)
    }

    fn empty(settings: DiscoverySettings) -> Self {
        Directory {
            inner: Arc::new(Inner {
                settings,
                entries: Mutex::default(),
                changes: watch::Sender::new(0),
                synced: watch::Sender::new(false),
            }),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Announcement, bool)>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every known instance of every service (up or down), sorted by service then instance.
    pub fn instances(&self) -> Vec<Instance> {
        let now = now_ms();
        let missed = self.inner.settings.missed_heartbeats;
        self.entries()
            .values()
            .map(|(record, _)| Instance::at(record, now, missed))
            .collect()
    }

    /// The instances of `service` that take traffic now: up and ready, and caught up: no
    /// more than `discovery.caught_up_lag` messages behind the least lagging of them. Under
    /// load every instance lags alike and all serve; a generation still replaying the topics
    /// lags far more and serves nothing until it has caught up. A consumer whose lag is not
    /// known yet serves only when no instance's lag is known.
    pub fn serving(&self, service: &str) -> Vec<Instance> {
        let ready: Vec<Instance> = self
            .instances()
            .into_iter()
            .filter(|i| i.service == service && i.serves())
            .collect();
        let lag = |i: &Instance| {
            if i.partitions.is_empty() {
                Some(0)
            } else {
                i.lag
            }
        };
        let Some(least) = ready.iter().filter_map(lag).min() else {
            return ready;
        };
        let limit = least.saturating_add(self.inner.settings.caught_up_lag);
        ready
            .into_iter()
            .filter(|i| lag(i).is_some_and(|l| l <= limit))
            .collect()
    }

    /// Bumps whenever an announcement arrives or an instance's state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Waits until the Directory has read what the topic held when it started (so it knows
    /// every instance that announced itself before), or `within` passed; returns whether it
    /// got there.
    pub async fn synced(&self, within: Duration) -> bool {
        let mut synced = self.inner.synced.subscribe();
        tokio::time::timeout(within, synced.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn apply(&self, key: &str, record: Option<Announcement>) {
        {
            let mut entries = self.entries();
            match record {
                Some(record) => {
                    let up =
                        Instance::at(&record, now_ms(), self.inner.settings.missed_heartbeats).up;
                    entries.insert(key.to_owned(), (record, up));
                }
                None => {
                    entries.remove(key);
                }
            }
        }
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Notes the instances whose heartbeats stopped (or came back) since the last look, and
    /// forgets those down for longer than `forget_after_secs`.
    fn refresh(&self) {
        let now = now_ms();
        let settings = &self.inner.settings;
        let forget_ms = (settings.forget_after_secs * 1000) as i64;
        let mut changed = false;
        self.entries().retain(|_, (record, was_up)| {
            let instance = Instance::at(record, now, settings.missed_heartbeats);
            if instance.up != *was_up {
                *was_up = instance.up;
                changed = true;
                if instance.up {
                    tracing::info!(service = %instance.service, instance = %instance.instance_id, "instance is up again");
                } else {
                    tracing::warn!(service = %instance.service, instance = %instance.instance_id, url = %instance.url, "instance missed its heartbeats, counted down");
                }
            }
            let forget = !instance.up && instance.last_seen_ms > forget_ms;
            changed |= forget;
            !forget
        });
        if changed {
            self.inner.changes.send_modify(|n| *n += 1);
        }
    }
}

struct Reader {
    directory: Directory,
    kafka: KafkaSettings,
    consumer: Arc<StreamConsumer>,
    decoder: AvroDecoder<Announcement, RegistryClient>,
}

impl Reader {
    async fn run(self, token: CancellationToken) {
        let heartbeat = self.directory.inner.settings.heartbeat();
        let Some(end) = self.assign(&token).await else {
            return;
        };
        let mut end = end;
        if end == 0 {
            self.directory.inner.synced.send_replace(true);
        }
        // Often enough that an instance is counted down well within a heartbeat of its due
        // time.
        let mut tick = tokio::time::interval(heartbeat / 4);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => self.directory.refresh(),
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        failing = false;
                        self.handle(&message).await;
                        if message.offset() + 1 >= end {
                            end = 0;
                            self.directory.inner.synced.send_replace(true);
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read the service directory");
                    }
                    Err(_) => {}
                },
            }
        }
    }

    /// Creates the topic if needed and reads it from the start; returns the offset its end
    /// was at (0 when empty), or `None` on shutdown.
    async fn assign(&self, token: &CancellationToken) -> Option<i64> {
        let topic = self.kafka.name(super::TOPIC);
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt = async {
                crate::admin::Admin::new(&self.kafka)?
                    .ensure_topics(&[topic_spec(&self.kafka)])
                    .await?;
                let mut partitions = TopicPartitionList::new();
                partitions.add_partition_offset(&topic, 0, Offset::Beginning)?;
                self.consumer.assign(&partitions)?;
                let consumer = self.consumer.clone();
                let name = topic.clone();
                let (low, high) = tokio::task::spawn_blocking(move || {
                    consumer.fetch_watermarks(&name, 0, Duration::from_secs(5))
                })
                .await??;
                anyhow::Ok(if high > low { high } else { 0 })
            };
            match attempt.await {
                Ok(end) => return Some(end),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the service directory yet, trying again");
                    tokio::select! {
                        _ = token.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn handle(&self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(Ok(key)) = message.key().map(std::str::from_utf8) else {
            return;
        };
        let record = match message.payload() {
            None => None,
            Some(bytes) => match self.decoder.decode(bytes).await {
                Ok(record)
                    if key == super::announcement::key(&record.service, &record.instance_id) =>
                {
                    Some(record)
                }
                Ok(_) => {
                    tracing::warn!(key, "announcement whose key does not name it, skipped");
                    return;
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "undecodable announcement, skipped");
                    return;
                }
            },
        };
        self.directory.apply(key, record);
    }
}

#[cfg(test)]
mod tests {
    use super::super::announcement::key;
    use super::*;

    fn settings() -> DiscoverySettings {
        DiscoverySettings {
            enabled: true,
            heartbeat_ms: 1000,
            missed_heartbeats: 2,
            advertised_url: None,
            caught_up_lag: 100,
            forget_after_secs: 60,
        }
    }

    fn record(instance: &str, ago_ms: i64, ready: bool, lag: Option<i64>) -> Announcement {
        Announcement {
            service: "order-view".to_owned(),
            instance_id: instance.to_owned(),
            version: "0".to_owned(),
            url: format!("http://{instance}:8093"),
            started_at_ms: now_ms() - 60_000,
            announced_at_ms: now_ms() - ago_ms,
            heartbeat_ms: 1000,
            ready,
            lag,
            partitions: Vec::new(),
        }
    }

    fn put(directory: &Directory, record: Announcement) {
        directory.apply(&key(&record.service, &record.instance_id), Some(record));
    }

    fn names(instances: Vec<Instance>) -> Vec<String> {
        instances.into_iter().map(|i| i.instance_id).collect()
    }

    #[test]
    fn an_instance_is_down_after_its_missed_heartbeats() {
        let directory = Directory::empty(settings());
        put(&directory, record("a", 500, true, Some(0)));
        put(&directory, record("b", 2500, true, Some(0)));
        let all = directory.instances();
        assert_eq!(all.iter().map(|i| i.up).collect::<Vec<_>>(), [true, false]);
        assert_eq!(names(directory.serving("order-view")), ["a"]);
        assert!(directory.serving("orders").is_empty());
    }

    #[test]
    fn reads_go_to_caught_up_instances_only() {
        let directory = Directory::empty(settings());
        let partitions = |mut r: Announcement| {
            r.partitions = vec!["order-events-0".to_owned()];
            r
        };
        // A consumer whose lag is not known yet, alone: it is all there is.
        put(&directory, partitions(record("fresh", 0, true, None)));
        assert_eq!(names(directory.serving("order-view")), ["fresh"]);
        put(&directory, partitions(record("old", 0, true, Some(3))));
        put(
            &directory,
            partitions(record("rebuilding", 0, true, Some(50_000))),
        );
        put(
            &directory,
            partitions(record("starting", 0, false, Some(0))),
        );
        assert_eq!(names(directory.serving("order-view")), ["old"]);
        // Load: the old generation lags too, the rebuilding one still far more.
        put(&directory, partitions(record("old", 0, true, Some(5_000))));
        assert_eq!(names(directory.serving("order-view")), ["old"]);
        // Caught up: within caught_up_lag of the least lagging, both serve.
        put(
            &directory,
            partitions(record("rebuilding", 0, true, Some(5_090))),
        );
        assert_eq!(
            names(directory.serving("order-view")),
            ["old", "rebuilding"]
        );
    }

    #[test]
    fn a_tombstone_removes_and_the_long_dead_are_forgotten() {
        let directory = Directory::empty(settings());
        let mut changes = directory.changes();
        put(&directory, record("a", 0, true, None));
        put(&directory, record("gone", 120_000, true, None));
        assert!(changes.has_changed().unwrap());
        directory.apply(&key("order-view", "a"), None);
        assert_eq!(names(directory.instances()), ["gone"]);
        changes.mark_unchanged();
        directory.refresh();
        assert!(directory.instances().is_empty());
        assert!(changes.has_changed().unwrap());
    }
}
