//! The consumer runtime: a consumer-group member that hands batches to a [`Handler`] and
//! stores offsets only after the handler said its work is committed.
//!
//! Delivery is at-least-once: a crash between the handler's commit and the offset commit
//! delivers the batch again, which the handler absorbs with `processed_events` (see
//! [`crate::dedup::first_time`]). Poison messages go to `<topic>.dlq`; nothing is skipped
//! silently.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admin::{Admin, AdminError, TopicSpec};
use crate::config::{ConsumerSettings, KafkaSettings};
use crate::context::FeedlineContext;
use crate::dlq::{self, Rejection};
use crate::errors::{Classify, ErrorClass};
use crate::metrics::Metrics;
use crate::producer::{ProduceError, Producer};
use crate::telemetry;

mod fetch;
mod progress;

pub use progress::Progress;

/// What the handler did with a batch whose effects it committed.
#[derive(Debug, Default)]
pub struct Outcome {
    rejected: Vec<(usize, Rejection)>,
}

impl Outcome {
    pub fn ok() -> Self {
        Outcome::default()
    }

    /// Marks `batch[index]` as poison: the runtime sends it to the DLQ before storing offsets.
    pub fn reject(&mut self, index: usize, rejection: Rejection) {
        self.rejected.push((index, rejection));
    }

    pub fn rejected(&self) -> &[(usize, Rejection)] {
        &self.rejected
    }
}

/// Why a batch failed, by class (see [`crate::errors`]); in every case nothing of the batch
/// was committed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A dependency is away (database, broker, registry): the runtime retries the same batch
    /// with backoff for as long as it takes, its partitions paused, its member in the group.
    #[error("transient handler error: {0:#}")]
    Transient(anyhow::Error),
    /// Some message of the batch can never be processed: the runtime bisects the batch to
    /// find it, commits the rest and dead-letters it.
    #[error("permanent handler error: {0:#}")]
    Permanent(anyhow::Error),
    /// Neither is known: the batch is retried `consumer.unknown_error_attempts` times, then
    /// handled one message at a time, and a message that still fails is dead-lettered.
    #[error("handler error: {0:#}")]
    Unknown(anyhow::Error),
}

impl HandlerError {
    /// The error in the variant of its class.
    pub fn classified(error: impl Classify + Into<anyhow::Error>) -> Self {
        let class = error.class();
        HandlerError::of_class(class, error.into())
    }

    pub fn of_class(class: ErrorClass, error: anyhow::Error) -> Self {
        match class {
            ErrorClass::Transient => HandlerError::Transient(error),
            ErrorClass::Permanent => HandlerError::Permanent(error),
            ErrorClass::Unknown => HandlerError::Unknown(error),
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            HandlerError::Transient(_) => ErrorClass::Transient,
            HandlerError::Permanent(_) => ErrorClass::Permanent,
            HandlerError::Unknown(_) => ErrorClass::Unknown,
        }
    }

    fn into_inner(self) -> anyhow::Error {
        match self {
            HandlerError::Transient(e) | HandlerError::Permanent(e) | HandlerError::Unknown(e) => e,
        }
    }
}

/// Processes a batch of messages (in partition order) and makes their effects durable
/// before returning `Ok`. A batch holds one message when `consumer.batch_max = 1`. The
/// runtime never runs two batches at once; it only fetches the next one meanwhile.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        batch: &[OwnedMessage],
    ) -> impl Future<Output = Result<Outcome, HandlerError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cannot dead-letter a message: {0}")]
    DeadLetter(#[from] ProduceError),
    #[error("handler rejected index {index} of a batch of {len}")]
    BadRejection { index: usize, len: usize },
    #[error("cannot start the fetch thread: {0}")]
    FetchThread(std::io::Error),
    #[error("the fetch thread stopped unexpectedly")]
    FetchStopped,
}

/// A consumer-group member running one handler over a set of topics.
///
/// Fetching and handling overlap: a dedicated thread polls librdkafka and collects the next
/// batch while the handler commits the current one (see [`fetch`]).
pub struct Consumer<H> {
    consumer: Arc<BaseConsumer<FeedlineContext>>,
    context: FeedlineContext,
    handler: H,
    producer: Producer,
    group: String,
    topics: Vec<String>,
    kafka: KafkaSettings,
    settings: ConsumerSettings,
    metrics: Arc<Metrics>,
    progress: Progress,
    /// `group`, shared with the message spans of every batch.
    group_name: Arc<str>,
}

