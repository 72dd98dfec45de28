//! Waiting for a command's outcome (`?wait`, `Prefer: wait`), for any number of requests,
//! over ONE subscription to order-view's live feed.
//!
//! Each waiter registers the id it waits on (an order's or a customer's) and asks order-view
//! for the state with `GET`; then it sleeps until the feed carries an event naming that id,
//! and asks again. Events are only a doorbell: the `GET` answer is order-view's contract
//! for queries, so the gateway does not depend on the shape of feed events (any UUID in an
//! event's data rings the waiters of that id). Nothing is missed at the start: a waiter
//! registers before its first `GET`, and each time the feed (re)connects every waiter looks
//! again. While the feed is down, waiters poll with backoff.
//!
//! The subscription is opened by the first waiter and closed when the last one leaves, so
//! a gateway nobody waits on holds no feed. The number of waiters is capped: a request
//! that asks to wait when the cap is reached is refused (503) before its command is
//! published, never after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::orderview::{OrderView, WaitOutcome};

/// Poll intervals while there is no feed to ring the bell.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Even with a feed, look again this often: a safety net should an event go astray.
const RECHECK: Duration = Duration::from_secs(2);
/// Between attempts to open the feed.
const RECONNECT: Duration = Duration::from_millis(500);
/// How often the feed task looks whether anyone still waits, when the feed is quiet.
const IDLE_CHECK: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Waiters {
    view: OrderView,
    max: usize,
    metrics: Arc<GatewayMetrics>,
    shutdown: CancellationToken,
    state: Mutex<State>,
    /// Whether the feed is open now: waiters poll when it is not.
    connected: AtomicBool,
    next_id: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Waiters by the (lower-case) id they wait on.
    by_key: HashMap<String, Vec<(u64, Arc<Notify>)>>,
    count: usize,
    /// Whether the feed task runs.
    running: bool,
}

