//! order-view's own metrics, registered beside the platform's (same registry, so the same
//! `feedline_` prefix and `service` label, served at `/metrics`).

use feedline::Metrics;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

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
        let r = platform.register();
        ViewMetrics {
            events_applied: r.counters(
                "order_view_events_applied_total",
                "events applied to the read model",
                &["type"],
            ),
            events_duplicate: r.counter(
                "order_view_events_duplicate_total",
                "events skipped because they were applied before",
            ),
            changes: r.counter(
                "order_view_changes_total",
                "changes of the read model written and published",
            ),
            batch_size: r.histogram(
                "order_view_batch_size",
                "messages per batch written to SQLite",
                &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            ),
            batch_seconds: r.histogram(
                "order_view_batch_seconds",
                "time to apply and commit one batch",
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ],
            ),
            feed_subscribers: r.gauge("order_view_feed_subscribers", "live feed clients connected"),
            feed_lagged: r.counter(
                "order_view_feed_lagged_total",
                "live feed clients disconnected because they fell behind",
            ),
            feed_snapshots: r.counter(
                "order_view_feed_snapshots_total",
                "live feed clients that resumed too far behind and got a snapshot",
            ),
            cache_lookups: r.counters(
                "order_view_cache_lookups_total",
                "cache look-ups by result",
                &["kind", "result"],
            ),
            freshness_seconds: r.histogram(
                "order_view_freshness_seconds",
                "per order placed, from the gateway's acceptance of the command (the \
                 OrderCreated's occurred_at) to the SQLite commit that made the order visible \
                 in the read model",
                FRESHNESS_BUCKETS,
            ),
            feed_push_delay_seconds: r.histogram(
                "order_view_feed_push_delay_seconds",
                "per change sent live to a feed client, from the read model's commit to its \
                 write to the client's stream",
                PUSH_BUCKETS,
            ),
        }
    }

    pub fn cache_lookup(&self, kind: &str, hit: bool) {
        self.cache_lookups
            .with_label_values(&[kind, if hit { "hit" } else { "miss" }])
            .inc();
    }
}
