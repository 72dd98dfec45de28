//! What tracing costs per message: the consumer's span (`message_span`) for a message with no
//! trace context, with an unsampled `traceparent` and with a sampled one (a recorded
//! OpenTelemetry span, not exported), and the producer's read of the current context for the
//! headers it writes. Figures in benches/REPORT.md ("Tracing cost").

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use feedline::telemetry::propagation::Outgoing;
use feedline::telemetry::{TRACEPARENT, message_span};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

fn message(traceparent: Option<&str>) -> OwnedMessage {
    let headers = traceparent.map(|tp| {
        OwnedHeaders::new()
            .insert(Header {
                key: "event-type",
                value: Some("OrderCreated"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(tp),
            })
    });
    OwnedMessage::new(
        Some(vec![0; 64]),
        None,
        "order-events".into(),
        Timestamp::NotAvailable,
        0,
        0,
        headers,
    )
}

fn tracing_cost(c: &mut Criterion) {
    // As a service without an exporter runs: new traces unrecorded, sampled parents followed.
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
        .build();
    assert!(feedline::telemetry::init_with_provider(provider));

    let mut group = c.benchmark_group("tracing");
    let cases = [
        ("consume/no_context", message(None)),
        (
            "consume/unsampled",
            message(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            )),
        ),
        (
            "consume/sampled",
            message(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
        ),
    ];
    for (name, msg) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let span = message_span(black_box(msg));
                span.in_scope(|| black_box(1))
            })
        });
    }
    let sampled = message_span(&cases[2].1);
    group.bench_function("produce/current_context", |b| {
        sampled.in_scope(|| b.iter(|| black_box(Outgoing::current())))
    });
    group.finish();
}

criterion_group!(benches, tracing_cost);
criterion_main!(benches);
