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
//! Event ids are `<generation>-<seq>`: the generation is drawn when the SQLite file is
//! created (see [`Store::generation`]), so a change number is only ever compared with numbers
//! of the same log. Another replica's file, or a rebuilt one, numbers its changes from 1
//! again: the same number there names another change, and resuming from it would skip or
//! repeat changes without anyone noticing. An id of another generation (or one this feed
//! never sent, or too old to resume from) gets a snapshot of the current state instead, then
//! the live changes.
//!
//! How a slow client is kept from hurting anyone: each subscriber has a small pump task that
//! drains the broadcast into the client's own bounded buffer. The pump never waits for the
//! client; when the buffer is full (or the pump itself fell behind the broadcast), it gives
//! up on that client: the client gets what is buffered, then a final `lagged` event naming
//! the id to resume from, and the stream ends. The writer never waits for anybody.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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

/// A feed event's id: the read model's generation and a change number in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub generation: String,
    pub seq: i64,
}

impl EventId {
    /// `<generation>-<seq>` (a generation is letters and digits), as [`fmt::Display`] writes
    /// it; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (generation, seq) = text.trim().rsplit_once('-')?;
        let seq = seq.parse::<i64>().ok().filter(|seq| *seq >= 0)?;
        let named = !generation.is_empty() && generation.bytes().all(|b| b.is_ascii_alphanumeric());
        named.then(|| EventId {
            generation: generation.to_owned(),
            seq,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.generation, self.seq)
    }
}

/// The generation's part of every id this hub sends.
#[derive(Debug, Clone)]
struct Ids(Arc<str>);

impl Ids {
    fn of(&self, seq: i64) -> String {
        format!("{}-{seq}", self.0)
    }

    /// The change number to resume after, when `resume` is an id of this generation.
    fn ours(&self, resume: &str) -> Option<i64> {
        EventId::parse(resume)
            .filter(|id| *id.generation == *self.0)
            .map(|id| id.seq)
    }
}

/// A committed change on its way to the subscribers, with the moment of its commit (for
/// `order_view_feed_push_delay_seconds`).
type Live = (Arc<Change>, Instant);

#[derive(Debug)]
pub struct FeedHub {
    sender: broadcast::Sender<Live>,
    ids: Ids,
    store: Store,
    metrics: ViewMetrics,
    client_buffer: usize,
    /// Customers, and orders, a snapshot holds at most.
    snapshot_limit: u32,
    token: CancellationToken,
}

/// Customers, and orders, in a snapshot unless [`FeedHub::with_snapshot_limit`] says
/// otherwise.
pub const SNAPSHOT_LIMIT: u32 = 1000;

impl FeedHub {
    /// `generation` is the read model's ([`Store::generation`]); `capacity` bounds the
    /// broadcast ring, `client_buffer` each subscriber's own buffer.
    pub fn new(
        generation: &str,
        store: Store,
        metrics: ViewMetrics,
        capacity: usize,
        client_buffer: usize,
        token: CancellationToken,
    ) -> Self {
        FeedHub {
            sender: broadcast::channel(capacity.max(1)).0,
            ids: Ids(generation.into()),
            store,
            metrics,
            client_buffer: client_buffer.max(1),
            snapshot_limit: SNAPSHOT_LIMIT,
            token,
        }
    }

    /// Caps snapshots at `limit` customers and `limit` orders (the newest); the event says
    /// when something was left out, and where listing pages on.
    pub fn with_snapshot_limit(mut self, limit: u32) -> Self {
        self.snapshot_limit = limit.max(1);
        self
    }

    /// Sends changes, in order, to every subscriber; `committed` is when their transaction
    /// committed. Never waits.
    pub fn publish(&self, changes: &[Arc<Change>], committed: Instant) {
        let _span = tracing::info_span!("feed.publish", changes = changes.len()).entered();
        for change in changes {
            // An error only means nobody is subscribed.
            let _ = self.sender.send((change.clone(), committed));
        }
    }

