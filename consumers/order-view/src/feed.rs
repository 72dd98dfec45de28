//! The live feed hub: every committed change goes to a tokio broadcast channel; each
//! subscriber gets its backlog from the persisted change log (or a snapshot when it is too
//! far behind), then the live changes, without a gap or a duplicate at the switch-over.
//!
//! How the switch-over stays exact: a subscriber joins the broadcast *before* it reads
//! SQLite, and the writer publishes a change only after its commit. So every change is
//! either committed before the read (the read sees it) or published after the join (the
//! broadcast delivers it), and live changes numbered at or below the last one the read
//! covered are skipped.
//!
//! How a slow client is kept from hurting anyone: each subscriber has a small pump task that
//! drains the broadcast into the client's own bounded buffer. The pump never waits for the
//! client; when the buffer is full (or the pump itself fell behind the broadcast), it gives
//! up on that client: the client gets what is buffered, then a final `lagged` event naming
//! the id to resume from, and the stream ends. The writer never waits for anybody.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::response::sse::Event as SseEvent;
use futures::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::ViewMetrics;
use crate::model::{Change, Filter};
use crate::store::{Store, StoreError};

/// Rows per read of the change log while catching up.
const PAGE: u32 = 500;

#[derive(Debug)]
pub struct FeedHub {
    sender: broadcast::Sender<Arc<Change>>,
    store: Store,
    metrics: ViewMetrics,
    client_buffer: usize,
    token: CancellationToken,
}

impl FeedHub {
    /// `capacity` bounds the broadcast ring, `client_buffer` each subscriber's own buffer.
    pub fn new(
        store: Store,
        metrics: ViewMetrics,
        capacity: usize,
        client_buffer: usize,
        token: CancellationToken,
    ) -> Self {
        FeedHub {
            sender: broadcast::channel(capacity.max(1)).0,
            store,
            metrics,
            client_buffer: client_buffer.max(1),
            token,
        }
    }

    /// Sends committed changes, in order, to every subscriber. Never waits.
    pub fn publish(&self, changes: &[Arc<Change>]) {
        for change in changes {
            // An error only means nobody is subscribed.
            let _ = self.sender.send(change.clone());
        }
    }

    /// A subscriber's stream of SSE events: with `resume` (the client's Last-Event-ID) first
    /// every change after it, or a snapshot when those are no longer retained; then the live
    /// changes. Only changes `filter` matches.
    pub fn subscribe(
        &self,
        filter: Filter,
        resume: Option<i64>,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + use<> {
        // Join first, read later: see the module comment.
        let receiver = self.sender.subscribe();
        let (buffer, mut live) = mpsc::channel(self.client_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber::new(self.metrics.clone());
        tokio::spawn(pump(
            receiver,
            buffer,
            filter.clone(),
            lagged.clone(),
            self.metrics.clone(),
            self.token.clone(),
        ));
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        async_stream::stream! {
            let _subscriber = subscriber;
            // The highest change number covered so far: sent, or read and not matching.
            // Live changes up to it are skipped.
            let mut covered = match store.seq_bounds().await {
                Ok((_, newest)) => newest,
                Err(e) => {
                    yield Ok(unavailable(&e));
                    return;
                }
            };
            if let Some(after) = resume {
                let newest = covered;
                // An id above the newest is not from this log (another replica's, or from
                // before a rebuild): only a snapshot is right for it.
                let mut snapshot = after > newest;
                let mut cursor = after;
                while !snapshot && cursor < newest {
                    let page = match store.changes_page(cursor, newest, &filter, PAGE).await {
                        Ok(page) => page,
                        Err(e) => {
                            yield Ok(unavailable(&e));
                            return;
                        }
                    };
                    if page.oldest.is_none_or(|oldest| oldest > cursor + 1) {
                        // Trimmed past the cursor: what the client missed is gone.
                        snapshot = true;
                        break;
                    }
                    let full = page.changes.len() == PAGE as usize;
                    cursor = match page.changes.last() {
                        Some(last) if full => last.seq,
                        _ => newest,
                    };
                    for change in &page.changes {
                        yield Ok(change_event(change));
                    }
                }
                if snapshot {
                    match store.snapshot(&filter).await {
                        Ok(snapshot) => {
                            metrics.feed_snapshots.inc();
                            covered = snapshot.seq;
                            yield Ok(snapshot_event(snapshot));
                        }
                        Err(e) => {
                            yield Ok(unavailable(&e));
                            return;
                        }
                    }
                }
            }
            while let Some(change) = live.recv().await {
                if change.seq <= covered {
                    continue;
                }
                covered = change.seq;
                yield Ok(change_event(&change));
            }
            if lagged.load(Ordering::SeqCst) {
                // With the id, a browser's EventSource reconnects from the right place too.
                yield Ok(SseEvent::default()
                    .id(covered.to_string())
                    .event("lagged")
                    .data(
                        json!({
                            "last_event_id": covered,
                            "message": format!(
                                "client too slow, reconnect with Last-Event-ID: {covered}"
                            ),
                        })
                        .to_string(),
                    ));
            }
        }
    }
}

fn unavailable(e: &StoreError) -> SseEvent {
    tracing::warn!(error = %e, "cannot read the change log for a feed client");
    SseEvent::default().event("error").data(
        json!({"code": "unavailable", "message": "cannot read the change log, reconnect"})
            .to_string(),
    )
}

/// Counts a connected subscriber for as long as its stream lives.
struct Subscriber(ViewMetrics);

impl Subscriber {
    fn new(metrics: ViewMetrics) -> Self {
        metrics.feed_subscribers.inc();
        Subscriber(metrics)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.feed_subscribers.dec();
    }
}

/// Moves matching changes from the broadcast into one client's buffer, never waiting for
/// the client. Ends when the client is gone, at shutdown, or when the client fell behind.
async fn pump(
    mut receiver: broadcast::Receiver<Arc<Change>>,
    buffer: mpsc::Sender<Arc<Change>>,
    filter: Filter,
    lagged: Arc<AtomicBool>,
    metrics: ViewMetrics,
    token: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = token.cancelled() => return,
            _ = buffer.closed() => return,
            received = receiver.recv() => received,
        };
        match received {
            Ok(change) if filter.matches(&change) => match buffer.try_send(change) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => break,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
    // Set before `buffer` is dropped, so the stream sees it once the buffer is drained.
    lagged.store(true, Ordering::SeqCst);
    metrics.feed_lagged.inc();
    tracing::info!("feed client fell behind, disconnecting it");
}

fn change_event(change: &Change) -> SseEvent {
    SseEvent::default()
        .id(change.seq.to_string())
        .event(change.kind.as_str())
        .data(&*change.data)
}

fn snapshot_event(snapshot: crate::store::Snapshot) -> SseEvent {
    SseEvent::default()
        .id(snapshot.seq.to_string())
        .event("snapshot")
        .data(
            json!({
                "seq": snapshot.seq,
                "customers": snapshot.customers,
                "orders": snapshot.orders,
            })
            .to_string(),
        )
}
