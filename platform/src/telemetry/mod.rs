//! Logs and traces. `RUST_LOG` filters the log lines (default `info`),
//! `FEEDLINE_LOG_FORMAT=json` makes them JSON lines carrying `trace_id`, `span_id` and
//! `correlation_id`.
//!
//! Spans always go to OpenTelemetry, whatever `RUST_LOG` says: trace ids must exist for the
//! logs and for the W3C context every produced message carries ([`propagation`]). They leave
//! the process only when `telemetry.otlp_endpoint` is set (see [`init_service`]).

pub mod http;
mod json;
pub mod propagation;
mod spans;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter};

use crate::config::Settings;

pub use http::{TRACE_ID_HEADER, trace_request};
pub use json::{CORRELATION_ID, CorrelationLayer, JsonFormat};
pub use propagation::{TRACEPARENT, TRACESTATE, Traceparent};
pub use spans::{MessageSpan, batch_span, in_consumer_group, message_span, record_correlation_id};

const DEFAULT_FILTER: &str = "info,librdkafka=warn,sqlx=warn";

/// The provider behind the installed subscriber: the first installation wins, as the
/// subscriber is global.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the otlp exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Installs the global subscriber once, spans kept in the process; later calls (tests) are
/// no-ops.
pub fn init() {
    init_with_default(DEFAULT_FILTER);
}

/// Like [`init`], with another filter when `RUST_LOG` is not set (a CLI wants warnings only).
pub fn init_with_default(default_filter: &str) {
    install(default_filter, local_provider(Resource::builder().build()));
}

/// Installs the subscriber with `provider` behind its spans: how a test collects every span
/// of the services it runs in-process (an in-memory exporter). Returns false when a
/// subscriber was installed before (then `provider` is not used).
pub fn init_with_provider(provider: SdkTracerProvider) -> bool {
    install(DEFAULT_FILTER, provider)
}

/// What a service's `main` holds until it stops: flushes and shuts the tracer provider down.
#[derive(Debug)]
#[must_use = "shut it down when the service stops, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The exporter's own thread does the work; a collector that went away must not hold
        // the exit up for long.
        if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "tracer provider did not shut down cleanly");
        }
    }
}

/// Installs the subscriber for a service from its `[telemetry]` settings: with an OTLP
/// endpoint, spans are exported in batches over HTTP/protobuf.
pub fn init_service(settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let telemetry = &settings.telemetry;
    let resource = Resource::builder()
        .with_service_name(settings.trace_service_name().to_owned())
        .build();
    let provider = if telemetry.exports() {
        let endpoint = traces_url(&telemetry.otlp_endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&endpoint)
            .with_timeout(Duration::from_secs(10))
            .with_headers(Default::default())
            .build()
            .map_err(|source| TelemetryError::Exporter {
                endpoint: endpoint.clone(),
                source,
            })?;
        SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                telemetry.sampling_ratio,
            ))))
            .with_batch_exporter(exporter)
            .build()
    } else {
        local_provider(resource)
    };
    let installed = install(DEFAULT_FILTER, provider.clone());
    if telemetry.exports() && installed {
        tracing::info!(endpoint = %telemetry.otlp_endpoint, ratio = telemetry.sampling_ratio, "exporting traces");
    }
    Ok(Telemetry {
        provider: installed.then_some(provider),
    })
}

/// `http://host:4318` → `http://host:4318/v1/traces`, as the OTLP specification derives the
/// signal's URL from a base endpoint; a URL that names its path already is kept.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// Without an exporter: ids for every span, nothing recorded for new traces (no one would
/// read it), and a trace that arrives sampled stays sampled downstream.
fn local_provider(resource: Resource) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .build()
}

/// Installs the global subscriber: the OpenTelemetry layer (spans at INFO and above,
/// whatever `RUST_LOG` says), the correlation-id layer, and the log lines filtered by
/// `RUST_LOG`. Returns false when one was installed before.
fn install(default_filter: &str, provider: SdkTracerProvider) -> bool {
    if PROVIDER.get().is_some() {
        return false;
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("FEEDLINE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let tracer = provider.tracer("feedline");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_filter(filter::filter_fn(|meta| {
            meta.is_span() && *meta.level() <= LevelFilter::INFO
                || meta.is_event() && *meta.level() <= LevelFilter::WARN
        }));
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(CorrelationLayer)
        .with(log_layer(json).with_filter(filter))
        .try_init()
        .is_ok();
    if installed {
        let _ = PROVIDER.set(provider);
    }
    installed
}

fn log_layer<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if json {
        tracing_subscriber::fmt::layer()
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonFormat)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_follows_the_otlp_rule() {
        assert_eq!(
            traces_url("http://jaeger:4318"),
            "http://jaeger:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://jaeger:4318/"),
            "http://jaeger:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
