//! `e2e`: how long an order takes from the gateway's 202 to the live feed, at a fixed rate
//! and then in a closed loop, beside raw Kafka's two hops and Kafka's own latency tool on
//! the same broker in the same run. This measures; [`super::report`] writes it up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use feedline::Settings;
use serde_json::Value;

use super::drive::{Phase, Shape, drive};
use super::feed::{stop_feed, watch_feed};
use super::hops::{Hops, kafka_hops};
use super::running::{Running, start};
use crate::Load;
use crate::common::RunResult;
use crate::kafka_latency::ToolLatency;

/// Messages Kafka's EndToEndLatency tool sends in a full run, one round trip at a time:
/// enough that its p99.9 is not the first, JVM-warming message, few enough to take seconds.
const LATENCY_TOOL_MESSAGES: usize = 3_000;
/// The mean `OrderEvent` envelope, as in the produce scenario.
pub(super) const RECORD_BYTES: usize = 213;

/// What one e2e run measured.
#[derive(Debug)]
pub(super) struct E2e {
    pub(super) rate: f64,
    pub(super) seconds: f64,
    pub(super) warm: f64,
    pub(super) clients: usize,
    pub(super) hops: Hops,
    pub(super) tool: anyhow::Result<ToolLatency>,
    pub(super) fixed: Phase,
    pub(super) max: Phase,
    /// 503 answers retried, services that died, what to note about the feed client.
    pub(super) refused: u64,
    pub(super) died: Vec<String>,
    pub(super) feed_state: Option<String>,
    pub(super) effective: BTreeMap<String, Value>,
}

pub async fn e2e(
    settings: &Settings,
    load: &Load,
    clients: usize,
    latency_tool: &str,
) -> anyhow::Result<RunResult> {
    let rate = load
        .rate
        .unwrap_or(if load.smoke { 100.0 } else { 1_000.0 });
    let seconds = load.duration.unwrap_or(if load.smoke { 3 } else { 30 }) as f64;
    let warm = load.warmup.unwrap_or(if load.smoke { 1 } else { 5 }) as f64;
    let (hops, tool) = baselines(settings, load, rate, seconds, latency_tool).await?;
    let run = Arc::new(start(settings, load).await?);
    let effective = run.effective.clone();
    let outcome = phases(&run, load, rate, seconds, warm, clients).await;
    let refused = run.refused.load(Ordering::Relaxed);
    let died = Arc::into_inner(run)
        .context("run still shared")?
        .stop()
        .await;
    let (fixed, max, feed_state) = outcome?;
    Ok(super::report::e2e(
        load,
        E2e {
            rate,
            seconds,
            warm,
            clients,
            hops,
            tool,
            fixed,
            max,
            refused,
            died,
            feed_state,
            effective,
        },
    ))
}

/// Raw Kafka's two hops at the same rate, and Kafka's EndToEndLatency tool (skipped in a
/// smoke run or without a command), with the services' client settings.
async fn baselines(
    settings: &Settings,
    load: &Load,
    rate: f64,
    seconds: f64,
    latency_tool: &str,
) -> anyhow::Result<(Hops, anyhow::Result<ToolLatency>)> {
    let client_settings = settings.with_overrides(&load.service_config)?;
    let hops = kafka_hops(&client_settings, rate, seconds.min(10.0) + 1.0).await?;
    eprintln!(
        "kafka two hops at {rate}/s: one hop p50 {:.2} p99 {:.2} ms; two hops p50 {:.2} p99 {:.2} ms",
        hops.one.p50, hops.one.p99, hops.two.p50, hops.two.p99
    );
    // The JVM takes seconds to start and the tool many more to run: CI proves the Rust paths.
    let tool = if load.smoke {
        Err(anyhow::anyhow!("smoke run"))
    } else if latency_tool.is_empty() {
        Err(anyhow::anyhow!("no command given (--latency-tool)"))
    } else {
        crate::kafka_latency::run(
            latency_tool,
            &client_settings,
            LATENCY_TOOL_MESSAGES,
            RECORD_BYTES,
        )
        .await
    };
    match &tool {
        Ok(t) => eprintln!(
            "kafka EndToEndLatency, {} messages one at a time: avg {:.2}, p50 {}, p99 {}, p99.9 {} ms",
            t.messages, t.avg, t.p50, t.p99, t.p999
        ),
        Err(e) => eprintln!("kafka EndToEndLatency skipped: {e:#}"),
    }
    Ok((hops, tool))
}

/// The fixed-rate phase, then a closed loop of `clients` for half as long.
async fn phases(
    run: &Arc<Running>,
    load: &Load,
    rate: f64,
    seconds: f64,
    warm: f64,
    clients: usize,
) -> anyhow::Result<(Phase, Phase, Option<String>)> {
    let customers = Arc::new(run.customers(if load.smoke { 4 } else { 100 }).await?);
    let finals = Arc::new(AtomicU64::new(0));
    let (seen, reader) = watch_feed(run, finals).await?;
    let fixed = Shape {
        rate: Some(rate),
        clients: 0,
        warm,
        seconds,
    };
    let fixed = drive(run, &customers, &seen, "e2e fixed rate", fixed).await?;
    let closed = Shape {
        rate: None,
        clients,
        warm: warm.min(2.0),
        seconds: closed_loop_seconds(seconds),
    };
    let max = drive(run, &customers, &seen, "e2e closed loop", closed).await?;
    let feed_state = stop_feed(reader, &seen).await;
    Ok((fixed, max, feed_state))
}

/// The closed loop runs half as long as the fixed rate, at least 2 s.
pub(super) fn closed_loop_seconds(seconds: f64) -> f64 {
    (seconds / 2.0).max(2.0)
}
