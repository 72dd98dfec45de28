//! One file: the `_schemas` reader and writer share one record format; only tests take it past 600 lines.
//!
//! The `_schemas` log: a reader that applies every record to the shared state, and a writer
//! that appends records so that no two instances ever hand out the same id.
//!
//! # How writes stay consistent across instances
//!
//! Every instance writes with a *transactional* producer under the same `transactional.id`
//! (derived from the topic name). Initializing that producer fences whichever instance
//! initialized it before: the broker aborts that instance's open transaction and rejects its
//! later commits. So a commit succeeds only if no other instance initialized in between, and
//! that gives a simple rule for the writer:
//!
//! 1. After initializing, commit a NOOP record and wait until the reader has applied it. Every
//!    transaction committed before the initialization sits before the NOOP in the log, so
//!    the state now holds all of them.
//! 2. Plan the batch's records on a copy of that state (ids are `max + 1`, versions
//!    `latest + 1`), commit them, wait until the reader has applied them, answer.
//! 3. If a commit fails (fenced because another instance wrote meanwhile, or anything else),
//!    drop the producer and start again at 1: the plan is redone on the newer state.
//!
//! Losing plans are aborted transactions, which `read_committed` readers never see and the log
//! cleaner removes, so the committed log holds no conflicting records for compaction to
//! reorder. `State::apply` still arbitrates by log order (the first record wins, on every
//! instance alike) for records from any other writer; if one of ours ever loses there, the
//! writer sees it after applying and retries with a fresh id and version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use feedline::Metrics;
use feedline::config::KafkaSettings;
use feedline::context::FeedlineContext;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::metrics::RegistryMetrics;
use crate::ops::{self, Command, Outcome};
use crate::record::Record;
use crate::state::{Conflict, State};

pub type SharedState = Arc<RwLock<State>>;

/// How long one Kafka operation (init, commit, reading back) may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Write requests committed together in one transaction.
const MAX_BATCH: usize = 64;
/// Tries per batch; between them the backoff doubles (with jitter) so that two instances
/// fencing each other fall out of step.
const ATTEMPTS: u32 = 12;
const BACKOFF_BASE: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// No new attempt at a batch starts after this long.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);
/// Rejected offsets remembered for writers to check their records against.
const REJECTED_KEPT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("timed out after {0:?} waiting for the log reader")]
    ReaderTimeout(Duration),
    #[error("the log reader stopped")]
    ReaderGone,
    #[error("record at offset {offset} lost to an earlier record: {conflict}")]
    Lost { offset: i64, conflict: Conflict },
    #[error("planned records do not apply: {0}")]
    Plan(Conflict),
    #[error("blocking kafka call failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// The answer a client gets when its write could not be done: 50002 when the log or
    /// the broker did not answer in time, else 50001.
    pub fn to_api_error(&self) -> ApiError {
        use rdkafka::types::RDKafkaErrorCode::{
            MessageTimedOut, OperationTimedOut, RequestTimedOut,
        };
        let timed_out = match self {
            StoreError::ReaderTimeout(_) => true,
            StoreError::Kafka(e) => matches!(
                e.rdkafka_error_code(),
                Some(OperationTimedOut | RequestTimedOut | MessageTimedOut)
            ),
            _ => false,
        };
        // The whole error goes to the log only: librdkafka's texts can name brokers, which
        // a client has no business learning.
        tracing::warn!(error = %self, "registry write failed");
        let reason = self.public_reason();
        if timed_out {
            ApiError::timeout(reason)
        } else {
            ApiError::store(reason)
        }
    }

    /// What a client may read of this error: Kafka's error code, never its text.
    fn public_reason(&self) -> String {
        match self {
            StoreError::Kafka(e) => match e.rdkafka_error_code() {
                Some(code) => format!("kafka: {code:?}"),
                None => "kafka client error".to_owned(),
            },
            other => other.to_string(),
        }
    }
}

/// How far the reader got, for writers waiting to read their own writes.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The next offset to apply.
    next: watch::Receiver<i64>,
    rejected: Arc<Mutex<BTreeMap<i64, Conflict>>>,
}

