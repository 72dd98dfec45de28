//! order-view's own metrics, registered beside the platform's (same registry, so the same
//! `feedline_` prefix and `service` label, served at `/metrics`).

use feedline::Metrics;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

#[derive(Debug, Clone)]
pub struct ViewMetrics {
    /// Events applied, by payload type (`OrderCreated`, ...).
    pub events_applied: IntCounterVec,
    /// Events skipped because their `event_id` was applied before.
    pub events_duplicate: IntCounter,
    /// Changes of the read model written and published.
    pub changes: IntCounter,
    pub batch_size: Histogram,
    pub batch_seconds: Histogram,
    pub feed_subscribers: IntGauge,
    pub feed_lagged: IntCounter,
    pub feed_snapshots: IntCounter,
    /// Point look-ups, by `kind` (order | customer) and `result` (hit | miss).
    pub cache_lookups: IntCounterVec,
    /// Per applied event: its `occurred_at` to the commit that made it visible.
    pub freshness_seconds: Histogram,
    /// Per change sent live to a feed client: its commit to its write to the client's stream.
    pub feed_push_delay_seconds: Histogram,
}

/// Freshness spans milliseconds when all is well and seconds when a hop queues; past 10 s
/// the exact figure matters less than that it is late.
const FRESHNESS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

/// A push is an in-memory hand-over: microseconds to milliseconds, seconds only when the
/// runtime is starved.
const PUSH_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl ViewMetrics {
    pub fn new(platform: &Metrics) -> Self {
        let registry = platform.registry();
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique order-view metric");
        };
        let events_applied = IntCounterVec::new(
            Opts::new(
                "order_view_events_applied_total",
                "events applied to the read model",
            ),
            &["type"],
        )
        .expect("valid metric");
        let events_duplicate = IntCounter::new(
            "order_view_events_duplicate_total",
            "events skipped because they were applied before",
        )
        .expect("valid metric");
        let changes = IntCounter::new(
            "order_view_changes_total",
            "changes of the read model written and published",
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "order_view_batch_size",
                "messages per batch written to SQLite",
            )
            .buckets(vec![
                1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
            ]),
        )
        .expect("valid metric");
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "order_view_batch_seconds",
                "time to apply and commit one batch",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        let feed_subscribers =
            IntGauge::new("order_view_feed_subscribers", "live feed clients connected")
                .expect("valid metric");
        let feed_lagged = IntCounter::new(
            "order_view_feed_lagged_total",
            "live feed clients disconnected because they fell behind",
        )
        .expect("valid metric");
        let feed_snapshots = IntCounter::new(
            "order_view_feed_snapshots_total",
            "live feed clients that resumed too far behind and got a snapshot",
        )
        .expect("valid metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new("order_view_cache_lookups_total", "cache look-ups by result"),
            &["kind", "result"],
        )
        .expect("valid metric");
        let freshness_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "order_view_freshness_seconds",
                "per order placed, from the gateway's acceptance of the command (the \
                 OrderCreated's occurred_at) to the SQLite commit that made the order visible \
                 in the read model",
            )
            .buckets(FRESHNESS_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let feed_push_delay_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "order_view_feed_push_delay_seconds",
                "per change sent live to a feed client, from the read model's commit to its \
                 write to the client's stream",
            )
            .buckets(PUSH_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        register(Box::new(freshness_seconds.clone()));
        register(Box::new(feed_push_delay_seconds.clone()));
        register(Box::new(events_applied.clone()));
        register(Box::new(events_duplicate.clone()));
        register(Box::new(changes.clone()));
        register(Box::new(batch_size.clone()));
        register(Box::new(batch_seconds.clone()));
        register(Box::new(feed_subscribers.clone()));
        register(Box::new(feed_lagged.clone()));
        register(Box::new(feed_snapshots.clone()));
        register(Box::new(cache_lookups.clone()));
        ViewMetrics {
            events_applied,
            events_duplicate,
            changes,
            batch_size,
            batch_seconds,
            feed_subscribers,
            feed_lagged,
            feed_snapshots,
            cache_lookups,
            freshness_seconds,
            feed_push_delay_seconds,
        }
    }

    pub fn cache_lookup(&self, kind: &str, hit: bool) {
        self.cache_lookups
            .with_label_values(&[kind, if hit { "hit" } else { "miss" }])
            .inc();
    }
}
