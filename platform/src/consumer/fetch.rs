//! The fetch side of the consumer runtime: a thread that polls librdkafka, and the hand-off
//! through which the handler takes everything fetched since its last batch.
//!
//! Batches form naturally: the fetch thread keeps adding to one pending batch while the
//! handler works, and the handler takes all of it the moment it is free. An idle service
//! answers a lone message at once (after at most `batch_wait`), a busy one takes large
//! batches, and no message ever waits behind a batch that closed early while the handler
//! was still busy with the one before.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::Notify;

use super::Progress;
use crate::context::FeedlineContext;

/// How long the fetch thread waits in one poll: the bound on how late it notices that the
/// handler side has gone, and on how long librdkafka's events (rebalances, statistics) wait
/// when no messages arrive.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long a full batch may wait for the handler before the fetch thread pauses the
/// assignment and goes back to polling. A busy handler takes the batch well within this;
/// one retrying a batch while its database is away does not, and polling keeps the member
/// in its group (`max.poll.interval.ms`) and serves rebalances meanwhile. Not at once:
/// pausing drops librdkafka's prefetched messages, which resuming fetches again.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// The one pending batch, shared by the fetch thread (which fills it) and the handler side
/// (which takes it).
#[derive(Debug)]
pub(super) struct Handoff {
    state: Mutex<Pending>,
    batch_max: usize,
    batch_wait: Duration,
    /// Fetch thread → handler: the batch became non-empty, full, filtered, or the thread
    /// stopped.
    arrived: Notify,
    /// Handler → fetch thread: the full batch was taken, or the handler side has gone.
    taken: Condvar,
    /// The pending count, exported: what a rebalance or a shutdown would drop now.
    prefetched: IntGauge,
}

#[derive(Debug)]
struct Pending {
    batch: Vec<OwnedMessage>,
    /// When the batch's first message arrived.
    since: Option<Instant>,
    /// The revocation generation the batch was last filtered at. The handler takes nothing
    /// while the client's generation is newer: the batch may hold messages of partitions
    /// this member just lost, and the fetch thread filters them right after its poll.
    generation: u64,
    handler_gone: bool,
    fetch_stopped: bool,
}

