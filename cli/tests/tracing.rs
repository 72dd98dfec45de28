//! One order, one trace: the whole system in-process with every span collected in memory,
//! checked hop by hop, gateway → orders → customers → orders → order-view, each consumer's
//! message span a child of the span that produced the message in the service before.

mod common;

use std::time::Duration;

use common::system::{Launch, demo_bearer};
use feedline::CancellationToken;
use feedline_testkit::{PATIENCE, eventually};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};

/// The value of attribute `key` of `span`, as text.
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The message spans of `trace` a consumer group ending in `service` made for `topic`.
fn handled<'a>(spans: &'a [SpanData], service: &str, topic: &str) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == "message")
        .filter(|s| {
            attribute(s, "messaging.consumer.group.name")
                .is_some_and(|g| g.ends_with(service) || g.contains(&format!("{service}.")))
        })
        .filter(|s| attribute(s, "messaging.destination.name").is_some_and(|t| t.ends_with(topic)))
        .collect()
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} parent {} group {:?} topic {:?}",
                s.name,
                s.span_context.span_id(),
                s.parent_span_id,
                attribute(s, "messaging.consumer.group.name"),
                attribute(s, "messaging.destination.name"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_order_is_one_trace_across_every_service() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    assert!(
        feedline::telemetry::init_with_provider(provider),
        "the test's provider is the one installed"
    );

    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let system = Launch::new("").await.start(token).await;
    let base = format!("http://{}", system.gateway);
    tokio::spawn(system.join(Duration::from_secs(10)));

    let http = reqwest::Client::new();
    let bearer = demo_bearer(&http, &base).await;
    let customer: Value = http
        .post(format!("{base}/customers?wait=15s"))
        .bearer_auth(&bearer)
        .json(&json!({"name": "Ada", "credit_limit": "100.00"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let customer = customer["customer_id"].as_str().expect("a customer id");

    // The client's own trace: the gateway continues it.
    let client_trace = "5b8efff798038103d269b633813fc60c";
    let client_span = "eee19b7ec3c1b174";
    let response = http
        .post(format!("{base}/orders?wait=15s"))
        .bearer_auth(&bearer)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"customer_id": customer, "total": "60.00"}))
        .send()
        .await
        .unwrap();
    let traceparent = response
        .headers()
        .get("traceparent")
        .expect("the response names its trace")
        .to_str()
        .unwrap()
        .to_owned();
    let trace_id_header = response.headers().get("x-trace-id").cloned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "APPROVED", "{body}");
    assert_eq!(&traceparent[3..35], client_trace, "{traceparent}");
    assert_eq!(trace_id_header.unwrap().to_str().unwrap(), client_trace);
    let trace = TraceId::from_hex(client_trace).unwrap();
    let request_span = SpanId::from_hex(&traceparent[36..52]).unwrap();

    // order-view and customers see OrderCreated and OrderApproved: the last hops.
    let spans = eventually("every hop's span", PATIENCE, async || {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        let done = handled(&spans, "order-view", "order-events").len() >= 2
            && handled(&spans, "customers", "order-events").len() >= 2
            && spans.iter().filter(|s| s.name == "feed.publish").count() >= 2;
        done.then_some(spans)
    })
    .await;
    let all = describe(&spans);

    let request: Vec<_> = spans.iter().filter(|s| s.name == "POST /orders").collect();
    assert_eq!(request.len(), 1, "{all}");
    let request = request[0];
    assert_eq!(request.span_context.span_id(), request_span, "{all}");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(client_span).unwrap(),
        "{all}"
    );
    assert_eq!(
        attribute(request, "correlation_id")
            .as_deref()
            .map(str::len),
        Some(36)
    );

    let one = |service: &str, topic: &str| -> &SpanData {
        let found = handled(&spans, service, topic);
        assert_eq!(found.len(), 1, "one {service} span for {topic}:\n{all}");
        found[0]
    };
    // gateway → orders: the command.
    let place = one("orders", "order-commands");
    assert_eq!(place.parent_span_id, request_span, "{all}");
    // orders → customers: OrderCreated, through the outbox (customers sees OrderApproved
    // too, checked below).
    let reserve = *handled(&spans, "customers", "order-events")
        .iter()
        .find(|s| s.parent_span_id == place.span_context.span_id())
        .unwrap_or_else(|| panic!("customers handled OrderCreated:\n{all}"));
    // customers → orders: CreditReserved.
    let approve = one("orders", "credit-events");
    assert_eq!(
        approve.parent_span_id,
        reserve.span_context.span_id(),
        "{all}"
    );
    // orders → order-view (and customers): OrderCreated, then OrderApproved.
    let mut expected = vec![
        place.span_context.span_id().to_string(),
        approve.span_context.span_id().to_string(),
    ];
    expected.sort();
    for service in ["order-view", "customers"] {
        let mut parents: Vec<String> = handled(&spans, service, "order-events")
            .iter()
            .map(|s| s.parent_span_id.to_string())
            .collect();
        parents.sort();
        assert_eq!(parents, expected, "{service}:\n{all}");
    }
    // The feed's push is part of the trace, under order-view's batch.
    let pushes = spans.iter().filter(|s| s.name == "feed.publish").count();
    assert!(pushes >= 2, "{all}");
    // The gateway's look-ups in order-view while it waits for the outcome continue the
    // trace: order-view's request spans are children of the gateway's.
    assert!(
        spans
            .iter()
            .any(|s| s.name == "GET /orders/{id}" && s.parent_span_id == request_span),
        "an order-view read under the request:\n{all}"
    );
    // Every message span names the command's correlation id.
    let correlation = attribute(request, "correlation_id");
    for span in [place, reserve, approve] {
        assert_eq!(attribute(span, "correlation_id"), correlation, "{all}");
    }
}
