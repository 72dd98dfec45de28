//! The gateway's client of order-view, the query side: one-off look-ups (the customer of an
//! order to cancel) and waiting for a command's outcome.
//!
//! Waiting subscribes to order-view's live feed filtered by the id, but uses each feed
//! event only as a doorbell and asks `GET` for the state: the `GET` answer is order-view's
//! contract for queries, so the gateway does not depend on the shape of feed events, and
//! an event that arrived before the subscription cannot be missed because the state is
//! read after subscribing. Without a feed (or if it drops) the state is polled with backoff.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a call to order-view failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("order-view is unreachable: {0}")]
    Unreachable(String),
    #[error("order-view did not answer in time")]
    Timeout,
    #[error("order-view answered {0}")]
    Status(u16),
    #[error("order-view's answer is not JSON: {0}")]
    BadBody(String),
}

impl UpstreamError {
    pub fn from_reqwest(error: reqwest::Error) -> Self {
        if error.is_timeout() {
            UpstreamError::Timeout
        } else {
            UpstreamError::Unreachable(error.to_string())
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => "unreachable",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Status(_) => "status",
            UpstreamError::BadBody(_) => "bad_body",
        }
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum WaitOutcome {
    /// The state matched; order-view's representation of it.
    Done(Value),
    TimedOut,
    /// The gateway is shutting down: answer now rather than hold the drain.
    Shutdown,
}

impl WaitOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            WaitOutcome::Done(_) => "completed",
            WaitOutcome::TimedOut => "timeout",
            WaitOutcome::Shutdown => "shutdown",
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Poll intervals when there is no feed to ring the bell.
const POLL_FIRST: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Even with a feed, look again this often: a safety net should an event go astray.
const RECHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct OrderView {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl OrderView {
    /// `timeout` bounds one query; feed subscriptions stream for as long as they are read.
    pub fn new(base: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // A proxy passes order-view's redirects on rather than following them.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("static reqwest configuration");
        OrderView {
            http,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The upstream URL of `path_and_query` (which starts with `/`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// `GET path` as JSON; `None` on 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<Value>, UpstreamError> {
        let response = self
            .http
            .get(self.url(path))
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(UpstreamError::from_reqwest)?;
        match response.status().as_u16() {
            404 => Ok(None),
            200..=299 => response
                .json()
                .await
                .map(Some)
                .map_err(|e| UpstreamError::BadBody(e.to_string())),
            status => Err(UpstreamError::Status(status)),
        }
    }

    /// The live feed filtered by `query` (`order_id=...`), or `None` if order-view does
    /// not offer it; the caller then polls.
    async fn subscribe(&self, query: &str) -> Option<ByteStream> {
        let response = self
            .http
            .get(self.url(&format!("/feed?{query}")))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await;
        // No request timeout: reqwest's would cut the stream too. The caller's deadline
        // bounds the whole wait, connecting included.
        match response {
            Ok(r) if r.status().is_success() => Some(Box::pin(r.bytes_stream())),
            Ok(r) => {
                tracing::debug!(
                    status = r.status().as_u16(),
                    query,
                    "no feed to wait on, polling"
                );
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, query, "no feed to wait on, polling");
                None
            }
        }
    }

    /// Waits until `GET path` answers with a representation for which `done` holds, the
    /// deadline passes, or `shutdown` is cancelled. Upstream errors along the way are
    /// retried until the deadline: the command is already accepted, so waiting is a
    /// courtesy and never an error.
    pub async fn wait_until(
        &self,
        path: &str,
        feed_query: &str,
        done: impl Fn(&Value) -> bool,
        deadline: Instant,
        shutdown: &CancellationToken,
    ) -> WaitOutcome {
        let work = async {
            // Subscribe first, then read: a change between the two is seen either way.
            let mut feed = self.subscribe(feed_query).await;
            let mut poll = POLL_FIRST;
            loop {
                match self.get_json(path).await {
                    Ok(Some(value)) if done(&value) => return value,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, path, "state check failed, retrying"),
                }
                match feed.as_mut() {
                    Some(stream) => {
                        tokio::select! {
                            chunk = stream.next() => {
                                if !matches!(chunk, Some(Ok(_))) {
                                    // Feed ended or broke: fall back to polling.
                                    feed = None;
                                }
                            }
                            _ = tokio::time::sleep(RECHECK) => {}
                        }
                    }
                    None => {
                        tokio::time::sleep(poll).await;
                        poll = (poll * 3 / 2).min(POLL_MAX);
                    }
                }
            }
        };
        tokio::select! {
            value = work => WaitOutcome::Done(value),
            _ = tokio::time::sleep_until(deadline) => WaitOutcome::TimedOut,
            _ = shutdown.cancelled() => WaitOutcome::Shutdown,
        }
    }
}

/// A string field of order-view's representation, at the top level or under `nested`
/// (`{"order": {...}}`), so either shape of answer works.
pub fn field<'a>(value: &'a Value, nested: &str, name: &str) -> Option<&'a Value> {
    value
        .get(name)
        .or_else(|| value.get(nested).and_then(|v| v.get(name)))
}

/// An order's status, upper-cased.
pub fn order_status(value: &Value) -> Option<String> {
    field(value, "order", "status")
        .and_then(Value::as_str)
        .map(str::to_ascii_uppercase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_at_the_top_or_nested() {
        assert_eq!(
            order_status(&json!({"status": "approved"})).as_deref(),
            Some("APPROVED")
        );
        assert_eq!(
            order_status(&json!({"order": {"status": "REJECTED"}})).as_deref(),
            Some("REJECTED")
        );
        assert_eq!(order_status(&json!({"state": "x"})), None);
    }
}
