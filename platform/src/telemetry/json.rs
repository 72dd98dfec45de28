//! JSON log lines that say which trace they belong to: the fields of `tracing-subscriber`'s
//! JSON format (`timestamp`, `level`, `fields`, `target`, `span`, `spans`) plus `trace_id`,
//! `span_id` and `correlation_id` at the top level, so a log search can jump to the trace and
//! to every line of the same request or message.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, Registry};

/// The span field naming the command or event a request or message is about.
pub const CORRELATION_ID: &str = "correlation_id";

/// A span's correlation id, kept in its extensions by [`CorrelationLayer`].
#[derive(Debug)]
struct CorrelationId(String);

/// Keeps each span's `correlation_id` field where the JSON format finds it without parsing
/// the span's formatted fields.
#[derive(Debug, Default)]
pub struct CorrelationLayer;

struct FindCorrelation(Option<String>);

impl Visit for FindCorrelation {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == CORRELATION_ID {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == CORRELATION_ID {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for CorrelationLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(CORRELATION_ID).is_none() {
            return;
        }
        let mut found = FindCorrelation(None);
        attrs.record(&mut found);
        if let (Some(value), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(CorrelationId(value));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = FindCorrelation(None);
        values.record(&mut found);
        if let (Some(value), Some(span)) = (found.0, ctx.span(id)) {
            let mut extensions = span.extensions_mut();
            extensions.remove::<CorrelationId>();
            extensions.insert(CorrelationId(value));
        }
    }
}

/// The JSON line format (`FEEDLINE_LOG_FORMAT=json`).
#[derive(Debug, Default)]
pub struct JsonFormat;

/// An event's fields as JSON values.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        let mut fields = Map::new();
        event.record(&mut JsonFields(&mut fields));
        line.insert("fields".into(), fields.into());
        line.insert("target".into(), meta.target().into());

        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let extensions = span.extensions();
                let mut entry = Map::new();
                entry.insert("name".into(), span.name().into());
                // With JSON field formatting the span's fields are a JSON object already.
                if let Some(formatted) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) =
                        serde_json::from_str::<Value>(formatted.as_str())
                {
                    entry.extend(fields);
                }
                spans.push(Value::Object(entry));
            }
        }
        // The scope runs from the innermost span out; `spans` lists them root first.
        spans.reverse();
        if let Some(current) = spans.last() {
            line.insert("span".into(), current.clone());
        }
        if !spans.is_empty() {
            line.insert("spans".into(), spans.into());
        }

        // The innermost span entered on this thread: the one the event is emitted in.
        let ids = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        });
        if let Some((trace_id, span_id)) = ids {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        if let Some(correlation) = current_correlation() {
            line.insert(CORRELATION_ID.into(), correlation.into());
        }
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The correlation id of the innermost entered span that has one. Looked up in the registry
/// itself: a message span below the log level (see [`super::message_span`]) is not in the
/// format's own view of the scope, yet its lines must name its correlation id.
fn current_correlation() -> Option<String> {
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let current = dispatch.current_span();
        let mut span = registry.span(current.id()?);
        while let Some(s) = span {
            if let Some(c) = s.extensions().get::<CorrelationId>() {
                return Some(c.0.clone());
            }
            span = s.parent();
        }
        None
    })
}
