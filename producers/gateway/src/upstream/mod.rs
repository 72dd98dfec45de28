//! order-view's replicas behind the gateway: where they come from (the static
//! `gateway.order_view_url` list, or the platform's Directory), which one takes a request
//! ([`balancer`]: least outstanding requests, failing ones ejected for a while), and the
//! bookkeeping of each attempt.
//!
//! - [`balancer`]: the replica set and its decisions, without I/O
//! - [`source`]: the replica set kept up to date from the Directory

pub mod balancer;
pub mod source;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::metrics::GatewayMetrics;
pub use balancer::{Balancer, Change, EjectionPolicy, Outcome};
pub use source::Source;

/// The replicas of order-view and the state of each; cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    balancer: Mutex<Balancer>,
    metrics: Arc<GatewayMetrics>,
}

/// One replica as `/fleet` shows it: the gateway's side of the balancing.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaState {
    pub url: String,
    pub in_flight: usize,
    pub consecutive_failures: u32,
    /// Milliseconds until it is tried again, while ejected.
    pub ejected_for_ms: Option<u64>,
}

impl Upstream {
    /// Replicas `urls` to begin with (the static list, until a [`Source`] says otherwise).
    pub fn new(urls: &[String], policy: EjectionPolicy, metrics: Arc<GatewayMetrics>) -> Self {
        metrics.upstream_replicas.set(urls.len() as i64);
        Upstream {
            inner: Arc::new(Inner {
                balancer: Mutex::new(Balancer::new(urls, policy)),
                metrics,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Balancer> {
        self.inner.balancer.lock().expect("balancer lock")
    }

    /// Makes `urls` the replica set (see [`Balancer::set_replicas`]). A replica that left
    /// keeps its series: its last retries and failures must still reach a scrape.
    pub fn set_replicas(&self, urls: &[String]) {
        if self.lock().set_replicas(urls) {
            self.inner.metrics.upstream_replicas.set(urls.len() as i64);
            tracing::info!(replicas = ?urls, "order-view replicas changed");
        }
    }

    /// The replica for the next attempt, counted in flight until the [`Attempt`] ends;
    /// `avoid` is the replica a retry leaves, `affinity` a live feed's key (see
    /// [`Balancer::pick`]). `None` only when there is no replica at all.
    pub fn pick(&self, avoid: Option<&str>, affinity: Option<&str>) -> Option<Attempt> {
        let url = self.lock().pick(Instant::now(), avoid, affinity)?;
        Some(Attempt {
            upstream: self.clone(),
            url,
            done: false,
        })
    }

    /// Counts a retry that leaves `url`.
    pub fn retried(&self, url: &str) {
        self.inner
            .metrics
            .upstream_retries
            .with_label_values(&[url])
            .inc();
    }

    pub fn replicas(&self) -> Vec<ReplicaState> {
        let now = Instant::now();
        self.lock()
            .replicas()
            .iter()
            .map(|r| ReplicaState {
                url: r.url.clone(),
                in_flight: r.in_flight,
                consecutive_failures: r.consecutive_failures,
                ejected_for_ms: r
                    .ejected_until
                    .filter(|_| r.is_ejected(now))
                    .map(|until| (until - now).as_millis() as u64),
            })
            .collect()
    }

    fn finish(&self, url: &str, outcome: Outcome, kind: &str) {
        let now = Instant::now();
        let (change, ejected) = {
            let mut balancer = self.lock();
            let change = balancer.finish(url, outcome, now);
            (change, balancer.ejected(now))
        };
        let metrics = &self.inner.metrics;
        if outcome == Outcome::Failure {
            metrics
                .upstream_attempt_failures
                .with_label_values(&[url, kind])
                .inc();
        }
        if let Change::Ejected(length) = change {
            metrics.upstream_ejections.with_label_values(&[url]).inc();
            tracing::warn!(
                replica = url,
                seconds = length.as_secs(),
                "order-view replica ejected after failures in a row"
            );
        }
        metrics.upstream_ejected.set(ejected as i64);
    }
}

/// One request to one replica, in flight until [`Attempt::finish`] (or until dropped: a
/// request abandoned halfway, whose client went away, says nothing about the replica).
/// Callers finish it when the answer's head arrives: a live feed, which streams for hours,
/// would otherwise count as outstanding all along and starve its replica of reads.
#[derive(Debug)]
pub struct Attempt {
    upstream: Upstream,
    url: String,
    done: bool,
}

impl Attempt {
    /// The replica's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Counts how it ended; `kind` names a failure in the metrics (`unreachable`,
    /// `timeout`, `server_error`).
    pub fn finish(mut self, outcome: Outcome, kind: &str) {
        self.done = true;
        self.upstream.finish(&self.url, outcome, kind);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            self.upstream
                .lock()
                .finish(&self.url, Outcome::Abandoned, Instant::now());
        }
    }
}