impl Handoff {
    pub(super) fn new(
        batch_max: usize,
        batch_wait: Duration,
        generation: u64,
        prefetched: IntGauge,
    ) -> Self {
        Handoff {
            state: Mutex::new(Pending {
                batch: Vec::new(),
                since: None,
                generation,
                handler_gone: false,
                fetch_stopped: false,
            }),
            batch_max: batch_max.max(1),
            batch_wait,
            arrived: Notify::new(),
            taken: Condvar::new(),
            prefetched,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing in the critical sections can panic halfway through an update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch, in the order fetched: everything pending once its first message has
    /// waited `batch_wait` (or at once when it is full). `None` once the fetch thread stopped
    /// and nothing is left.
    pub(super) async fn next(&self, context: &FeedlineContext) -> Option<Vec<OwnedMessage>> {
        loop {
            // Registered before the state is read, so a wake-up in between is not lost.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let ready_at = {
                let mut pending = self.lock();
                let filtered = pending.generation == context.revocations();
                match pending.since {
                    Some(since) if filtered => {
                        let ready_at = since + self.batch_wait;
                        if pending.batch.len() >= self.batch_max || Instant::now() >= ready_at {
                            let batch = std::mem::take(&mut pending.batch);
                            pending.since = None;
                            self.prefetched.set(0);
                            drop(pending);
                            self.taken.notify_one();
                            return Some(batch);
                        }
                        Some(ready_at)
                    }
                    _ if pending.fetch_stopped => return None,
                    _ => None,
                }
            };
            match ready_at {
                Some(at) => {
                    tokio::select! {
                        _ = arrived => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => arrived.await,
            }
        }
    }

    /// Called by the fetch thread after every poll: filters the pending batch after a
    /// revocation, then adds what the poll returned (it was fetched after the rebalance, so
    /// it stays).
    pub(super) fn add(&self, context: &FeedlineContext, message: Option<OwnedMessage>) {
        let generation = context.revocations();
        let mut pending = self.lock();
        let mut wake = false;
        if generation != pending.generation {
            pending.generation = generation;
            let revoked = context.take_revoked();
            pending
                .batch
                .retain(|m| !revoked.contains(&(m.topic().to_owned(), m.partition())));
            if pending.batch.is_empty() {
                pending.since = None;
            }
            wake = true;
        }
        if let Some(message) = message {
            pending.batch.push(message);
            if pending.since.is_none() {
                pending.since = Some(Instant::now());
                wake = true;
            }
            wake |= pending.batch.len() >= self.batch_max;
        }
        self.prefetched.set(pending.batch.len() as i64);
        drop(pending);
        if wake {
            self.arrived.notify_one();
        }
    }

    /// The handler side is leaving: the fetch thread stops at its next look, and what is
    /// pending is dropped (its offsets were never stored, so it is delivered again).
    fn close(&self) {
        self.lock().handler_gone = true;
        self.taken.notify_one();
    }
}

/// Closes the hand-off when the handler side goes, however it goes (a task aborted in the
/// middle of a batch included), so the fetch thread stops and the member leaves its group.
pub(super) struct Closing(pub(super) Arc<Handoff>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Marks the hand-off stopped when the fetch thread ends, however it ends.
struct Stopped<'a>(&'a Handoff);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.lock().fetch_stopped = true;
        self.0.arrived.notify_one();
    }
}

/// Polls a [`BaseConsumer`] on its own thread into the [`Handoff`].
///
/// A blocking poll on a dedicated thread costs far less per message than an async `recv()`
/// per message (no waker, no timer per receive), and librdkafka runs rebalance callbacks
/// inside that poll, so they never run on, or block, the async runtime.
///
/// Rebalances are served only here, in `poll`, and right after each poll this thread drops
/// the pending messages of revoked partitions (their new owner starts from the last stored
/// offset). A batch the handler already took is in flight; its offsets simply fail to
/// store if its partitions are gone.
pub(super) struct Fetcher {
    pub(super) consumer: Arc<BaseConsumer<FeedlineContext>>,
    pub(super) context: FeedlineContext,
    pub(super) group: String,
    pub(super) handoff: Arc<Handoff>,
    pub(super) progress: Progress,
}

impl Fetcher {
    pub(super) fn run(self) {
        let handoff = &*self.handoff;
        let _stopped = Stopped(handoff);
        let mut full_since: Option<Instant> = None;
        // The assignment generation whose partitions are paused, while holding.
        let mut paused: Option<u64> = None;
        loop {
            // At most one batch waits for the handler: while it is full, fetch no more, so
            // a slow handler does not pile up messages a rebalance or shutdown would drop.
            let hold = {
                let mut pending = handoff.lock();
                loop {
                    if pending.handler_gone {
                        return;
                    }
                    if pending.batch.len() < handoff.batch_max {
                        full_since = None;
                        break false;
                    }
                    if full_since.get_or_insert_with(Instant::now).elapsed() >= PAUSE_AFTER {
                        break true;
                    }
                    pending = handoff
                        .taken
                        .wait_timeout(pending, IDLE_POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    self.progress.polled();
                }
            };
            if hold {
                let generation = self.context.assignments();
                if paused != Some(generation) {
                    self.set_paused(true);
                    paused = Some(generation);
                }
            } else if paused.take().is_some() {
                self.set_paused(false);
            }
            let polled = self.consumer.poll(IDLE_POLL);
            self.progress.polled();
            let message = match polled {
                Some(Ok(message)) => Some(message.detach()),
                Some(Err(e)) => {
                    tracing::warn!(group = %self.group, error = %e, "consumer error");
                    // Errors repeat fast when the broker is away; do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
                // Nothing came in this wait (or poll served an event).
                None => None,
            };
            handoff.add(&self.context, message);
        }
    }

    /// Pauses or resumes every assigned partition. librdkafka resumes from the position of
    /// the last message handed out, so nothing is skipped.
    fn set_paused(&self, pause: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "cannot read the assignment");
                TopicPartitionList::new()
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                tracing::debug!(group = %self.group, pause, partitions = assignment.count(), "fetching paused or resumed")
            }
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, pause, "cannot pause or resume fetching")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use rdkafka::Timestamp;

