//! Order view: the query side, a SQLite read model with a live feed.
//!
//! It consumes every event topic into its own SQLite file, keeps a hot cache in front of it,
//! answers queries and pushes every change to subscribers as Server-Sent Events.
//!
//! - [`handler`]: the consumer's batch handler (decode, apply, commit, publish)
//! - [`apply`]: events → changes, order-tolerant, in memory
//! - [`store`]: the SQLite file and the readers' queries
//! - [`writer`]: the single writer's connection and its batch transaction
//! - [`cache`]: the bounded in-memory cache
//! - [`feed`]: the live-feed hub (broadcast, backlog, snapshot)
//! - [`api`]: the HTTP routes
//! - [`model`], [`metrics`]

pub mod api;
pub mod apply;
pub mod cache;
pub mod feed;
pub mod handler;
pub mod metrics;
pub mod model;
pub mod store;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::service::{Spawned, Startup};
use feedline::{CancellationToken, Health, Settings};
use serde::Deserialize;

use crate::cache::Cache;
use crate::feed::FeedHub;
use crate::handler::{Decoders, ViewHandler};
use crate::metrics::ViewMetrics;
use crate::store::Store;

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "order-view"
[http]
port = 8093
[database]
url = "sqlite:order-view.db"
# The readers' pool (the writer has a connection of its own): each connection has its own
# page cache, which costs resident memory, while the reads take milliseconds, so one reader
# keeps up. Raise it for a read-heavy deployment.
max_connections = 1
# One SQLite transaction per batch: bigger batches under load share the pages each commit
# writes, so throughput grows with the batch. 2,500 keeps most of that gain while bounding
# the batch's transient memory (the messages, the decoded events, the rows and their bound
# arguments). Batches only fill up under load, so this costs no latency when it is quiet.
# Measurements: benches/REPORT.md.
[consumer]
batch_max = 2500
# librdkafka's prefetch is the part of order-view's memory that grows with a backlog: it
# counts payload bytes only, and what it holds costs two to three times that (each message's
# op, and the decompressed producer batches it came in). 2 MiB still holds more than a
# full batch of events.
queued_max_kbytes = 2048
# The prefetch bound is checked before a fetch is sent, and one fetch brings up to this much
# per partition (librdkafka's default is 1 MiB): across all the partitions order-view reads,
# a single answer could overshoot the bound many times over while order-view lags.
[kafka.properties]
"max.partition.fetch.bytes" = "131072"
"#;

/// The `[order_view]` section.
///
/// Memory: the defaults are sized for the per-service memory budget. What grows with load
/// is the hot cache (at most `cache_capacity` orders), SQLite's page cache (at most
/// `sqlite_cache_kib` per connection: the writer's and `database.max_connections`
/// readers'), the broadcast ring (`feed_broadcast_capacity` changes once it has filled),
/// librdkafka's prefetch (`consumer.queued_max_kbytes`, two to three times that in fact)
/// and the batch being written (`consumer.batch_max`). What each costs under load is in
/// benches/REPORT.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewSettings {
    /// Orders, and separately customers, held in memory at most. The writer needs only the
    /// orders still changing, and a saga settles within a second or so, so the cache need
    /// hold only the last seconds' orders at full load; a miss is one indexed SQLite read.
    pub cache_capacity: usize,
    /// SQLite's page cache per connection, in KiB. The writer's working set is the right
    /// edges of its indexes and the orders still changing; the default holds it, and a
    /// larger cache made the saga bench no faster while it costs memory budget.
    pub sqlite_cache_kib: u32,
    /// How much of the SQLite file is memory-mapped, in MiB. Mapped pages that were read
    /// count as the process's resident memory, up to the whole file: 0 reads through the
    /// page cache above (and the kernel's, which is not the process's) instead.
    pub sqlite_mmap_mib: u32,
    /// Changes kept in SQLite for clients that resume with `Last-Event-ID`; a client further
    /// behind gets a snapshot.
    pub change_log_retain: i64,
    /// Changes the broadcast holds for subscribers' pumps.
    pub feed_broadcast_capacity: usize,
    /// Changes buffered per feed client before it is disconnected as too slow.
    pub feed_client_buffer: usize,
    /// Seconds between keep-alive comments on idle feeds.
    pub feed_keep_alive_secs: u64,
    /// Customers, and orders (the newest), a feed snapshot holds at most: a snapshot is
    /// built in memory, so it must not be the whole read model. The snapshot event says
    /// `truncated`, and `next_cursor` pages on through `GET /orders`.
    pub feed_snapshot_max_rows: u32,
}

impl Default for ViewSettings {
    fn default() -> Self {
        ViewSettings {
            cache_capacity: 10_000,
            sqlite_cache_kib: 2048,
            sqlite_mmap_mib: 0,
            change_log_retain: 100_000,
            feed_broadcast_capacity: 8_192,
            feed_client_buffer: 1_024,
            feed_keep_alive_secs: 15,
            feed_snapshot_max_rows: 1_000,
        }
    }
}

