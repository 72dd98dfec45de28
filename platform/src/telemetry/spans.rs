//! The spans of the consumer side: one per batch handed to a handler, one per message where
//! a message has work of its own (its decoding, its effects), each continuing the trace the
//! message arrived with.

use std::future::Future;
use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanContext;
use rdkafka::Message;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{extract, remote_parent};

/// The most links a batch span gets (the SDK's default limit of links per span).
const MAX_LINKS: usize = 128;

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
/// context; several: a new trace, linked to the contexts of the messages whose traces are
/// recorded.
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
        // Links to recorded traces only (the others lead nowhere), and no more than a trace
        // view can show: a batch holds thousands of messages at full rate.
        let recorded = batch
            .iter()
            .filter_map(|msg| extract(msg.headers()))
            .filter(SpanContext::is_sampled)
            .take(MAX_LINKS);
        for cx in recorded {
            span.add_link(cx);
        }
    }
    span
}

/// One message's span and the trace context it continues: see [`message_span`].
#[derive(Debug)]
pub struct MessageSpan {
    span: Span,
    /// For an unrecorded message, its own context, made current while it is handled (the
    /// span is not in OpenTelemetry's view).
    remote: Option<Context>,
}

impl MessageSpan {
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `f` in the message's span and trace context.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _attached = self.remote.clone().map(Context::attach);
        self.span.in_scope(f)
    }

    /// `work` in the message's span and trace context.
    pub fn within<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        let cx = self.remote.clone().unwrap_or_else(Context::current);
        work.with_context(cx).instrument(self.span.clone())
    }
}

/// The span of one message's work, child of the context it arrived with. Its
/// `correlation_id` is filled in once the message is decoded ([`record_correlation_id`]).
///
/// Only a message whose trace is recorded (sampled) gets an OpenTelemetry span: a span costs
/// microseconds, too much for every message at full rate when nothing would be exported.
/// Any other message gets a DEBUG span that OpenTelemetry does not see and the log lines
/// show only at DEBUG, with the message's own trace context current: its log lines name
/// its trace, and what it causes continues that trace.
pub fn message_span<M: Message>(msg: &M) -> MessageSpan {
    let parent = extract(msg.headers());
    if parent.as_ref().is_some_and(|cx| cx.is_sampled()) {
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
        if !span.is_disabled() {
            let _ = GROUP.try_with(|group| span.record("messaging.consumer.group.name", &**group));
            if let Some(cx) = parent {
                let _ = span.set_parent(remote_parent(cx));
            }
        }
        return MessageSpan { span, remote: None };
    }
    let span = tracing::debug_span!(
        target: "feedline::consumer",
        "message",
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        correlation_id = Empty,
    );
    MessageSpan {
        span,
        remote: parent.map(remote_parent),
    }
}

/// Names the command or event the current span (a request's, a message's) is about, for its
/// log lines and its trace.
pub fn record_correlation_id(correlation_id: &str) {
    Span::current().record(super::CORRELATION_ID, correlation_id);
}