impl Waiters {
    pub fn new(
        view: OrderView,
        max: usize,
        metrics: Arc<GatewayMetrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Waiters {
            view,
            max,
            metrics,
            shutdown,
            state: Mutex::new(State::default()),
            connected: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        })
    }

    /// The 503 for a request that asks to wait while the cap is reached. Checked before
    /// the command is published, so a refused request has changed nothing.
    pub fn check_room(&self) -> Result<(), ApiError> {
        if self.lock().count < self.max {
            return Ok(());
        }
        self.metrics.waits_refused.inc();
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waiters",
            "too many requests are waiting for outcomes; retry later, or send without wait and follow status_url",
        )
        .field("wait")
        .header(header::RETRY_AFTER, "1"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("waiters lock")
    }

    /// Registers a waiter on `key`, starting the feed task if none runs; `None` when the
    /// cap was reached since [`Waiters::check_room`].
    fn register(self: &Arc<Self>, key: &str) -> Option<Registration> {
        let notify = Arc::new(Notify::new());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = key.to_ascii_lowercase();
        let mut state = self.lock();
        if state.count >= self.max {
            return None;
        }
        state
            .by_key
            .entry(key.clone())
            .or_default()
            .push((id, notify.clone()));
        state.count += 1;
        self.metrics.waiters.set(state.count as i64);
        if !state.running {
            state.running = true;
            tokio::spawn(self.clone().follow());
        }
        Some(Registration {
            waiters: self.clone(),
            key,
            id,
            notify,
        })
    }

    /// Waits until `GET path` answers with a representation for which `done` holds, the
    /// deadline passes, or shutdown. Upstream errors along the way are retried until the
    /// deadline: the command is already accepted, so waiting is a courtesy and never an
    /// error. A waiter over the cap (a race past [`Waiters::check_room`]) does not wait.
    pub async fn wait_until(
        self: &Arc<Self>,
        path: &str,
        key: &str,
        done: impl Fn(&Value) -> bool,
        deadline: Instant,
    ) -> WaitOutcome {
        let Some(registration) = self.register(key) else {
            self.metrics.waits_refused.inc();
            return WaitOutcome::TimedOut;
        };
        let work = async {
            let mut poll = POLL_FIRST;
            loop {
                match self.view.get_json(path).await {
                    Ok(Some(value)) if done(&value) => return value,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, path, "state check failed, retrying"),
                }
                let pause = if self.connected.load(Ordering::SeqCst) {
                    poll = POLL_FIRST;
                    RECHECK
                } else {
                    let pause = poll;
                    poll = (poll * 3 / 2).min(POLL_MAX);
                    pause
                };
                tokio::select! {
                    _ = registration.notify.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        };
        tokio::select! {
            value = work => WaitOutcome::Done(value),
            _ = tokio::time::sleep_until(deadline) => WaitOutcome::TimedOut,
            _ = self.shutdown.cancelled() => WaitOutcome::Shutdown,
        }
    }

    fn ring(&self, key: &str) {
        if let Some(waiters) = self.lock().by_key.get(key) {
            for (_, notify) in waiters {
                notify.notify_one();
            }
        }
    }

    fn ring_all(&self) {
        for waiters in self.lock().by_key.values() {
            for (_, notify) in waiters {
                notify.notify_one();
            }
        }
    }

    /// Whether the task should go on; when not, it is marked stopped under the same lock a
    /// new waiter takes, so a waiter either sees it running or starts another.
    fn keep_following(&self) -> bool {
        let mut state = self.lock();
        if state.count == 0 || self.shutdown.is_cancelled() {
            state.running = false;
            false
        } else {
            true
        }
    }

    /// The feed task: one subscription to the unfiltered feed while anyone waits.
    async fn follow(self: Arc<Self>) {
        while self.keep_following() {
            let response = self
                .view
                .get("/feed", Some("/feed"), |request| {
                    request.header(reqwest::header::ACCEPT, "text/event-stream")
                })
                .await;
            let mut stream = match response {
                Ok(r) if r.status().is_success() => r.bytes_stream(),
                Ok(r) => {
                    tracing::debug!(status = r.status().as_u16(), "no feed to wait on, polling");
                    self.pause().await;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no feed to wait on, polling");
                    self.pause().await;
                    continue;
                }
            };
            self.metrics.wait_feed_connections.inc();
            self.connected.store(true, Ordering::SeqCst);
            // What changed before the feed opened is seen by looking again.
            self.ring_all();
            let mut line = Vec::new();
            loop {
                let chunk = tokio::select! {
                    chunk = tokio::time::timeout(IDLE_CHECK, stream.next()) => chunk,
                    _ = self.shutdown.cancelled() => break,
                };
                match chunk {
                    Ok(Some(Ok(bytes))) => {
                        for &byte in bytes.iter() {
                            if byte == b'\n' {
                                self.ring_line(&line);
                                line.clear();
                            } else if line.len() < MAX_LINE {
                                line.push(byte);
                            }
                        }
                    }
                    // Ended or broke: reconnect (if anyone still waits).
                    Ok(_) => break,
                    Err(_) => {}
                }
                if self.lock().count == 0 {
                    break;
                }
            }
            self.connected.store(false, Ordering::SeqCst);
            self.ring_all();
        }
    }

    async fn pause(&self) {
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Rings the waiters of every id in a `data:` line.
    fn ring_line(&self, line: &[u8]) {
        if let Some(data) = line.strip_prefix(b"data:") {
            for id in uuids(data) {
                self.ring(&id);
            }
        }
    }
}

/// Longer lines are cut: a change names its ids near the start, and a snapshot (which
/// this subscription never asks for) is the only long event.
const MAX_LINE: usize = 64 * 1024;

/// The UUIDs (hyphenated, lower-cased) in `text`.
fn uuids(text: &[u8]) -> Vec<String> {
    const LEN: usize = 36;
    let mut found = Vec::new();
    let mut i = 0;
    while i + LEN <= text.len() {
        let candidate = &text[i..i + LEN];
        let shaped = candidate.iter().enumerate().all(|(j, b)| match j {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
        if shaped {
            found.push(String::from_utf8_lossy(candidate).to_ascii_lowercase());
            i += LEN;
        } else {
            i += 1;
        }
    }
    found
}

/// A registered waiter, removed when dropped.
struct Registration {
    waiters: Arc<Waiters>,
    key: String,
    id: u64,
    notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.waiters.lock();
        if let Some(list) = state.by_key.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                state.by_key.remove(&self.key);
            }
        }
        state.count -= 1;
        self.waiters.metrics.waiters.set(state.count as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_uuid_of_a_line() {
        let line = br#"{"order_id":"5B0C6F6E-58a6-4a31-9d5e-2f1f1b2c0d11","customer_id":"00000000-0000-0000-0000-000000000001","x":"0000-nope"}"#;
        assert_eq!(
            uuids(line),
            [
                "5b0c6f6e-58a6-4a31-9d5e-2f1f1b2c0d11",
                "00000000-0000-0000-0000-000000000001"
            ]
        );
        assert!(uuids(b"keep-alive").is_empty());
        assert!(uuids(b"").is_empty());
    }
}
