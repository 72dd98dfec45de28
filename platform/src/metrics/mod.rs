//! One Prometheus registry per service, with the platform's counters beside it.

pub mod text;

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Platform metrics: produce, consume, handler latency, event age, DLQ, consumer lag, outbox.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub produced: IntCounterVec,
    pub produce_errors: IntCounterVec,
    pub produce_seconds: HistogramVec,
    pub consumed: IntCounterVec,
    pub handler_seconds: HistogramVec,
    pub handler_errors: IntCounterVec,
    pub event_age_seconds: HistogramVec,
    pub dead_lettered: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub consumer_prefetched: IntGaugeVec,
    pub outbox_published: IntCounterVec,
    pub outbox_quarantined: IntCounterVec,
    pub outbox_backlog: IntGauge,
    pub outbox_oldest_age_seconds: Gauge,
    pub rdkafka_queue_messages: IntGaugeVec,
    pub processed_pruned: IntCounter,
    pub processed_prune_errors: IntCounter,
    /// Set from `/proc/self/statm` at every scrape.
    resident_memory_bytes: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Event age spans milliseconds on a healthy hop and minutes to hours while a consumer works
/// off a backlog; both ends must stay readable.
const AGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

impl Metrics {
    /// Builds the registry with a constant `service` label on every series.
    pub fn new(service: &str) -> Arc<Self> {
        let labels = [("service".to_owned(), service.to_owned())].into();
        let registry =
            Registry::new_custom(Some("feedline".into()), Some(labels)).expect("valid registry");
        let r = Register(&registry);
        Arc::new(Metrics {
            produced: r.counters(
                "produced_total",
                "messages acknowledged by the broker",
                &["topic"],
            ),
            produce_errors: r.counters(
                "produce_errors_total",
                "messages the broker did not acknowledge",
                &["topic", "kind"],
            ),
            produce_seconds: r.histograms(
                "produce_seconds",
                "time from send to broker acknowledgement (every send(); 1 in 16 pipelined enqueue()s)",
                &["topic"],
                LATENCY_BUCKETS,
            ),
            consumed: r.counters(
                "consumed_total",
                "messages handled and their offsets stored",
                &["topic"],
            ),
            handler_seconds: r.histograms(
                "handler_seconds",
                "time a handler took for one batch",
                &["group"],
                LATENCY_BUCKETS,
            ),
            handler_errors: r.counters(
                "handler_errors_total",
                "handler failures by class (transient: retried until it passes; permanent and unknown: the batch is split)",
                &["group", "kind"],
            ),
            event_age_seconds: r.histograms(
                "event_age_seconds",
                "age of the oldest message of each batch when the consumer hands the batch to its \
                 handler, per topic and group: now minus the Kafka message timestamp (the \
                 producer's create time, or the broker's append time if the topic uses \
                 LogAppendTime); covers producer linger, broker, fetch, batching and the wait \
                 behind earlier batches, not the handler itself",
                &["topic", "group"],
                AGE_BUCKETS,
            ),
            dead_lettered: r.counters(
                "dead_lettered_total",
                "messages sent to a dead-letter topic",
                &["topic"],
            ),
            consumer_lag: r.gauges(
                "consumer_lag",
                "messages between the committed offset and the end of the partition",
                &["topic", "partition"],
            ),
            consumer_prefetched: r.gauges(
                "consumer_prefetched_messages",
                "messages fetched and waiting for the handler (the next batch), per group",
                &["group"],
            ),
            outbox_published: r.counters(
                "outbox_published_total",
                "outbox rows published and deleted",
                &["topic"],
            ),
            outbox_quarantined: r.counters(
                "outbox_quarantined_total",
                "outbox rows the broker refused, moved to outbox_quarantine",
                &[],
            ),
            outbox_backlog: r.gauge(
                "outbox_backlog",
                "outbox rows waiting to be published, as the active relay last counted them \
                 (0 on a standby replica)",
            ),
            outbox_oldest_age_seconds: r.float_gauge(
                "outbox_oldest_age_seconds",
                "age of the oldest outbox row waiting to be published, as the active relay \
                 last measured it (0 when none waits, or on a standby replica)",
            ),
            rdkafka_queue_messages: r.gauges(
                "rdkafka_queue_messages",
                "messages waiting in librdkafka's producer queue",
                &["client"],
            ),
            processed_pruned: r.counter(
                "processed_events_pruned_total",
                "processed_events rows deleted for being older than dedup.retention_hours",
            ),
            processed_prune_errors: r.counter(
                "processed_events_prune_errors_total",
                "pruning runs of processed_events that failed (retried at the next run)",
            ),
            resident_memory_bytes: r.gauge(
                "process_resident_memory_bytes",
                "resident set size of the process (the whole process: services started \
                 in one process report the same figure)",
            ),
            registry,
        })
    }

    /// Where a service registers its own metrics, beside these.
    pub fn register(&self) -> Register<'_> {
        Register(&self.registry)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory_bytes.set(rss);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails on valid metrics");
        String::from_utf8(out).expect("prometheus text is utf-8")
    }
}

/// Builds and registers metrics: the one place every service's metrics go through. A metric
/// that does not build or whose name is taken is a bug in the code naming it, which every
/// test that starts the service finds, so it panics with the name.
#[derive(Debug, Clone, Copy)]
pub struct Register<'a>(&'a Registry);

impl Register<'_> {
    fn add<C: Collector + Clone + 'static>(&self, name: &str, built: prometheus::Result<C>) -> C {
        let metric = built.unwrap_or_else(|e| panic!("metric {name} does not build: {e}"));
        self.0
            .register(Box::new(metric.clone()))
            .unwrap_or_else(|e| panic!("metric {name} cannot be registered: {e}"));
        metric
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(name, IntCounter::new(name, help))
    }

    pub fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(name, IntGauge::new(name, help))
    }

    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(name, Gauge::new(name, help))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(name, Histogram::with_opts(opts))
    }

    pub fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(name, HistogramVec::new(opts, labels))
    }
}

/// The resident set size from `/proc/self/status` (`VmRSS`, in kB); `None` where there is no
/// procfs. The prometheus crate's process collector would do this too, but it brings procfs
/// and its dependencies for one figure.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_size_is_exported() {
        let rendered = Metrics::new("t").render();
        let line = rendered
            .lines()
            .find(|l| l.starts_with("feedline_process_resident_memory_bytes{"))
            .expect("the gauge is rendered");
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        if cfg!(target_os = "linux") {
            assert!(value > 0.0, "{line}");
        }
    }

    #[test]
    #[should_panic(expected = "metric consumed_total cannot be registered")]
    fn a_name_registered_twice_names_itself() {
        Metrics::new("t")
            .register()
            .counter("consumed_total", "again");
    }
}