impl Progress {
    /// Waits until the record at `offset` has been applied.
    pub async fn wait_past(&self, offset: i64, timeout: Duration) -> Result<(), StoreError> {
        let mut next = self.next.clone();
        match tokio::time::timeout(timeout, next.wait_for(|&next| next > offset)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::ReaderGone),
            Err(_) => Err(StoreError::ReaderTimeout(timeout)),
        }
    }

    fn rejected_among(&self, offsets: &[i64]) -> Option<(i64, Conflict)> {
        let rejected = self.rejected.lock().expect("rejected offsets poisoned");
        offsets
            .iter()
            .find_map(|o| rejected.get(o).map(|c| (*o, c.clone())))
    }
}

/// Reads `_schemas` from offset 0 (partition 0 assigned, no consumer group) and keeps
/// tailing it, applying each record to the shared state.
pub struct Reader {
    consumer: StreamConsumer<FeedlineContext>,
    state: SharedState,
    next: watch::Sender<i64>,
    rejected: Arc<Mutex<BTreeMap<i64, Conflict>>>,
    metrics: Arc<RegistryMetrics>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").finish_non_exhaustive()
    }
}

impl Reader {
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        state: SharedState,
        metrics: Arc<RegistryMetrics>,
        platform_metrics: Arc<Metrics>,
    ) -> Result<(Self, Progress), KafkaError> {
        let mut config = kafka.client_config();
        config
            // librdkafka needs a group to assign partitions, but it is never joined (no
            // subscribe) nor committed to: every instance reads the whole log itself.
            .set("group.id", format!("{topic}-registry-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Only committed transactions: aborted writes (lost races) are never applied.
            .set("isolation.level", "read_committed")
            // Bounds how long a fetch waits when the log is idle; writers wait on the reader.
            .set("fetch.wait.max.ms", "50");
        let consumer: StreamConsumer<FeedlineContext> =
            config.create_with_context(FeedlineContext::new(platform_metrics))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let (next_tx, next_rx) = watch::channel(0);
        let rejected = Arc::default();
        let progress = Progress {
            next: next_rx,
            rejected: Arc::clone(&rejected),
        };
        Ok((
            Reader {
                consumer,
                state,
                next: next_tx,
                rejected,
                metrics,
            },
            progress,
        ))
    }

    pub async fn run(self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            let message = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(m) => self.apply(m.key(), m.payload(), m.offset()),
                Err(e) => {
                    // librdkafka reconnects on its own; the error is worth a log line, and
                    // writers waiting on us time out if it never recovers.
                    tracing::warn!(error = %e, "reading _schemas failed, retrying");
                    tokio::select! {
                        _ = token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    fn apply(&self, key: Option<&[u8]>, value: Option<&[u8]>, offset: i64) {
        match Record::decode(key, value) {
            Ok(record) => {
                let (result, schemas) = {
                    let mut state = self.state.write().expect("state poisoned");
                    let result = state.apply(&record);
                    (result, state.schema_count())
                };
                self.metrics.records_applied.inc();
                self.metrics.schemas.set(schemas as i64);
                if let Err(conflict) = result {
                    tracing::warn!(offset, %conflict, "_schemas record ignored: an earlier record won");
                    self.metrics.records_rejected.inc();
                    let mut rejected = self.rejected.lock().expect("rejected offsets poisoned");
                    rejected.insert(offset, conflict);
                    while rejected.len() > REJECTED_KEPT {
                        rejected.pop_first();
                    }
                }
            }
            Err(e) => {
                // A record we cannot read must not stop the registry: skip it, loudly.
                tracing::warn!(offset, error = %e, "skipping an unreadable _schemas record");
                self.metrics.records_rejected.inc();
            }
        }
        self.next.send_replace(offset + 1);
    }
}

/// One write request and where its answer goes.
#[derive(Debug)]
struct WriteRequest {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
    started: Instant,
}

/// Submits commands to this instance's writer.
#[derive(Debug, Clone)]
pub struct WriteHandle {
    requests: mpsc::Sender<WriteRequest>,
}

impl WriteHandle {
    /// Carries out `command` and returns once its records are applied here (read your writes).
    pub async fn submit(&self, command: Command) -> Result<Outcome, ApiError> {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            command,
            reply,
            started: Instant::now(),
        };
        self.requests
            .send(request)
            .await
            .map_err(|_| ApiError::store("the writer has stopped"))?;
        // The writer bounds every step; this only guards against it hanging altogether.
        match tokio::time::timeout(KAFKA_TIMEOUT * 4, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::store("the writer stopped before answering")),
            Err(_) => Err(ApiError::timeout("the write was not confirmed in time")),
        }
    }
}

/// Appends records to `_schemas` (see the module docs for the protocol).
pub struct Writer {
    kafka: KafkaSettings,
    topic: String,
    transactional_id: String,
    producer: Option<FutureProducer<WriterContext>>,
    /// The state holds everything committed before this producer's initialization.
    synced: bool,
    state: SharedState,
    progress: Progress,
    requests: mpsc::Receiver<WriteRequest>,
    metrics: Arc<RegistryMetrics>,
    platform_metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("topic", &self.topic)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

impl Writer {
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        state: SharedState,
        progress: Progress,
        metrics: Arc<RegistryMetrics>,
        platform_metrics: Arc<Metrics>,
    ) -> (Self, WriteHandle) {
        let (tx, rx) = mpsc::channel(1024);
        let writer = Writer {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            // Shared by every instance on this topic: that is what makes them fence each other.
            transactional_id: format!("{topic}-writer"),
            producer: None,
            synced: false,
            state,
            progress,
            requests: rx,
            metrics,
            platform_metrics,
        };
        (writer, WriteHandle { requests: tx })
    }

    pub async fn run(mut self, token: CancellationToken) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                _ = token.cancelled() => break,
                request = self.requests.recv() => match request {
                    Some(r) => r,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.process(batch, &token).await;
        }
        self.reset();
        Ok(())
    }

    async fn process(&mut self, batch: Vec<WriteRequest>, token: &CancellationToken) {
        let mut last_error = None;
        // Past this, clients have given up (see `WriteHandle::submit`) and the requests
        // queued behind this batch are waiting: answer with the error instead.
        let deadline = Instant::now() + BATCH_DEADLINE;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                if Instant::now() >= deadline {
                    break;
                }
                let backoff = backoff(attempt);
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            match self.attempt(&batch).await {
                Ok((answers, written)) => {
                    let outcome = if written > 0 {
                        "committed"
                    } else {
                        "nothing_to_write"
                    };
                    self.metrics
                        .transactions
                        .with_label_values(&[outcome])
                        .inc();
                    for (request, answer) in batch.into_iter().zip(answers) {
                        self.answer(request, answer);
                    }
                    return;
                }
                Err(e) => {
                    let outcome = if is_fenced(&e) { "fenced" } else { "failed" };
                    self.metrics
                        .transactions
                        .with_label_values(&[outcome])
                        .inc();
                    tracing::info!(attempt, error = %e, "write attempt failed, starting over");
                    self.reset();
                    last_error = Some(e);
                }
            }
        }
        let error = last_error.map_or_else(
            || ApiError::store("the registry is shutting down"),
            |e| e.to_api_error(),
        );
        for request in batch {
            self.answer(request, Err(error.clone()));
        }
    }

    fn answer(&self, request: WriteRequest, answer: Result<Outcome, ApiError>) {
        self.metrics
            .write_seconds
            .with_label_values(&[request.command.name()])
            .observe(request.started.elapsed().as_secs_f64());
        // The client may have gone away; nothing to do then.
        let _ = request.reply.send(answer);
    }

    /// One try at the whole batch: sync if needed, plan, commit, read back. Returns the
    /// answers and how many records were written.
    async fn attempt(
        &mut self,
        batch: &[WriteRequest],
    ) -> Result<(Vec<Result<Outcome, ApiError>>, usize), StoreError> {
        self.ensure_producer().await?;
        if !self.synced {
            let offsets = self.commit(&[Record::Noop]).await?;
            self.read_back(&offsets).await?;
            self.synced = true;
        }
        let mut scratch = self.state.read().expect("state poisoned").clone();
        let mut records = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            match ops::plan(&scratch, &request.command) {
                Ok(planned) => {
                    for record in &planned.records {
                        scratch.apply(record).map_err(StoreError::Plan)?;
                    }
                    records.extend(planned.records);
                    answers.push(Ok(planned.outcome));
                }
                Err(e) => answers.push(Err(e)),
            }
        }
        if !records.is_empty() {
            let offsets = self.commit(&records).await?;
            self.read_back(&offsets).await?;
        }
        Ok((answers, records.len()))
    }

    /// Waits until our records are applied here, and checks that they all took effect.
    async fn read_back(&mut self, offsets: &[i64]) -> Result<(), StoreError> {
        let last = offsets.iter().copied().max().unwrap_or(-1);
        self.progress.wait_past(last, KAFKA_TIMEOUT).await?;
        if let Some((offset, conflict)) = self.progress.rejected_among(offsets) {
            return Err(StoreError::Lost { offset, conflict });
        }
        Ok(())
    }

    async fn ensure_producer(&mut self) -> Result<(), StoreError> {
        if self.producer.is_some() {
            return Ok(());
        }
        let mut config = self.kafka.producer_config();
        config.set("transactional.id", &self.transactional_id);
        let producer: FutureProducer<WriterContext> = config.create_with_context(WriterContext(
            FeedlineContext::new(self.platform_metrics.clone()),
        ))?;
        let init = producer.clone();
        let result =
            tokio::task::spawn_blocking(move || init.init_transactions(KAFKA_TIMEOUT)).await;
        match result {
            Ok(Ok(())) => {
                self.producer = Some(producer);
                self.synced = false;
                Ok(())
            }
            Ok(Err(e)) => {
                close(producer);
                Err(e.into())
            }
            Err(e) => {
                close(producer);
                Err(e.into())
            }
        }
    }

    /// Writes `records` in one transaction and returns their offsets.
    async fn commit(&mut self, records: &[Record]) -> Result<Vec<i64>, StoreError> {
        let producer = self.producer.clone().expect("producer initialized");
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let (key, value) = record.encode();
            let mut out = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .key(&key)
                .partition(0);
            if let Some(value) = &value {
                out = out.payload(value);
            }
            let delivery = producer.send_result(out).map_err(|(e, _)| e)?;
            deliveries.push(delivery);
        }
        let committer = producer.clone();
        tokio::task::spawn_blocking(move || committer.commit_transaction(KAFKA_TIMEOUT)).await??;
        let mut offsets = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => offsets.push(d.offset),
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(KafkaError::Canceled.into()),
            }
        }
        Ok(offsets)
    }

    /// Drops the producer (off the runtime: librdkafka flushes and joins a thread on drop).
    fn reset(&mut self) {
        self.synced = false;
        if let Some(producer) = self.producer.take() {
            close(producer);
        }
    }
}

