//! The bench's client of the live feed (`GET /feed`, server-sent events): when each order
//! first showed and when in a final state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;

use super::running::Running;
use crate::sse::SseParser;

/// When each order first appeared on the feed, and when in a final state.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) first: HashMap<String, Instant>,
    pub(super) last: HashMap<String, Instant>,
    /// Times the feed dropped this client (too far behind) and it resumed from its last id.
    resumed: u64,
}

impl Seen {
    /// Records an `order` event's data (the order's row) that arrived at `now`.
    fn order(&mut self, data: &str, now: Instant, finals: &AtomicU64) {
        #[derive(serde::Deserialize)]
        struct OrderRow<'a> {
            id: &'a str,
            status: &'a str,
        }
        let Ok(row) = serde_json::from_str::<OrderRow>(data) else {
            return;
        };
        self.first.entry(row.id.to_owned()).or_insert(now);
        if row.status != "PENDING" && !self.last.contains_key(row.id) {
            self.last.insert(row.id.to_owned(), now);
            finals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens `GET /feed`, resuming after `last_id` when there is one.
async fn open_feed(run: &Running, last_id: Option<&str>) -> Result<reqwest::Response, String> {
    let mut request = run
        .http
        .get(format!("{}/feed", run.base))
        .bearer_auth(&run.bearer);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id);
    }
    match request.send().await {
        Ok(response) if response.status() == 200 => Ok(response),
        Ok(response) => Err(format!("GET /feed answered {}", response.status())),
        Err(e) => Err(format!("GET /feed failed: {e}")),
    }
}

/// Reads the whole live feed through the gateway, timing each order's changes on arrival.
/// When the feed drops the client (it fell behind), the client reconnects with
/// `Last-Event-ID` as any SSE client does, and gets what it missed; the task ends only
/// when a reconnect fails.
pub(super) async fn watch_feed(
    run: &Arc<Running>,
    finals: Arc<AtomicU64>,
) -> anyhow::Result<(Arc<Mutex<Seen>>, tokio::task::JoinHandle<String>)> {
    let first = open_feed(run, None).await.map_err(anyhow::Error::msg)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let run = run.clone();
    let reader = tokio::spawn(async move {
        let mut response = first;
        let mut last_id: Option<String> = None;
        loop {
            let mut stream = response.bytes_stream();
            let mut events = SseParser::default();
            while let Some(Ok(chunk)) = stream.next().await {
                let now = Instant::now();
                events.feed(&chunk, |event| {
                    if event.id.is_some() {
                        last_id = event.id;
                    }
                    if event.kind == "order" {
                        shared
                            .lock()
                            .expect("poisoned")
                            .order(&event.data, now, &finals);
                    }
                });
            }
            shared.lock().expect("poisoned").resumed += 1;
            response = match open_feed(&run, last_id.as_deref()).await {
                Ok(response) => response,
                Err(e) => return format!("the feed ended and could not be resumed: {e}"),
            };
        }
    });
    Ok((seen, reader))
}

/// Stops the feed client; what to note about it, if anything.
pub(super) async fn stop_feed(
    reader: tokio::task::JoinHandle<String>,
    seen: &Mutex<Seen>,
) -> Option<String> {
    let ended = if reader.is_finished() {
        reader.await.ok()
    } else {
        reader.abort();
        // Awaited so that its handle on the running system is gone before the system stops.
        let _ = reader.await;
        None
    };
    match (ended, seen.lock().expect("poisoned").resumed) {
        (Some(why), _) => Some(format!(
            "The feed client stopped early ({why}): the feed latencies above cover only what arrived before that."
        )),
        (None, 0) => None,
        (None, n) => Some(format!(
            "order-view dropped the bench's feed client {n} time(s), more than `feed_client_buffer` changes behind (it shares the 2 cores with the system); it resumed each time with `Last-Event-ID`, so the orders of those moments show late on the feed."
        )),
    }
}