    fn gauge() -> IntGauge {
        IntGauge::new("prefetched", "test").unwrap()
    }

    fn message(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            Some(vec![1]),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    fn push(handoff: &Handoff, offset: i64) {
        handoff.add(
            &FeedlineContext::new(Metrics::new("test")),
            Some(message(0, offset)),
        );
    }

    fn offsets(batch: &[OwnedMessage]) -> Vec<i64> {
        batch.iter().map(|m| m.offset()).collect()
    }

    #[tokio::test]
    async fn the_handler_takes_everything_that_arrived_while_it_worked() {
        let context = FeedlineContext::new(Metrics::new("test"));
        let handoff = Handoff::new(100, Duration::ZERO, context.revocations(), gauge());
        push(&handoff, 0);
        assert_eq!(offsets(&handoff.next(&context).await.unwrap()), [0]);
        // The handler is busy: three arrive meanwhile, and go as one batch.
        for offset in 1..4 {
            push(&handoff, offset);
        }
        assert_eq!(offsets(&handoff.next(&context).await.unwrap()), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_lone_message_waits_batch_wait_for_company_then_goes() {
        let context = FeedlineContext::new(Metrics::new("test"));
        let handoff = Handoff::new(
            100,
            Duration::from_millis(40),
            context.revocations(),
            gauge(),
        );
        let started = Instant::now();
        push(&handoff, 7);
        let batch = handoff.next(&context).await.unwrap();
        assert_eq!(offsets(&batch), [7]);
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[tokio::test]
    async fn a_full_batch_goes_without_waiting() {
        let context = FeedlineContext::new(Metrics::new("test"));
        let handoff = Handoff::new(2, Duration::from_secs(3600), context.revocations(), gauge());
        push(&handoff, 0);
        push(&handoff, 1);
        let batch = tokio::time::timeout(Duration::from_secs(5), handoff.next(&context))
            .await
            .expect("a full batch waited for batch_wait");
        assert_eq!(offsets(&batch.unwrap()), [0, 1]);
    }

    #[tokio::test]
    async fn the_handler_waits_for_a_message_and_ends_when_the_fetch_thread_stops() {
        let context = FeedlineContext::new(Metrics::new("test"));
        let handoff = Arc::new(Handoff::new(
            100,
            Duration::ZERO,
            context.revocations(),
            gauge(),
        ));
        let waiting = tokio::spawn({
            let (handoff, context) = (handoff.clone(), context.clone());
            async move {
                let first = handoff.next(&context).await.map(|b| offsets(&b));
                let second = handoff.next(&context).await.map(|b| offsets(&b));
                (first, second)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        push(&handoff, 5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(Stopped(&handoff));
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the handler side never woke")
            .unwrap();
        assert_eq!(first, Some(vec![5]));
        assert_eq!(second, None);
    }

    #[tokio::test]
    async fn nothing_is_taken_until_the_messages_of_revoked_partitions_are_dropped() {
        let context = FeedlineContext::new(Metrics::new("test"));
        let handoff = Arc::new(Handoff::new(
            100,
            Duration::ZERO,
            context.revocations(),
            gauge(),
        ));
        for (partition, offset) in [(0, 10), (1, 20), (0, 11), (1, 21)] {
            handoff.add(&context, Some(message(partition, offset)));
        }
        // The rebalance callback ran inside a poll that has not returned yet.
        context.record_revoked(vec![("t".to_owned(), 1)]);
        let taking = tokio::spawn({
            let (handoff, context) = (handoff.clone(), context.clone());
            async move { handoff.next(&context).await.map(|b| offsets(&b)) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !taking.is_finished(),
            "took a batch the revocation had not filtered"
        );
        // The poll returns with one message of a partition still owned.
        handoff.add(&context, Some(message(0, 12)));
        let taken = tokio::time::timeout(Duration::from_secs(5), taking)
            .await
            .expect("the handler side never woke")
            .unwrap();
        assert_eq!(taken, Some(vec![10, 11, 12]));
    }
}
