//! How a Rust client (the CLI's demo, the benches) sends a command to the gateway: with a
//! fresh `Idempotency-Key`, and again with the same key when an attempt timed out or found
//! its first attempt still in flight, so the command takes effect once however many
//! attempts reach the gateway.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use uuid::Uuid;

use crate::idempotency::HEADER;

/// Attempts of one command before the last error or answer is returned.
const ATTEMPTS: u32 = 4;
/// One attempt's limit: above the gateway's longest wait (30 s) and admission hold.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(45);
/// A 409 without `Retry-After` (not the gateway's) is retried after this.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// Sends `request` (with a body that clones, such as JSON) as one command.
pub async fn send_command(request: RequestBuilder) -> reqwest::Result<Response> {
    let request = request
        .header(HEADER, Uuid::now_v7().to_string())
        .timeout(ATTEMPT_TIMEOUT);
    let mut attempt = 1;
    loop {
        let Some(this) = request.try_clone() else {
            // A streamed body cannot be sent twice: one attempt is all there is.
            return request.send().await;
        };
        let last = attempt == ATTEMPTS;
        attempt += 1;
        match this.send().await {
            Err(e) if e.is_timeout() && !last => {
                tracing::debug!(error = %e, "command timed out, retrying with the same key");
            }
            Ok(response) if response.status() == StatusCode::CONFLICT && !last => {
                let wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map_or(IN_FLIGHT_RETRY, Duration::from_secs);
                tokio::time::sleep(wait).await;
            }
            answer => return answer,
        }
    }
}