    /// A subscriber's stream of SSE events: with `resume` (the client's Last-Event-ID) first
    /// every change after it, or a snapshot when it is not an id of this generation or the
    /// changes after it are no longer retained; then the live changes. Only changes `filter`
    /// matches.
    pub fn subscribe(
        &self,
        filter: Filter,
        resume: Option<&str>,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + use<> {
        // `None` inside: an id to answer with a snapshot.
        let resume = resume.map(|id| self.ids.ours(id));
        let ids = self.ids.clone();
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
        let snapshot_limit = self.snapshot_limit;
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
                // Not an id of this log, or one it never sent (above the newest): only a
                // snapshot is right for it.
                let mut snapshot = after.is_none_or(|after| after > newest);
                let mut cursor = after.unwrap_or(newest);
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
                        yield Ok(change_event(&ids, change));
                    }
                }
                if snapshot {
                    match store.snapshot(&filter, snapshot_limit).await {
                        Ok(snapshot) => {
                            metrics.feed_snapshots.inc();
                            covered = snapshot.seq;
                            yield Ok(snapshot_event(&ids, snapshot));
                        }
                        Err(e) => {
                            yield Ok(unavailable(&e));
                            return;
                        }
                    }
                }
            }
            while let Some((change, committed)) = live.recv().await {
                if change.seq <= covered {
                    continue;
                }
                covered = change.seq;
                let event = change_event(&ids, &change);
                metrics.feed_push_delay_seconds.observe(committed.elapsed().as_secs_f64());
                yield Ok(event);
            }
            if lagged.load(Ordering::SeqCst) {
                // With the id, a browser's EventSource reconnects from the right place too.
                let id = ids.of(covered);
                yield Ok(SseEvent::default()
                    .id(&id)
                    .event("lagged")
                    .data(
                        json!({
                            "last_event_id": id,
                            "message": format!(
                                "client too slow, reconnect with Last-Event-ID: {id}"
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
    mut receiver: broadcast::Receiver<Live>,
    buffer: mpsc::Sender<Live>,
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
            Ok(live) if filter.matches(&live.0) => match buffer.try_send(live) {
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

fn change_event(ids: &Ids, change: &Change) -> SseEvent {
    SseEvent::default()
        .id(ids.of(change.seq))
        .event(change.kind.as_str())
        .data(&*change.data)
}

fn snapshot_event(ids: &Ids, snapshot: crate::store::Snapshot) -> SseEvent {
    SseEvent::default()
        .id(ids.of(snapshot.seq))
        .event("snapshot")
        .data(
            json!({
                "generation": &*ids.0,
                "seq": snapshot.seq,
                "customers": snapshot.customers,
                "orders": snapshot.orders,
                "truncated": snapshot.truncated,
                "next_cursor": snapshot.next_cursor.map(|c| c.to_string()),
            })
            .to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_generation_and_its_change() {
        let id = EventId::parse("0f3a-42").unwrap();
        assert_eq!((id.generation.as_str(), id.seq), ("0f3a", 42));
        assert_eq!(id.to_string(), "0f3a-42");
        assert_eq!(EventId::parse(" 0f3a-0 ").unwrap().seq, 0);
        for text in ["42", "-42", "0f3a-", "0f3a--1", "0f3a-x", "", "0f3a-4 2"] {
            assert_eq!(EventId::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn only_ids_of_this_generation_resume() {
        let ids = Ids("0f3a".into());
        assert_eq!(ids.of(7), "0f3a-7");
        assert_eq!(ids.ours("0f3a-7"), Some(7));
        assert_eq!(
            ids.ours("beef-7"),
            None,
            "another replica's or a rebuilt file's"
        );
        assert_eq!(
            ids.ours("7"),
            None,
            "a bare number, from before generations"
        );
    }
}
