//! One load phase against the gateway: orders placed in an open or a closed loop, each
//! timed from its 202 to its changes on the feed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::feed::Seen;
use super::running::Running;
use crate::common::{self, Meter, Percentiles};

/// What one load phase against the gateway measured.
#[derive(Debug)]
pub(super) struct Phase {
    pub(super) accepted: u64,
    pub(super) seconds: f64,
    /// POST → 202, from the scheduled time in the open loop.
    pub(super) accept: Percentiles,
    /// 202 → the order's first change (PENDING) on the feed.
    pub(super) visible: Percentiles,
    /// 202 → the order's final state (APPROVED/REJECTED) on the feed.
    pub(super) settled: Percentiles,
    pub(super) missing: usize,
    pub(super) errors: u64,
    pub(super) accept_series: Vec<f64>,
}

/// Accept time by order id, and the POST → 202 latencies.
type Accepted = (HashMap<String, Instant>, Histogram<u64>);

/// How a load phase offers its orders.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Open loop at this many orders per second; `None` is a closed loop of `clients`.
    pub(super) rate: Option<f64>,
    pub(super) clients: usize,
    /// Seconds of warm-up (not measured), then seconds measured.
    pub(super) warm: f64,
    pub(super) seconds: f64,
}

/// Drives `POST /orders` for `seconds` after `warm` seconds of warm-up: at `rate` per second
/// (open loop) or from `clients` concurrent clients (closed loop); then waits for the feed.
pub(super) async fn drive(
    run: &Arc<Running>,
    customers: &Arc<Vec<String>>,
    seen: &Arc<Mutex<Seen>>,
    label: &str,
    shape: Shape,
) -> anyhow::Result<Phase> {
    let Shape {
        rate,
        clients,
        warm,
        seconds,
    } = shape;
    let accepted: Arc<Mutex<Accepted>> =
        Arc::new(Mutex::new((HashMap::new(), common::histogram())));
    let errors = Arc::new(AtomicU64::new(0));
    let meter = Arc::new(Meter::start(label));
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs_f64(warm);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let one = {
        let (run, customers, accepted, errors, meter) = (
            run.clone(),
            customers.clone(),
            accepted.clone(),
            errors.clone(),
            meter.clone(),
        );
        move |i: usize, at: Instant| {
            let (run, customers, accepted, errors, meter) = (
                run.clone(),
                customers.clone(),
                accepted.clone(),
                errors.clone(),
                meter.clone(),
            );
            async move {
                match run.place(&customers[i % customers.len()]).await {
                    Ok(id) => {
                        let now = Instant::now();
                        if at >= measure_from {
                            meter.add(1);
                            let mut a = accepted.lock().expect("poisoned");
                            common::record(&mut a.1, now - at);
                            a.0.insert(id, now);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  order failed: {e:#}");
                        }
                    }
                }
            }
        }
    };
    offer(rate, clients, t0, end, one).await;
    let accept_series = meter.finish();
    let seconds = (Instant::now().min(end) - measure_from)
        .as_secs_f64()
        .max(1e-3);
    let (ids, accept_hist) = {
        let a = accepted.lock().expect("poisoned");
        (a.0.clone(), a.1.clone())
    };
    let (visible, settled, missing) = follow(&ids, seen).await;
    let phase = Phase {
        accepted: ids.len() as u64,
        seconds,
        accept: Percentiles::of(&accept_hist),
        visible,
        settled,
        missing,
        errors: errors.load(Ordering::Relaxed),
        accept_series,
    };
    eprintln!(
        "{label}: {} accepted in {:.1} s ({:.0}/s); 202 → feed p50 {:.2} p99 {:.2} ms; → final p99 {:.2} ms; {} never settled, {} errors",
        phase.accepted,
        phase.seconds,
        phase.accepted as f64 / phase.seconds,
        phase.visible.p50,
        phase.visible.p99,
        phase.settled.p99,
        phase.missing,
        phase.errors
    );
    Ok(phase)
}

/// Places orders until `end` with `one(index, scheduled time)`: at `rate` a second from
/// `t0` (open loop: an order's latency counts from its scheduled time), or from `clients`
/// concurrent clients, each placing its next order when the last was answered.
async fn offer<F, Fut>(rate: Option<f64>, clients: usize, t0: Instant, end: Instant, one: F)
where
    F: Fn(usize, Instant) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    match rate {
        Some(rate) => {
            let mut i = 0usize;
            loop {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                tasks.spawn(one(i, at));
                i += 1;
                while tasks.try_join_next().is_some() {}
            }
        }
        None => {
            for c in 0..clients {
                let one = one.clone();
                tasks.spawn(async move {
                    let mut i = c;
                    loop {
                        let at = Instant::now();
                        if at >= end {
                            return;
                        }
                        one(i, at).await;
                        i += clients;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Lets the saga finish for the orders accepted at `ids` (up to 30 s), then times each one's
/// first and final change on the feed from its 202; the orders never seen settled count as
/// missing.
async fn follow(
    ids: &HashMap<String, Instant>,
    seen: &Mutex<Seen>,
) -> (Percentiles, Percentiles, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = {
            let s = seen.lock().expect("poisoned");
            ids.keys().filter(|id| !s.last.contains_key(*id)).count()
        };
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut visible, mut settled) = (common::histogram(), common::histogram());
    let mut missing = 0;
    let s = seen.lock().expect("poisoned");
    for (id, at) in ids {
        match (s.first.get(id), s.last.get(id)) {
            (Some(first), Some(last)) => {
                common::record(&mut visible, first.saturating_duration_since(*at));
                common::record(&mut settled, last.saturating_duration_since(*at));
            }
            _ => missing += 1,
        }
    }
    (
        Percentiles::of(&visible),
        Percentiles::of(&settled),
        missing,
    )
}
