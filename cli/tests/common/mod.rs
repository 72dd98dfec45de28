//! The harness of the CLI's end-to-end tests: the project's registry in-process (port 0,
//! random prefix for its `_schemas` topic) on the real broker, and the `feedline` binary
//! run against it with a bounded time per call. Topic names are random per test.

#![allow(dead_code)]

pub mod system;

use std::process::Stdio;
use std::time::Duration;

use feedline::{CancellationToken, Metrics, Producer, Settings};
// Not every test binary uses every helper (`dead_code` above does not cover imports).
#[allow(unused_imports)]
pub use feedline_testkit::{PATIENCE, eventually, kafka_bootstrap};
use feedline_testkit::{random_prefix, start_registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::AsyncWriteExt;

pub const ORDER_EVENTS: &str = "order-events";

/// What one run of the binary printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout's lines parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:#?}");
        self
    }
}

pub struct Env {
    pub prefix: String,
    pub registry: String,
    pub settings: Settings,
    _token: tokio_util::sync::DropGuard,
}

pub async fn start() -> Env {
    feedline::telemetry::init();
    let prefix = random_prefix();
    let token = CancellationToken::new();
    let registry = start_registry(&prefix, token.clone()).await;
    let settings = Settings::from_toml(&format!(
        "service_name = \"cli-test\"\n[kafka]\nbootstrap_servers = \"{}\"\n\
         topic_prefix = \"{prefix}\"\n[registry]\nurl = \"{registry}\"\n",
        kafka_bootstrap()
    ))
    .expect("test settings");
    Env {
        prefix,
        registry,
        settings,
        _token: token.drop_guard(),
    }
}

impl Env {
    /// Runs `feedline args...` against this registry, with `input` on stdin.
    pub async fn feedline_with(&self, args: &[&str], input: Option<&str>) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"));
        command
            .args(args)
            // Through the environment, so a test can still override it with the flag.
            .env("FEEDLINE_REGISTRY__URL", &self.registry)
            .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        if let Some(input) = input {
            let mut stdin = child.stdin.take().unwrap();
            let input = input.to_owned();
            tokio::spawn(async move {
                let _ = stdin.write_all(input.as_bytes()).await;
            });
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("feedline {args:?} ran for over 60 s"))
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn feedline(&self, args: &[&str]) -> Run {
        self.feedline_with(args, None).await
    }

    /// A fresh topic with `partitions` partitions, created through the CLI.
    pub async fn topic(&self, hint: &str, partitions: u32) -> String {
        let name = format!(
            "{}{hint}-{}",
            self.prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let run = self
            .feedline(&[
                "topics",
                "create",
                &name,
                "--partitions",
                &partitions.to_string(),
            ])
            .await
            .ok();
        assert_eq!(run.stdout.trim(), name);
        name
    }

    /// A topic with the order-events envelope registered as its value schema.
    pub async fn order_topic(&self, partitions: u32) -> String {
        let topic = self.topic("orders", partitions).await;
        let registry = feedline::codec::RegistryClient::new(&self.settings.registry);
        feedline::codec::SchemaResolver::register(
            &registry,
            &feedline_schemas::value_subject(&topic),
            feedline_schemas::envelope_schema(ORDER_EVENTS).unwrap(),
        )
        .await
        .unwrap();
        topic
    }

    pub fn producer(&self) -> Producer {
        Producer::new(&self.settings.kafka, Metrics::new("cli-test")).unwrap()
    }
}

/// An OrderCreated envelope as a user would type it.
pub fn order_created(customer: &str, total_cents: i64) -> serde_json::Value {
    serde_json::json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": 1_764_000_000_000i64,
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "producer": "cli-test",
        "payload": {
            "order_id": uuid::Uuid::new_v4().to_string(),
            "customer_id": customer,
            "total_cents": total_cents
        }
    })
}

pub fn lines(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

pub fn customer() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every message of `topic` as the broker holds it.
pub fn read_all(topic: &str, partitions: i32) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", "cli-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut eof = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while eof < partitions && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}
