//! The record an instance announces itself with.

use serde::{Deserialize, Serialize};

/// The Avro schema of [`Announcement`], registered under `<prefix>_services-value`.
pub const SCHEMA: &str = include_str!("announcement.avsc");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
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
}

impl Announcement {
    /// The record's key: one per instance, so compaction keeps its latest announcement.
    pub fn key(&self) -> String {
        key(&self.service, &self.instance_id)
    }
}

pub(crate) fn key(service: &str, instance_id: &str) -> String {
    format!("{service}/{instance_id}")
}