impl ViewSettings {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.change_log_retain >= 1,
            "order_view.change_log_retain must be at least 1"
        );
        anyhow::ensure!(
            self.feed_snapshot_max_rows >= 1,
            "order_view.feed_snapshot_max_rows must be at least 1"
        );
        anyhow::ensure!(
            self.feed_keep_alive_secs >= 1,
            "order_view.feed_keep_alive_secs must be at least 1"
        );
        Ok(())
    }
}

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    feedline::service::run(spawn(settings, token)).await
}

/// Starts order-view: opens and migrates the SQLite file, creates the topics, binds the
/// HTTP port (`http.port = 0` picks a free one) and runs the consumer and the HTTP server
/// until `token` is cancelled. Returns the bound address and the task that ends when both
/// stopped.
pub async fn spawn(settings: Settings, token: CancellationToken) -> anyhow::Result<Spawned> {
    let view: ViewSettings = settings
        .section("order_view")
        .context("failed to read the [order_view] settings")?;
    view.validate()?;
    let start = Startup::new(&settings, &token);
    let platform = start.metrics().clone();
    let metrics = ViewMetrics::new(&platform);

    let memory = store::Memory {
        cache_kib: view.sqlite_cache_kib,
        mmap_mib: view.sqlite_mmap_mib,
    };
    let store = Store::open_with(&settings.database, memory)
        .await
        .context("failed to open the read model")?;
    // The consumer group is per database file: `<prefix>order-view.<generation>`, where the
    // generation is drawn when the file is created. Why not one group for every replica:
    // - a new or empty file must replay every topic from the start, even where the group
    //   of the previous file committed offsets; a fresh generation is a fresh group, and a
    //   fresh group starts at the beginning (auto.offset.reset=earliest), with no seeking;
    // - every replica serves every customer, so each must read every partition: replicas
    //   sharing one group would each hold only their share of the read model;
    // - a kept file keeps its generation, so a restart resumes from the committed offsets,
    //   and the change numbers continue where they were.
    // The feed's event ids name the generation too (see `feed`): a change number means
    // something only within its own file.
    // A file that is deleted leaves its group behind, expired by the broker after
    // offsets.retention.minutes.
    let generation = store
        .generation()
        .await
        .context("failed to read the read model's generation")?;
    let group = format!("{}.{generation}", settings.kafka.name("order-view"));

    start
        .step("create the topics", || {
            feedline::contracts::ensure_topics(&settings.kafka)
        })
        .await?;
    let registry = Arc::new(RegistryClient::new(&settings.registry));
    let decoders =
        Decoders::new(registry, &settings.kafka).context("failed to prepare the decoders")?;

    let cache = Arc::new(Cache::new(view.cache_capacity));
    let hub = Arc::new(
        FeedHub::new(
            &generation,
            store.clone(),
            metrics.clone(),
            view.feed_broadcast_capacity,
            view.feed_client_buffer,
            token.clone(),
        )
        .with_snapshot_limit(view.feed_snapshot_max_rows),
    );
    let handler = ViewHandler::new(
        decoders,
        store.clone(),
        cache.clone(),
        hub.clone(),
        metrics.clone(),
        view.change_log_retain,
    )
    .await
    .context("failed to read the change log")?;
    // Forgets applied event ids after dedup.retention_hours, until the service stops.
    let pruner = handler.pruner();
    let (retention, chunk) = (settings.dedup.retention(), settings.dedup.prune_chunk);
    tokio::spawn(feedline::dedup::keep_pruning(
        settings.dedup.clone(),
        platform.clone(),
        token.clone(),
        move || {
            let pruner = pruner.clone();
            async move { pruner.prune_chunk(retention, chunk).await }
        },
    ));
    let app = Arc::new(api::App {
        store: store.clone(),
        cache,
        hub,
        metrics,
        keep_alive: Duration::from_secs(view.feed_keep_alive_secs),
        token: token.clone(),
    });
    let health = Health::new();
    health.database("read model", store.pool().clone());
    let topics = handler.topics().to_vec();
    let mut service = start.consumer(group, topics, handler);
    service.router = Some(api::router(app, platform, health.clone()));
    service.health = health;
    let (addr, running) = service.start(&settings, token).await?;
    let handle = tokio::spawn(async move {
        let result = running.await;
        store.close().await;
        result
    });
    Ok((addr, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::from_toml(DEFAULTS).unwrap();
        assert_eq!(settings.http.port, 8093);
        assert_eq!(settings.consumer.batch_max, 2500);
        let view: ViewSettings = settings.section("order_view").unwrap();
        view.validate().unwrap();
        assert_eq!(view.feed_keep_alive_secs, 15);
        assert_eq!(view.change_log_retain, 100_000);
    }

    #[test]
    fn the_view_section_is_typed() {
        let settings =
            Settings::from_toml("[order_view]\ncache_capacity = 10\nchange_log_retain = 0")
                .unwrap();
        let view: ViewSettings = settings.section("order_view").unwrap();
        assert_eq!(view.cache_capacity, 10);
        assert!(view.validate().is_err());
        let typo = Settings::from_toml("[order_view]\ncache_capacty = 10").unwrap();
        assert!(typo.section::<ViewSettings>("order_view").is_err());
    }
}
