//! `feedline-bench`: load tests against a running broker. Every scenario measures a baseline
//! in the same run, because these machines are noisy: ratios hold where absolutes drift.
//!
//! Example: cargo run --release -p feedline-benches -- produce --count 200000 --size 200

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use feedline::admin::{Admin, TopicSpec};
use feedline::{Metrics, Outgoing, Producer, Settings};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Parser)]
#[command(name = "feedline-bench", about = "Load-test a feedline pipeline")]
struct Cli {
    #[arg(
        long,
        default_value = "127.0.0.1:9092",
        env = "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS"
    )]
    bootstrap_servers: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Closed-loop produce: feedline's producer against raw rdkafka with the same settings.
    Produce {
        #[arg(long, default_value_t = 200_000)]
        count: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Messages in flight at once (acknowledgements awaited in windows of this size).
        #[arg(long, default_value_t = 10_000)]
        window: usize,
        /// Kafka's own producer perf test, as a command; empty to skip that baseline.
        #[arg(long, default_value = "infra/kafka.sh tool producer-perf-test")]
        perf_test: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\nstatistics_interval_ms = 0",
        cli.bootstrap_servers
    ))?;
    match cli.scenario {
        Scenario::Produce {
            count,
            size,
            window,
            perf_test,
        } => produce(&settings, count, size, window, &perf_test).await,
    }
}

async fn produce(
    settings: &Settings,
    count: usize,
    size: usize,
    window: usize,
    perf_test: &str,
) -> anyhow::Result<()> {
    let topic = format!("bench-produce-{}", uuid::Uuid::new_v4().simple());
    Admin::new(&settings.kafka)?
        .ensure_topics(&[TopicSpec::new(&topic, 6)])
        .await?;
    // Random upper-case letters, as Kafka's perf-test sends, so compression gets no free ride.
    let payload: Vec<u8> = (0..size)
        .map(|_| b'A' + rand::random_range(0..26u8))
        .collect();
    let keys: Vec<String> = (0..1024).map(|i| format!("customer-{i}")).collect();

    // Baseline: the same librdkafka configuration, driven directly.
    let raw: FutureProducer = settings.kafka.producer_config().create()?;
    let warm = count / 10;
    let raw_rate = timed("raw rdkafka", count, warm, |n| {
        let raw = raw.clone();
        let (topic, payload, keys) = (&topic, &payload, &keys);
        async move {
            let mut pending = Vec::with_capacity(window);
            for i in 0..n {
                let record = FutureRecord::to(topic)
                    .key(&keys[i % keys.len()])
                    .payload(payload);
                pending.push(raw.send_result(record).map_err(|(e, _)| e)?);
                if pending.len() == window {
                    for d in pending.drain(..) {
                        d.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
            for d in pending {
                d.await?.map_err(|(e, _)| e)?;
            }
            anyhow::Ok(())
        }
    })
    .await?;

    let producer = Producer::new(&settings.kafka, Metrics::new("bench"))?;
    let feedline_rate = timed("feedline producer", count, warm, |n| {
        let producer = producer.clone();
        let (topic, payload, keys) = (&topic, &payload, &keys);
        async move {
            let mut pending = Vec::with_capacity(window);
            for i in 0..n {
                let msg = Outgoing::new(topic, Some(keys[i % keys.len()].as_bytes()), payload);
                pending.push(producer.enqueue(msg).await?);
                if pending.len() == window {
                    for d in pending.drain(..) {
                        d.acknowledged().await?;
                    }
                }
            }
            for d in pending {
                d.acknowledged().await?;
            }
            anyhow::Ok(())
        }
    })
    .await?;

    let java_rate = if perf_test.is_empty() {
        None
    } else {
        Some(kafka_perf_test(perf_test, settings, &topic, count, size)?)
    };

    println!();
    println!("produce, {count} messages of {size} B, acks=all, idempotent, lz4, linger 5 ms");
    println!("| producer | msgs/s | MB/s | ratio to raw rdkafka |");
    println!("|---|---:|---:|---:|");
    let mut rows = vec![
        ("raw rdkafka (baseline)", raw_rate),
        ("feedline producer", feedline_rate),
    ];
    if let Some(rate) = java_rate {
        rows.push(("kafka-producer-perf-test (Java client)", rate));
    }
    for (name, rate) in rows {
        println!(
            "| {name} | {rate:.0} | {:.1} | {:.2} |",
            rate * size as f64 / 1e6,
            rate / raw_rate
        );
    }
    Admin::new(&settings.kafka)?
        .delete_topics(&[&topic])
        .await?;
    Ok(())
}

/// Runs Kafka's own `ProducerPerformance` with the same size, acks, idempotence,
/// compression and linger, and returns its records/s.
fn kafka_perf_test(
    command: &str,
    settings: &Settings,
    topic: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<f64> {
    let mut parts = command.split_whitespace();
    let program = parts.next().context("empty perf-test command")?;
    let kafka = &settings.kafka;
    let output = std::process::Command::new(program)
        .args(parts)
        .args(["--topic", topic, "--num-records", &count.to_string()])
        .args(["--record-size", &size.to_string(), "--throughput", "-1"])
        .arg("--producer-props")
        .arg(format!("bootstrap.servers={}", kafka.bootstrap_servers))
        .args(["acks=all", "enable.idempotence=true"])
        .arg(format!(
            "compression.type={}",
            kafka
                .producer_config()
                .get("compression.type")
                .unwrap_or("none")
        ))
        .arg(format!("linger.ms={}", kafka.linger_ms))
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The summary line: "N records sent, R records/sec (M MB/sec), ..."
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))
        .with_context(|| {
            format!(
                "no summary from perf test: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let rate = summary
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .with_context(|| format!("cannot parse perf test summary: {summary}"))?;
    eprintln!("kafka-producer-perf-test: {summary}");
    Ok(rate)
}

/// Runs a warm-up of `warm` messages, then `count` timed; returns messages per second.
async fn timed<F, Fut>(name: &str, count: usize, warm: usize, run: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    run(warm).await?;
    let started = Instant::now();
    run(count).await?;
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    let rate = count as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{name}: {count} messages in {:.2} s = {rate:.0} msgs/s",
        elapsed.as_secs_f64()
    );
    Ok(rate)
}
