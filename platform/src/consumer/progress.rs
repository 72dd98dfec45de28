//! What the consumer runtime tells the health endpoints: whether it is making progress
//! (live) and whether it can do its work now (ready).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::context::FeedlineContext;
use crate::health::Health;

/// Shared by the runtime (which updates it) and the health checks (which read it).
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    context: FeedlineContext,
    epoch: Instant,
    /// Milliseconds after `epoch` at which the handler attempt in progress started, plus one
    /// (0: no attempt in progress).
    attempt_started: AtomicU64,
    /// Milliseconds after `epoch` of the fetch thread's last poll, plus one (0: none yet).
    last_poll: AtomicU64,
    /// Set while a batch waits for a dependency to come back.
    waiting: AtomicBool,
    stall: Duration,
}

impl Progress {
    pub(crate) fn new(context: FeedlineContext, stall: Duration) -> Self {
        Progress {
            inner: Arc::new(Inner {
                context,
                epoch: Instant::now(),
                attempt_started: AtomicU64::new(0),
                last_poll: AtomicU64::new(0),
                waiting: AtomicBool::new(false),
                stall,
            }),
        }
    }

    fn now(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn attempt_started(&self) {
        self.inner
            .attempt_started
            .store(self.now(), Ordering::Release);
    }

    pub(crate) fn attempt_ended(&self) {
        self.inner.attempt_started.store(0, Ordering::Release);
    }

    pub(crate) fn polled(&self) {
        self.inner.last_poll.store(self.now(), Ordering::Release);
    }

    pub(crate) fn waiting(&self, waiting: bool) {
        self.inner.waiting.store(waiting, Ordering::Release);
    }

    fn since(&self, stamp: &AtomicU64) -> Option<Duration> {
        match stamp.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(self.now().saturating_sub(at))),
        }
    }

    /// Live unless one handler attempt, or the fetch thread's wait between polls, has taken
    /// longer than the stall timeout: retries do not count against it (each is progress),
    /// a hung await does.
    pub fn live(&self) -> Result<(), String> {
        let stall = self.inner.stall;
        if let Some(busy) = self.since(&self.inner.attempt_started)
            && busy > stall
        {
            return Err(format!(
                "one batch has been in the handler for {} s",
                busy.as_secs()
            ));
        }
        if let Some(quiet) = self.since(&self.inner.last_poll)
            && quiet > stall
        {
            return Err(format!(
                "the fetch thread has not polled for {} s",
                quiet.as_secs()
            ));
        }
        Ok(())
    }

    /// Ready when Kafka is reachable, the group joined, the lag known, and no batch is
    /// waiting for a dependency.
    pub fn ready(&self) -> Result<(), String> {
        self.inner.context.kafka_reachable()?;
        self.inner.context.lag_known()?;
        if self.inner.waiting.load(Ordering::Acquire) {
            return Err("a batch is waiting for a dependency to come back".to_owned());
        }
        Ok(())
    }

    /// The assigned partitions and their total lag (see [`FeedlineContext::assignment`]).
    pub fn assignment(&self) -> (Vec<String>, Option<i64>) {
        self.inner.context.assignment()
    }

    /// Adds this consumer's checks to `health`, under `name`.
    pub fn register(&self, health: &Health, name: &str) {
        let live = self.clone();
        health.live_check(name, move || live.live());
        let ready = self.clone();
        health.ready_check(name, move || std::future::ready(ready.ready()));
    }
}