/// librdkafka reports being fenced as an error, but here it is how instances take turns
/// writing: those lines go to debug, everything else to the platform's context.
#[derive(Debug, Clone)]
pub struct WriterContext(FeedlineContext);

fn is_turn_taking(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "fenced",
        "old epoch",
        "concurrent operation",
        "not coordinator",
    ]
    .iter()
    .any(|t| text.contains(t))
}

impl ClientContext for WriterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if is_turn_taking(message) {
            tracing::debug!(target: "librdkafka", fac, "{message}");
        } else {
            self.0.log(level, fac, message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_turn_taking(reason) || is_turn_taking(&error.to_string()) {
            tracing::debug!(target: "librdkafka", error = %error, "{reason}");
        } else {
            self.0.error(error, reason);
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.0.stats(statistics);
    }
}

fn close(producer: FutureProducer<WriterContext>) {
    tokio::task::spawn_blocking(move || drop(producer));
}

fn is_fenced(error: &StoreError) -> bool {
    matches!(error, StoreError::Kafka(e) if is_turn_taking(&e.to_string()))
}

fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << attempt.min(10));
    let capped = exp.min(BACKOFF_MAX);
    capped.mul_f64(rand::random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn failed_writes_answer_50001_or_50002() {
        let timeout = StoreError::ReaderTimeout(KAFKA_TIMEOUT).to_api_error();
        assert_eq!((timeout.status.as_u16(), timeout.code), (503, 50002));
        let timed_out = StoreError::Kafka(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        assert_eq!(timed_out.to_api_error().code, 50002);
        let store = StoreError::ReaderGone.to_api_error();
        assert_eq!((store.status.as_u16(), store.code), (503, 50001));
        assert!(store.message.starts_with("Error in the backend data store"));
    }

    #[test]
    fn kafka_texts_stay_out_of_answers() {
        let err = StoreError::Kafka(KafkaError::ClientCreation(
            "broker-7.internal:9093: connection refused".into(),
        ));
        let answer = err.to_api_error();
        assert!(!answer.message.contains("internal"), "{}", answer.message);
        let timed_out = StoreError::Kafka(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        assert!(
            timed_out
                .to_api_error()
                .message
                .contains("OperationTimedOut"),
            "the code is kept"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(31));
        assert!(backoff(12) <= BACKOFF_MAX.mul_f64(1.5));
    }
}
