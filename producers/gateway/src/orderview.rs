//! The gateway's client of order-view, the query side: one-off look-ups (the customer of an
//! order to cancel, the state a waiter waits for; see [`crate::waiters`]).

use std::time::Duration;

use serde_json::Value;

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
