//! `feedline-bench`: load tests against a running broker. Every scenario measures a baseline
//! in the same run, because these machines are noisy: ratios hold where absolutes drift.
//!
//! Example: cargo run --release -p feedline-benches -- produce --count 200000 --size 200

use std::time::{Duration, Instant};

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
        } => produce(&settings, count, size, window).await,
    }
}

async fn produce(
    settings: &Settings,
    count: usize,
    size: usize,
    window: usize,
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

    println!();
    println!("| scenario | msgs/s | MB/s | ratio to raw rdkafka |");
    println!("|---|---:|---:|---:|");
    for (name, rate) in [
        ("raw rdkafka (baseline)", raw_rate),
        ("feedline producer", feedline_rate),
    ] {
        println!(
            "| produce {size} B, acks=all, idempotent | {name}: {rate:.0} | {:.1} | {:.2} |",
            rate * size as f64 / 1e6,
            rate / raw_rate
        );
    }
    Admin::new(&settings.kafka)?
        .delete_topics(&[&topic])
        .await?;
    Ok(())
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
