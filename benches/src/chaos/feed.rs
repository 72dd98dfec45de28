//! Feed clients: one SSE client per watched customer on `GET /feed?customer_id=` through the
//! gateway, reconnecting with `Last-Event-ID` whenever the stream ends (order-view or the
//! gateway killed, a `lagged` drop), as a browser's EventSource does. Every event it gets is
//! kept for the checks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::load::Client;
use crate::sse::SseParser;

/// How long a stream may stay silent before the client takes it for dead.
const SILENT_FOR: Duration = Duration::from_secs(30);

/// One SSE event as received.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeedEvent {
    /// The change number of the event's id (`<generation>-<seq>`): what the check compares
    /// with the change log.
    pub id: Option<i64>,
    /// The id as sent, which a reconnection hands back in `Last-Event-ID`.
    pub raw_id: Option<String>,
    pub kind: String,
    pub data: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Watched {
    pub customer: String,
    pub events: Vec<FeedEvent>,
    /// Connection attempts after the first: one per ended stream, and one per attempt that
    /// failed while the gateway or order-view was down.
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Starts a feed client for `customer`; it runs until `stop`.
pub fn watch(
    client: Arc<Client>,
    customer: String,
    stop: CancellationToken,
) -> (Arc<Mutex<Watched>>, tokio::task::JoinHandle<()>) {
    let watched = Arc::new(Mutex::new(Watched {
        customer: customer.clone(),
        ..Watched::default()
    }));
    let shared = watched.clone();
    let task = tokio::spawn(async move {
        let mut last_id: Option<String> = None;
        let mut first = true;
        loop {
            if !first {
                shared.lock().expect("poisoned").reconnects += 1;
                // A short pause between attempts: the gateway or order-view may be down
                // for seconds, and this loop must not spin on refused connections.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            first = false;
            let mut request = client
                .http
                .get(format!("{}/feed?customer_id={customer}", client.base))
                .bearer_auth(client.bearer().await);
            if let Some(id) = &last_id {
                request = request.header("Last-Event-ID", id.as_str());
            }
            let response = tokio::select! {
                _ = stop.cancelled() => return,
                r = request.send() => r,
            };
            let response = match response {
                Ok(r) if r.status() == 200 => r,
                Ok(r) => {
                    if r.status() == 401 {
                        let _ = client.refresh().await;
                    }
                    shared.lock().expect("poisoned").last_error =
                        Some(format!("GET /feed answered {}", r.status()));
                    continue;
                }
                Err(e) => {
                    shared.lock().expect("poisoned").last_error = Some(format!("{e}"));
                    continue;
                }
            };
            let mut stream = response.bytes_stream();
            let mut events = SseParser::default();
            loop {
                // order-view sends keep-alives, so a silent stream is a dead connection
                // (a peer killed without a FIN reaching us): connect again.
                let chunk = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = tokio::time::timeout(SILENT_FOR, stream.next()) => c,
                };
                let Ok(Some(Ok(chunk))) = chunk else { break };
                events.feed(&chunk, |event| {
                    if event.id.is_some() {
                        last_id = event.id.clone();
                    }
                    shared.lock().expect("poisoned").events.push(FeedEvent {
                        id: event.id.as_deref().and_then(change_number),
                        raw_id: event.id,
                        kind: event.kind,
                        data: event.data,
                    });
                });
            }
        }
    });
    (watched, task)
}

/// The change number of a feed id, `<generation>-<seq>`.
fn change_number(id: &str) -> Option<i64> {
    id.rsplit_once('-')?.1.parse().ok()
}
