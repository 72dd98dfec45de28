//! `saga`: the whole saga at full speed (orders/s reaching a final state, counted in the
//! order service's database) and the resident memory of each service. This measures;
//! [`super::report`] writes it up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::Settings;
use serde_json::Value;

use super::drive::{Phase, Shape, drive};
use super::feed::{stop_feed, watch_feed};
use super::memory::Memory;
use super::running::{Running, start};
use crate::Load;
use crate::common::{self, RunResult};
use crate::processes::Mode;

/// What one saga run measured.
#[derive(Debug)]
pub(super) struct Saga {
    pub(super) clients: usize,
    pub(super) seconds: f64,
    pub(super) warm: f64,
    pub(super) phase: Phase,
    /// Orders settled in the measured window, and its length in seconds.
    pub(super) settled: i64,
    pub(super) window_seconds: f64,
    pub(super) memory: Memory,
    /// When the services were idle (`started..idle_until`) and under load
    /// (`load_from..load_until`).
    pub(super) started: Instant,
    pub(super) idle_until: Instant,
    pub(super) load_from: Instant,
    pub(super) load_until: Instant,
    /// This process's resident memory before the services started.
    pub(super) rss_start: f64,
    pub(super) refused: u64,
    pub(super) died: Vec<String>,
    pub(super) feed_state: Option<String>,
    pub(super) effective: BTreeMap<String, Value>,
}

/// What the load phase gave back: the phase, settled orders and window seconds, the feed's
/// state, and when it went idle and under load.
type Loaded = (Phase, i64, f64, Option<String>, Instant, Instant);

pub async fn saga(settings: &Settings, load: &Load, clients: usize) -> anyhow::Result<RunResult> {
    let seconds = load.duration.unwrap_or(if load.smoke { 3 } else { 60 }) as f64;
    let warm = load.warmup.unwrap_or(if load.smoke { 1 } else { 5 }) as f64;
    let rss_start = common::rss_mib("self").unwrap_or(0.0);
    let run = Arc::new(start(settings, load).await?);
    let effective = run.effective.clone();
    let (memory, sampler) = Memory::sample(memory_targets(&run, load.services));
    let started = Instant::now();
    let outcome = under_load(&run, load, clients, warm, seconds).await;
    let load_until = Instant::now();
    sampler.abort();
    let _ = sampler.await;
    let refused = run.refused.load(Ordering::Relaxed);
    let died = Arc::into_inner(run)
        .context("run still shared")?
        .stop()
        .await;
    let (phase, settled, window_seconds, feed_state, idle_until, load_from) = outcome?;
    let memory = std::mem::take(&mut *memory.lock().expect("poisoned"));
    Ok(super::report::saga(
        load,
        Saga {
            clients,
            seconds,
            warm,
            phase,
            settled,
            window_seconds,
            memory,
            started,
            idle_until,
            load_from,
            load_until,
            rss_start,
            refused,
            died,
            feed_state,
            effective,
        },
    ))
}

/// Each service process by name and pid, then this process.
fn memory_targets(run: &Running, services: Mode) -> Vec<(String, String)> {
    let mut targets: Vec<(String, String)> = run
        .pids()
        .into_iter()
        .map(|(name, pid)| (name.to_owned(), pid.to_string()))
        .collect();
    targets.push((
        match services {
            Mode::Processes => "bench process (load generator, feed client; not a service)",
            Mode::InProcess => "the one process: all five services and the load generator",
        }
        .to_owned(),
        "self".to_owned(),
    ));
    targets
}

/// A moment idle, then the load: orders offered for `warm` + `seconds`, the settled orders
/// counted over the measured window only.
async fn under_load(
    run: &Arc<Running>,
    load: &Load,
    clients: usize,
    warm: f64,
    seconds: f64,
) -> anyhow::Result<Loaded> {
    // Idle: the services started and nothing asked of them yet.
    tokio::time::sleep(Duration::from_secs_f64(4.0 * common::MEMORY_SAMPLE_SECONDS)).await;
    let idle_until = Instant::now();
    let customers = Arc::new(run.customers(if load.smoke { 4 } else { 200 }).await?);
    let finals = Arc::new(AtomicU64::new(0));
    let (seen, reader) = watch_feed(run, finals).await?;
    let window = {
        let run = run.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(warm)).await;
            let (before, t0) = (run.settled().await?, Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            let after = run.settled().await?;
            anyhow::Ok((after - before, t0.elapsed().as_secs_f64()))
        })
    };
    // Under load: from the first order until the backlog settled (or drive gave up waiting
    // for it); what the services hold then is what load costs them.
    let load_from = Instant::now();
    let shape = Shape {
        rate: load.rate,
        clients,
        warm,
        seconds,
    };
    let phase = drive(run, &customers, &seen, "saga", shape).await?;
    let (settled, window_seconds) = window.await??;
    let feed_state = stop_feed(reader, &seen).await;
    Ok((
        phase,
        settled,
        window_seconds,
        feed_state,
        idle_until,
        load_from,
    ))
}
