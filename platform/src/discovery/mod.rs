//! Service discovery over Kafka. Every instance announces itself (service, instance, URL,
//! readiness, lag, partitions) on the compacted `_services` topic every heartbeat and sends a
//! tombstone when it stops cleanly ([`Announcer`]); a [`Directory`] reads the topic and knows
//! which instances of every service are up, ready and caught up.
//!
//! Kafka already holds every service's data, so it holds their whereabouts too: no second
//! consensus system to run, and the same security settings reach it.

mod announcement;
mod announcer;
mod directory;

pub use announcement::{Announcement, SCHEMA};
pub use announcer::{Announcer, Beacon};
pub use directory::{Directory, Instance};

use serde::Deserialize;

use crate::admin::TopicSpec;
use crate::config::KafkaSettings;

/// Why the Directory could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot create the directory's kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot prepare the announcements' decoder: {0}")]
    Codec(#[from] crate::codec::CodecError),
}

/// The topic's name before the prefix.
pub const TOPIC: &str = "_services";

/// The `[discovery]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySettings {
    /// Whether this instance announces itself (the Directory reads whatever is there).
    pub enabled: bool,
    /// Milliseconds between two announcements.
    pub heartbeat_ms: u64,
    /// Heartbeats an instance may miss before the Directory counts it down.
    pub missed_heartbeats: u32,
    /// The URL others reach this instance at. Unset: `http://<http.host>:<port>`, or the
    /// machine's host name instead of a wildcard `http.host` (0.0.0.0, ::).
    pub advertised_url: Option<String>,
    /// An instance at most this many messages behind the least lagging instance of its
    /// service is caught up; reads go to caught-up instances only (a read model that is
    /// still being rebuilt is not read from).
    pub caught_up_lag: i64,
    /// Seconds after which an instance that is down and never said goodbye (killed) is
    /// forgotten.
    pub forget_after_secs: u64,
}

impl DiscoverySettings {
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.heartbeat_ms)
    }

    /// The first invalid key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.heartbeat_ms < 100 {
            return Err(("discovery.heartbeat_ms", "must be at least 100".to_owned()));
        }
        if self.missed_heartbeats < 1 {
            return Err((
                "discovery.missed_heartbeats",
                "must be at least 1".to_owned(),
            ));
        }
        if let Some(url) = &self.advertised_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err((
                "discovery.advertised_url",
                format!("must start with http:// or https://, got {url:?}"),
            ));
        }
        Ok(())
    }
}

/// The `_services` topic: compacted (the last announcement per instance is all that counts),
/// one partition (a handful of records per second, read whole by every Directory). Segments
/// roll hourly and tombstones stay a minute, so the log stays small.
pub fn topic_spec(kafka: &KafkaSettings) -> TopicSpec {
    TopicSpec::new(kafka.name(TOPIC), 1)
        .replication(kafka.replication_factor)
        .compacted()
        .config("segment.ms", "3600000")
        .config("delete.retention.ms", "60000")
}

/// The subject of the announcements' schema (TopicNameStrategy, like every topic).
pub fn subject(kafka: &KafkaSettings) -> String {
    format!("{}-value", kafka.name(TOPIC))
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
