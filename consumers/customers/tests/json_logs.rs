//! The customer service as a real process with `FEEDLINE_LOG_FORMAT=json`: every line logged
//! while a message is handled names the message's trace, its span and its correlation id, and
//! the event the service emits continues that span; its recorded spans are exported over
//! OTLP/HTTP to the endpoint the environment names.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use feedline::Outgoing;
use feedline::telemetry::{TRACEPARENT, Traceparent};
use feedline_schemas::types::*;
use feedline_schemas::{CUSTOMER_COMMANDS, CUSTOMER_EVENTS};
use feedline_testkit::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

#[tokio::test]
async fn lines_inside_a_message_span_carry_its_trace_and_correlation() {
    let env = TestEnv::start(3).await;
    // An OTLP/HTTP collector of sorts: it notes each request's first line and says 200.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = collector.local_addr().unwrap();
    let exports: Arc<Mutex<Vec<String>>> = Arc::default();
    let noted = exports.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = collector.accept().await {
            let noted = noted.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut first = String::new();
                if reader.read_line(&mut first).await.is_ok() {
                    noted.lock().unwrap().push(first.trim().to_owned());
                }
                // Enough of the request read for the client not to see a reset.
                let mut rest = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    reader.read(&mut rest),
                )
                .await;
                let mut stream = reader.into_inner();
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let url = fresh_database().await;
    let mut child = tokio::process::Command::new(service_binary("feedline-customers"))
        .env("FEEDLINE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,feedline::consumer=debug")
        .env("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap())
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &env.prefix)
        .env("FEEDLINE_KAFKA__DEFAULT_PARTITIONS", "3")
        .env("FEEDLINE_REGISTRY__URL", &env.registry_url)
        .env("FEEDLINE_DATABASE__URL", &url)
        .env("FEEDLINE_HTTP__HOST", "127.0.0.1")
        .env("FEEDLINE_HTTP__PORT", "0")
        .env("FEEDLINE_DISCOVERY__ENABLED", "false")
        .env(
            "FEEDLINE_TELEMETRY__OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the customers binary starts");
    let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
    let stdout = child.stdout.take().unwrap();
    let collected = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            collected.lock().unwrap().push(value);
        }
    });
    let message = |line: &Value| line["fields"]["message"].as_str().map(str::to_owned);
    eventually("the service runs", PATIENCE, async || {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .any(|l| message(l).as_deref() == Some("running"))
            .then_some(())
    })
    .await;

    let exporting = lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| message(l).as_deref() == Some("exporting traces"));
    assert!(exporting, "the endpoint from the environment is used");

    // A command as the gateway would send it, inside a trace.
    let correlation = Uuid::new_v4().to_string();
    let command = CustomerCommand::new(
        "test-gateway",
        correlation.clone(),
        None,
        CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
            customer_id: Uuid::new_v4().to_string(),
            name: "Grace Hopper".into(),
            credit_limit_cents: 10_000,
            tenant: None,
        }),
    );
    let topic = env.topic(CUSTOMER_COMMANDS);
    let payload = env
        .encoder(CUSTOMER_COMMANDS)
        .await
        .encode(&command)
        .unwrap();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN}-01");
    let headers = [(TRACEPARENT, traceparent.as_bytes())];
    env.producer
        .send(Outgoing::new(&topic, Some(b"k"), &payload).headers(&headers))
        .await
        .unwrap();

    let line = eventually("the message's debug line", PATIENCE, async || {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .find(|l| message(l).as_deref() == Some("message to apply"))
            .cloned()
    })
    .await;
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["correlation_id"], correlation.as_str(), "{line}");
    let span_id = line["span_id"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert_eq!(span_id.len(), 16, "{line}");
    assert_ne!(
        span_id, PARENT_SPAN,
        "the message has a span of its own: {line}"
    );
    assert_eq!(line["span"]["name"], "message", "{line}");

    // The event it caused continues the message's span, through the outbox.
    let found = std::cell::RefCell::new(None);
    env.reader(CUSTOMER_EVENTS)
        .until("the customer registered event", |m| {
            let traceparent = m.iter().find_map(|m| header(m, TRACEPARENT));
            *found.borrow_mut() = traceparent.and_then(|t| Traceparent::parse(t.as_bytes()));
            traceparent.is_some()
        })
        .await;
    let sent = found.into_inner().expect("a valid traceparent");
    let sent = sent.as_str();
    assert_eq!(&sent[3..35], TRACE_ID);
    assert_eq!(
        &sent[36..52],
        span_id,
        "the event's parent is the message's span"
    );

    // The recorded span leaves the process (the batch exporter sends every few seconds).
    eventually("spans exported over OTLP/HTTP", PATIENCE, async || {
        let exports = exports.lock().unwrap();
        exports
            .iter()
            .any(|l| l.starts_with("POST /v1/traces "))
            .then_some(())
    })
    .await;

    // A message whose trace is not recorded has no span of its own: its lines name its
    // trace, the span it came from and its correlation id all the same.
    let unsampled_trace = "1bf7651916cd43dd8448eb211c80319d";
    let correlation = Uuid::new_v4().to_string();
    let command = CustomerCommand::new(
        "test-gateway",
        correlation.clone(),
        None,
        CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
            customer_id: Uuid::new_v4().to_string(),
            name: "Ada Lovelace".into(),
            credit_limit_cents: 10_000,
            tenant: None,
        }),
    );
    let payload = env
        .encoder(CUSTOMER_COMMANDS)
        .await
        .encode(&command)
        .unwrap();
    let traceparent = format!("00-{unsampled_trace}-{PARENT_SPAN}-00");
    let headers = [(TRACEPARENT, traceparent.as_bytes())];
    env.producer
        .send(Outgoing::new(&topic, Some(b"k"), &payload).headers(&headers))
        .await
        .unwrap();
    let line = eventually("the unsampled message's debug line", PATIENCE, async || {
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .find(|l| {
                message(l).as_deref() == Some("message to apply")
                    && l["correlation_id"] == correlation.as_str()
            })
            .cloned()
    })
    .await;
    assert_eq!(line["trace_id"], unsampled_trace, "{line}");
    assert_eq!(line["span_id"], PARENT_SPAN, "{line}");

    // Lines outside any span name no trace.
    let lines = lines.lock().unwrap();
    let starting = lines
        .iter()
        .find(|l| message(l).as_deref() == Some("starting"))
        .expect("the starting line");
    assert!(starting.get("trace_id").is_none(), "{starting}");
}
