//! The gateway's client of order-view, the query side: one-off look-ups (the customer of an
//! order to cancel, the state a waiter waits for; see [`crate::waiters`]) and the proxied
//! reads, each sent to one of order-view's replicas (see [`crate::upstream`]).

use std::time::Duration;

use feedline::telemetry::{TRACEPARENT, Traceparent};
use serde_json::Value;

use crate::upstream::{Outcome, Upstream};

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

#[derive(Debug, Clone)]
pub struct OrderView {
    http: reqwest::Client,
    upstream: Upstream,
    timeout: Duration,
}

/// Attempts per request: the first, and one retry on another replica.
const ATTEMPTS: usize = 2;

impl OrderView {
    /// `timeout` bounds one query; feed subscriptions stream for as long as they are read.
    pub fn new(upstream: Upstream, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            // A proxy passes order-view's redirects on rather than following them.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("static reqwest configuration");
        OrderView {
            http,
            upstream,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// `GET path_and_query` (which starts with `/`) on a replica, the request shaped by
    /// `build` (headers, a timeout). Every GET is idempotent, so one that failed (no answer,
    /// a timeout, a server error, a 503 asking for time) is sent once more, to another
    /// replica when there is one. Returns the answer once its head arrived (the body, a
    /// feed's included, streams from then on and is never retried); a server error that
    /// the retry did not cure is returned as it came. `affinity` keeps requests with the
    /// same key on one replica while it serves (a live feed: see [`crate::upstream::Balancer::pick`]).
    pub async fn get(
        &self,
        path_and_query: &str,
        affinity: Option<&str>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut failed: Option<String> = None;
        let mut attempt = 1;
        loop {
            let Some(pick) = self.upstream.pick(failed.as_deref(), affinity) else {
                return Err(UpstreamError::Unreachable("no order-view replica".into()));
            };
            let url = format!("{}{path_and_query}", pick.url());
            let result = build(traced(self.http.get(url))).send().await;
            let (outcome, kind) = classify(&result);
            let replica = pick.url().to_owned();
            pick.finish(outcome, kind);
            if outcome == Outcome::Success || attempt == ATTEMPTS {
                return result.map_err(UpstreamError::from_reqwest);
            }
            tracing::debug!(
                replica,
                kind,
                path = path_and_query,
                "order-view attempt failed, retrying on another replica"
            );
            self.upstream.retried(&replica);
            failed = Some(replica);
            attempt += 1;
        }
    }

    /// `GET path` as JSON; `None` on 404.
    pub async fn get_json(&self, path: &str) -> Result<Option<Value>, UpstreamError> {
        let response = self
            .get(path, None, |request| {
                request
                    .header(reqwest::header::ACCEPT, "application/json")
                    .timeout(self.timeout)
            })
            .await?;
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
}

/// The call continues the current request's trace in order-view.
fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match Traceparent::current() {
        Some(tp) => request.header(TRACEPARENT, tp.as_str()),
        None => request,
    }
}

/// What an attempt says about the replica, and the kind of failure for the metrics.
fn classify(result: &Result<reqwest::Response, reqwest::Error>) -> (Outcome, &'static str) {
    match result {
        Err(e) if e.is_timeout() => (Outcome::Failure, "timeout"),
        Err(_) => (Outcome::Failure, "unreachable"),
        Ok(response) => status_outcome(
            response.status(),
            response
                .headers()
                .contains_key(reqwest::header::RETRY_AFTER),
        ),
    }
}

/// A 503 with `Retry-After` is order-view asking for time (it is starting or catching
/// up): another replica may answer, but this one is not broken. Any other server error is
/// a failure; everything else (a 404 included) is an answer.
fn status_outcome(status: reqwest::StatusCode, retry_after: bool) -> (Outcome, &'static str) {
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && retry_after {
        (Outcome::Busy, "busy")
    } else if status.is_server_error() {
        (Outcome::Failure, "server_error")
    } else {
        (Outcome::Success, "")
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

    #[test]
    fn what_an_answer_says_about_a_replica() {
        use reqwest::StatusCode;
        let outcome = |status: u16, retry_after| {
            status_outcome(StatusCode::from_u16(status).unwrap(), retry_after).0
        };
        assert_eq!(outcome(200, false), Outcome::Success);
        assert_eq!(outcome(404, false), Outcome::Success);
        assert_eq!(outcome(400, true), Outcome::Success);
        assert_eq!(outcome(503, true), Outcome::Busy);
        assert_eq!(outcome(503, false), Outcome::Failure);
        assert_eq!(outcome(500, false), Outcome::Failure);
        assert_eq!(outcome(502, true), Outcome::Failure);
    }
}
