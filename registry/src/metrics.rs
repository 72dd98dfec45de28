//! The registry's own metrics, registered beside the platform's in the service's Prometheus
//! registry (so they render on `/metrics` as `feedline_registry_*`).

use std::sync::Arc;

use feedline::Metrics;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};

#[derive(Debug)]
pub struct RegistryMetrics {
    /// Registrations by outcome: `new_version` or `existing`.
    pub registrations: IntCounterVec,
    /// Read requests by endpoint.
    pub lookups: IntCounterVec,
    /// Error responses by Confluent error code.
    pub errors: IntCounterVec,
    /// Log records applied, and those ignored because an earlier record won.
    pub records_applied: IntCounter,
    pub records_rejected: IntCounter,
    /// Write batches by outcome: `committed`, `nothing_to_write` (all answered from the
    /// state, e.g. rejected), `fenced` (another instance wrote in between, retried), `failed`
    /// (retried).
    pub transactions: IntCounterVec,
    pub write_seconds: HistogramVec,
    /// Ids currently bound to a schema.
    pub schemas: IntGauge,
}

impl RegistryMetrics {
    pub fn new(metrics: &Metrics) -> Arc<Self> {
        let r = metrics.register();
        Arc::new(RegistryMetrics {
            registrations: r.counters(
                "registry_registrations_total",
                "schema registrations by outcome",
                &["outcome"],
            ),
            lookups: r.counters(
                "registry_lookups_total",
                "read requests by endpoint",
                &["endpoint"],
            ),
            errors: r.counters(
                "registry_errors_total",
                "error responses by error code",
                &["code"],
            ),
            records_applied: r.counter(
                "registry_records_applied_total",
                "_schemas records applied to the in-memory state",
            ),
            records_rejected: r.counter(
                "registry_records_rejected_total",
                "_schemas records ignored because an earlier record won",
            ),
            transactions: r.counters(
                "registry_transactions_total",
                "write transactions by outcome",
                &["outcome"],
            ),
            write_seconds: r.histograms(
                "registry_write_seconds",
                "time from a write request to its answer, log round trip included",
                &["command"],
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            schemas: r.gauge("registry_schemas", "ids currently bound to a schema"),
        })
    }
}