impl<H> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// How many times a part of a split batch is tried when it fails with an unknown error:
/// the whole batch already failed `unknown_error_attempts` times, so this only rides out a
/// blip between the parts.
const SPLIT_ATTEMPTS: u32 = 3;

enum Attempt {
    Done(Outcome),
    Failed(HandlerError),
    Abandoned,
}

enum Processed {
    Done,
    /// Shutdown came first: the batch's offsets were not stored, so it will be redelivered.
    Abandoned,
}

impl<H: Handler> Consumer<H> {
    /// `group` and `topics` are full names (apply [`KafkaSettings::name`] for the prefix).
    /// `producer` sends dead letters.
    pub fn new(
        kafka: &KafkaSettings,
        settings: &ConsumerSettings,
        group: &str,
        topics: &[String],
        handler: H,
        producer: Producer,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConsumerError> {
        let context = FeedlineContext::new(metrics.clone());
        let consumer: BaseConsumer<FeedlineContext> = kafka
            .consumer_config(group, settings)
            .create_with_context(context.clone())?;
        let progress = Progress::new(context.clone(), settings.stall_timeout());
        // Exported at zero from the start: `increase()` over a series that first appears at
        // 1 sees no increase, so the first dead letter or error would raise no alert.
        for topic in topics {
            metrics.dead_lettered.with_label_values(&[topic]);
        }
        for kind in ["transient", "permanent", "unknown"] {
            metrics.handler_errors.with_label_values(&[group, kind]);
        }
        Ok(Consumer {
            progress,
            consumer: Arc::new(consumer),
            context,
            handler,
            producer,
            group: group.to_owned(),
            group_name: group.into(),
            topics: topics.to_vec(),
            kafka: kafka.clone(),
            settings: settings.clone(),
            metrics,
        })
    }

    /// What the health endpoints read: register it with [`Progress::register`].
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Consumes until `token` is cancelled. On the way out it
    /// finishes (or, after the drain timeout, abandons) the batch in flight, commits the
    /// stored offsets and leaves the group.
    pub async fn run(self, token: CancellationToken) -> Result<(), ConsumerError> {
        let dlqs: Vec<TopicSpec> = self
            .topics
            .iter()
            .map(|t| {
                TopicSpec::new(dlq::dlq_topic(t), self.kafka.default_partitions)
                    .replication(self.kafka.replication_factor)
            })
            .collect();
        Admin::new(&self.kafka)?.ensure_topics(&dlqs).await?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        tracing::info!(group = %self.group, topics = ?self.topics, "consumer started");

        let result = self.consume(&token).await;

        let Consumer {
            consumer, group, ..
        } = self;
        // All of it blocks on the network: the commit, the unsubscribe and the close (dropping
        // the last handle leaves the group); keep it off the async workers.
        let closed = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(group = %group, error = %e, "final offset commit failed"),
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        if let Err(e) = closed {
            tracing::warn!(error = %e, "final commit task failed");
        }
        result
    }

    /// Hands the fetch thread's batches to the handler one at a time, in the order fetched.
    async fn consume(&self, token: &CancellationToken) -> Result<(), ConsumerError> {
        let handoff = Arc::new(fetch::Handoff::new(
            self.settings.batch_max,
            self.settings.batch_wait(),
            self.context.revocations(),
            self.metrics
                .consumer_prefetched
                .with_label_values(&[&self.group]),
        ));
        let fetcher = fetch::Fetcher {
            consumer: self.consumer.clone(),
            context: self.context.clone(),
            group: self.group.clone(),
            handoff: handoff.clone(),
            progress: self.progress.clone(),
        };
        let fetch_thread = std::thread::Builder::new()
            .name("feedline-fetch".into())
            .spawn(move || fetcher.run())
            .map_err(ConsumerError::FetchThread)?;

        let closing = fetch::Closing(handoff.clone());
        let result = self.handle_batches(&handoff, token).await;

        // Abandons the pending batch (its offsets were never stored, so it is delivered
        // again) and stops the fetch thread after its current poll.
        drop(closing);
        match tokio::task::spawn_blocking(move || fetch_thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_panic)) => tracing::error!(group = %self.group, "fetch thread panicked"),
            Err(e) => tracing::warn!(error = %e, "cannot join the fetch thread"),
        }
        result
    }

    async fn handle_batches(
        &self,
        handoff: &fetch::Handoff,
        token: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        loop {
            let batch = tokio::select! {
                biased;
                _ = token.cancelled() => return Ok(()),
                batch = handoff.next(&self.context) => batch.ok_or(ConsumerError::FetchStopped)?,
            };
            self.observe_age(&batch);
            match self.process(&batch, token).await? {
                Processed::Done => {}
                Processed::Abandoned => return Ok(()),
            }
            if token.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// One observation per topic per batch, of its oldest message: the batch's worst delay
    /// so far, for the cost of one pass over timestamps.
    fn observe_age(&self, batch: &[OwnedMessage]) {
        let mut oldest: Vec<(&str, i64)> = Vec::new();
        for m in batch {
            let Some(at) = m.timestamp().to_millis() else {
                continue;
            };
            match oldest.iter_mut().find(|(topic, _)| *topic == m.topic()) {
                Some((_, first)) => *first = (*first).min(at),
                None => oldest.push((m.topic(), at)),
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        for (topic, at) in oldest {
            // Producer clocks can run ahead of ours; a negative age would only confuse.
            let age = (now - at).max(0) as f64 / 1000.0;
            self.metrics
                .event_age_seconds
                .with_label_values(&[topic, &self.group])
                .observe(age);
        }
    }

    /// Handles the batch until all of it is committed or dead-lettered, then stores its
    /// offsets. A failing batch is split (see [`HandlerError`]) into parts handled in order,
    /// so the messages that can be processed are, and only the one that cannot goes to the
    /// DLQ.
    async fn process(
        &self,
        batch: &[OwnedMessage],
        token: &CancellationToken,
    ) -> Result<Processed, ConsumerError> {
        let started = Instant::now();
        let mut rejected: Vec<(usize, Rejection)> = Vec::new();
        // Parts still to handle, the next one last; each with the attempts an unknown
        // error gets before the part is split.
        let mut parts = vec![(0..batch.len(), self.settings.unknown_error_attempts.max(1))];
        while let Some((range, attempts)) = parts.pop() {
            let start = range.start;
            let part = &batch[range.clone()];
            let failed = match self.attempt(part, attempts, token).await {
                Attempt::Abandoned => return Ok(Processed::Abandoned),
                Attempt::Done(outcome) => {
                    for (index, rejection) in outcome.rejected {
                        if index >= part.len() {
                            return Err(ConsumerError::BadRejection {
                                index,
                                len: part.len(),
                            });
                        }
                        rejected.push((start + index, rejection));
                    }
                    continue;
                }
                Attempt::Failed(failed) => failed,
            };
            let class = failed.class();
            let error = failed.into_inner();
            if part.len() == 1 {
                let msg = &part[0];
                tracing::warn!(
                    group = %self.group, topic = msg.topic(), partition = msg.partition(),
                    offset = msg.offset(), class = ?class, error = format!("{error:#}"),
                    "message cannot be processed"
                );
                let kind = match class {
                    ErrorClass::Permanent => "permanent",
                    _ => "unknown",
                };
                rejected.push((start, Rejection::new(kind, format!("{error:#}"))));
                continue;
            }
            tracing::warn!(
                group = %self.group, messages = part.len(), class = ?class,
                error = format!("{error:#}"), "batch failed, splitting it to find the message at fault"
            );
            if class == ErrorClass::Permanent {
                // The data is at fault and the statement does not say which row: halves.
                let middle = start + part.len() / 2;
                parts.push((middle..range.end, SPLIT_ATTEMPTS));
                parts.push((start..middle, SPLIT_ATTEMPTS));
            } else {
                parts.extend(range.rev().map(|i| (i..i + 1, SPLIT_ATTEMPTS)));
            }
        }
        rejected.sort_by_key(|(index, _)| *index);
        self.metrics
            .handler_seconds
            .with_label_values(&[&self.group])
            .observe(started.elapsed().as_secs_f64());

        for (index, rejection) in &rejected {
            if !self.dead_letter(&batch[*index], rejection, token).await? {
                return Ok(Processed::Abandoned);
            }
        }
        self.store_offsets(batch);
        Ok(Processed::Done)
    }

    /// Handles `part`, retrying transient failures until they pass (or shutdown) and
    /// unknown ones up to `attempts` times.
    async fn attempt(
        &self,
        part: &[OwnedMessage],
        attempts: u32,
        token: &CancellationToken,
    ) -> Attempt {
        let mut backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        let mut tries = 0;
        let mut outage: Option<Instant> = None;
        let span = telemetry::batch_span(&self.group, part);
        loop {
            self.progress.attempt_started();
            let handled =
                telemetry::in_consumer_group(self.group_name.clone(), self.handler.handle(part))
                    .instrument(span.clone());
            let result = self.until_drained(handled, token).await;
            self.progress.attempt_ended();
            let Some(result) = result else {
                return Attempt::Abandoned;
            };
            let error = match result {
                Ok(outcome) => {
                    if let Some(since) = outage {
                        self.progress.waiting(false);
                        tracing::info!(group = %self.group, after_s = since.elapsed().as_secs_f64(), "dependency back, batch handled");
                    }
                    return Attempt::Done(outcome);
                }
                Err(e) => e,
            };
            tries += 1;
            match &error {
                HandlerError::Transient(e) => {
                    self.count_handler_error("transient");
                    // Once per outage: the retries are counted, not logged.
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        self.progress.waiting(true);
                        tracing::warn!(group = %self.group, error = format!("{e:#}"), "dependency unavailable, retrying the batch until it is back");
                    }
                }
                HandlerError::Permanent(_) => {
                    self.count_handler_error("permanent");
                    self.progress.waiting(false);
                    return Attempt::Failed(error);
                }
                HandlerError::Unknown(e) => {
                    self.count_handler_error("unknown");
                    if tries >= attempts {
                        self.progress.waiting(false);
                        return Attempt::Failed(error);
                    }
                    tracing::warn!(group = %self.group, error = format!("{e:#}"), attempt = tries, of = attempts, "handler failed, retrying the batch");
                }
            }
            if !self.sleep(&mut backoff, token).await {
                return Attempt::Abandoned;
            }
        }
    }

    /// Runs `work`; once shutdown starts it gets `drain_timeout` more, then is abandoned.
    async fn until_drained<T>(
        &self,
        work: impl Future<Output = T>,
        token: &CancellationToken,
    ) -> Option<T> {
        tokio::pin!(work);
        tokio::select! {
            done = &mut work => Some(done),
            _ = token.cancelled() => {
                match tokio::time::timeout(self.settings.drain_timeout(), work).await {
                    Ok(done) => Some(done),
                    Err(_) => {
                        tracing::warn!(group = %self.group, "drain timeout: batch abandoned, it will be redelivered");
                        None
                    }
                }
            }
        }
    }

    /// Returns false when shutdown interrupted the wait.
    async fn sleep(&self, backoff: &mut Duration, token: &CancellationToken) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_millis(self.settings.retry_backoff_max_ms));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = token.cancelled() => false,
        }
    }

    /// Returns false when shutdown came before the DLQ acknowledged the message.
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        rejection: &Rejection,
        token: &CancellationToken,
    ) -> Result<bool, ConsumerError> {
        let mut backoff = Duration::from_millis(self.settings.retry_backoff_ms);
        // Continues the message's trace: a message that came without one leaves with the
        // context of this span.
        let span = telemetry::message_span(msg);
        loop {
            let sent = span.within(dlq::dead_letter(
                &self.producer,
                &self.group,
                msg,
                rejection,
            ));
            match self.until_drained(sent, token).await {
                None => return Ok(false),
                Some(Ok(_)) => {
                    tracing::warn!(
                        group = %self.group, topic = msg.topic(), partition = msg.partition(),
                        offset = msg.offset(), kind = %rejection.kind, reason = %rejection.reason,
                        "message sent to dead-letter topic"
                    );
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[msg.topic()])
                        .inc();
                    return Ok(true);
                }
                Some(Err(e)) if e.is_retryable() => {
                    tracing::warn!(error = %e, "dead-letter produce failed, retrying");
                    if !self.sleep(&mut backoff, token).await {
                        return Ok(false);
                    }
                }
                Some(Err(e)) => return Err(ConsumerError::DeadLetter(e)),
            }
        }
    }

    /// Stores next-offset = last handled + 1 per partition; the auto-commit (and the final
    /// commit at shutdown) sends them to the group coordinator.
    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for m in batch {
            let slot = next.entry((m.topic(), m.partition())).or_insert(0);
            *slot = (*slot).max(m.offset() + 1);
            *per_topic.entry(m.topic()).or_default() += 1;
        }
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        for ((topic, partition), offset) in &next {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %e, "cannot build offset list");
            }
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // The partition moved to another member during the batch: it will redeliver
            // from the last committed offset and processed_events absorbs the repeat.
            tracing::warn!(group = %self.group, error = %e, "cannot store offsets");
        }
        for (topic, n) in per_topic {
            self.metrics.consumed.with_label_values(&[topic]).inc_by(n);
        }
    }

    fn count_handler_error(&self, kind: &str) {
        self.metrics
            .handler_errors
            .with_label_values(&[&self.group, kind])
            .inc();
    }
}
