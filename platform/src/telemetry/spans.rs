//! The spans of the consumer side: one per batch handed to a handler, one per message where
//! a message has work of its own (its decoding, its effects), each continuing the trace the
//! message arrived with.

use std::future::Future;
use std::sync::Arc;

use rdkafka::Message;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{extract, remote_parent};

tokio::task_local! {
    /// The consumer group whose handler runs: named on the message spans, which are created
    /// deep in a handler that does not know it.
    static GROUP: Arc<str>;
}

/// Runs `work` (a handler's future) as the consumer group `group`.
pub fn in_consumer_group<F: Future>(group: Arc<str>, work: F) -> impl Future<Output = F::Output> {
    GROUP.scope(group, work)
}

/// The span of a batch handed to a handler. One message: its parent is the message's
/// context; several: a new trace linked to each message's context.
pub fn batch_span<M: Message>(group: &str, batch: &[M]) -> Span {
    let span = tracing::info_span!(
        target: "feedline::consumer",
        "batch",
        otel.name = "process",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.consumer.group.name = group,
        messaging.batch.message_count = batch.len(),
    );
    if span.is_disabled() {
        return span;
    }
    if let [msg] = batch {
        if let Some(cx) = extract(msg.headers()) {
            let _ = span.set_parent(remote_parent(cx));
        }
    } else {
        for msg in batch {
            if let Some(cx) = extract(msg.headers()) {
                span.add_link(cx);
            }
        }
    }
    span
}

/// The span of one message's work, child of the context it arrived with. Its
/// `correlation_id` is filled in once the message is decoded ([`record_correlation_id`]).
pub fn message_span<M: Message>(msg: &M) -> Span {
    let span = tracing::info_span!(
        target: "feedline::consumer",
        "message",
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.name = msg.topic(),
        messaging.destination.partition.id = msg.partition(),
        messaging.kafka.offset = msg.offset(),
        messaging.consumer.group.name = Empty,
        correlation_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let _ = GROUP.try_with(|group| span.record("messaging.consumer.group.name", &**group));
    if let Some(cx) = extract(msg.headers()) {
        let _ = span.set_parent(remote_parent(cx));
    }
    span
}

/// Names the command or event the current span (a request's, a message's) is about, for its
/// log lines and its trace.
pub fn record_correlation_id(correlation_id: &str) {
    Span::current().record(super::CORRELATION_ID, correlation_id);
}
