//! The consumer side: decode a batch, apply it in one SQLite transaction, then update the
//! cache and publish the changes. The runtime stores the batch's offsets only after
//! [`ViewHandler::handle`] returned `Ok`, that is after the commit.

use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Instant;

use feedline::codec::{AvroDecoder, CodecError, RegistryClient, TopicDecoders, decode_each};
use feedline::config::KafkaSettings;
use feedline::{Handler, HandlerError, Outcome, Rejection};
use feedline_schemas::types::{CreditEvent, CustomerEvent, OrderEvent};
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_EVENTS, ORDER_EVENTS, envelope_schema};
use rdkafka::message::OwnedMessage;
use tokio::task::JoinHandle;

use crate::apply::Event;
use crate::cache::Cache;
use crate::feed::FeedHub;
use crate::metrics::ViewMetrics;
use crate::store::{Store, StoreError};
use crate::writer::{Applied, Piece, Writer};
use feedline::Classify as _;

/// The topics order-view consumes (unprefixed).
pub const TOPICS: [&str; 3] = [ORDER_EVENTS, CUSTOMER_EVENTS, CREDIT_EVENTS];

/// One decoder per topic, built once at start-up.
#[derive(Debug)]
pub struct Decoders(TopicDecoders<Event>);

impl Decoders {
    pub fn new(registry: Arc<RegistryClient>, kafka: &KafkaSettings) -> Result<Self, CodecError> {
        fn decoder<T: serde::de::DeserializeOwned>(
            registry: &Arc<RegistryClient>,
            topic: &str,
        ) -> Result<AvroDecoder<T, RegistryClient>, CodecError> {
            let schema = envelope_schema(topic).expect("every event topic has an envelope");
            AvroDecoder::new(registry.clone(), schema, None)
        }
        Ok(Decoders(
            TopicDecoders::new()
                .topic(
                    kafka.name(ORDER_EVENTS),
                    decoder::<OrderEvent>(&registry, ORDER_EVENTS)?,
                )
                .topic(
                    kafka.name(CUSTOMER_EVENTS),
                    decoder::<CustomerEvent>(&registry, CUSTOMER_EVENTS)?,
                )
                .topic(
                    kafka.name(CREDIT_EVENTS),
                    decoder::<CreditEvent>(&registry, CREDIT_EVENTS)?,
                ),
        ))
    }

    /// The full (prefixed) names of the topics.
    pub fn topics(&self) -> &[String] {
        self.0.topics()
    }
}

impl From<OrderEvent> for Event {
    fn from(e: OrderEvent) -> Self {
        Event::Order(e)
    }
}

impl From<CustomerEvent> for Event {
    fn from(e: CustomerEvent) -> Self {
        Event::Customer(e)
    }
}

impl From<CreditEvent> for Event {
    fn from(e: CreditEvent) -> Self {
        Event::Credit(e)
    }
}

/// Applies batches to the read model.
#[derive(Debug)]
pub struct ViewHandler {
    decoders: Decoders,
    cache: Arc<Cache>,
    hub: Arc<FeedHub>,
    metrics: ViewMetrics,
    /// The single writer, used on a blocking thread; the lock also keeps batches (and so
    /// their changes' numbers and publication) in order.
    writer: Arc<Mutex<Writer>>,
}

impl ViewHandler {
    pub async fn new(
        decoders: Decoders,
        store: Store,
        cache: Arc<Cache>,
        hub: Arc<FeedHub>,
        metrics: ViewMetrics,
        retain: i64,
    ) -> Result<Self, StoreError> {
        let writer = store.writer(retain).await?;
        Ok(ViewHandler {
            decoders,
            cache,
            hub,
            metrics,
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    pub fn topics(&self) -> &[String] {
        self.decoders.topics()
    }

    /// Prunes `processed_events` through the single writer, between batches: SQLite has one
    /// writer at a time, and taking turns on the writer's lock spares both a busy wait.
    pub fn pruner(&self) -> Pruner {
        Pruner(self.writer.clone())
    }

    fn count(&self, applied: &Applied) {
        self.metrics
            .events_duplicate
            .inc_by(applied.duplicates as u64);
        for (kind, n) in &applied.per_type {
            self.metrics
                .events_applied
                .with_label_values(&[kind])
                .inc_by(*n);
        }
        self.metrics.changes.inc_by(applied.ws.changes.len() as u64);
        // A clock step between services can make an age negative: counted as zero, as
        // Prometheus histograms take no negative observations well.
        let freshness = self.metrics.freshness_seconds.local();
        for placed_at in &applied.placed_at {
            let ms = applied.committed_at.saturating_sub(*placed_at).max(0);
            freshness.observe(ms as f64 / 1000.0);
        }
        freshness.flush();
    }
}

/// Events per piece handed to the writer while the rest of the batch decodes: small enough
/// that the writer starts early, large enough that handing over costs nothing per event.
const PIECE: usize = 512;

impl Handler for ViewHandler {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let mut outcome = Outcome::ok();
        let mut invalid = Vec::new();
        // The writer starts with the first piece, on its blocking thread, and works on it
        // while this task decodes the next.
        let mut writing: Option<(mpsc::Sender<Piece>, JoinHandle<_>)> = None;
        let mut piece = Vec::with_capacity(PIECE.min(batch.len()));
        let mut hand_over = |events: Vec<Event>| {
            let (pieces, _) = writing.get_or_insert_with(|| self.start_writing());
            // A closed channel means the writer failed: its error comes from its handle.
            let _ = pieces.send(Piece::Events(events));
        };
        decode_each(
            batch,
            &mut outcome,
            &self.decoders.0,
            |index, mut event: Event| {
                // Runs in the message's span: its log lines and trace name the correlation.
                feedline::telemetry::record_correlation_id(event.correlation_id());
                match event.normalize() {
                    Ok(()) => {
                        piece.push(event);
                        if piece.len() == PIECE {
                            hand_over(std::mem::replace(&mut piece, Vec::with_capacity(PIECE)));
                        }
                    }
                    Err(reason) => invalid.push((index, reason)),
                }
            },
        )
        .await?;
        if !piece.is_empty() {
            hand_over(piece);
        }
        for (index, reason) in invalid {
            outcome.reject(index, Rejection::new("validation", reason));
        }
        if let Some((pieces, written)) = writing {
            let _ = pieces.send(Piece::End);
            let applied = written
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                .map_err(failed)?;
            self.count(&applied);
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }
}

impl ViewHandler {
    /// Starts the writer on a blocking thread, fed piece by piece through the channel. All of
    /// the batch's writing happens there, commit and publication included: should the
    /// handler fail or be dropped before the last piece, the writer rolls back, and once it
    /// committed, the cache and the feed have the batch whatever happens to the handler.
    fn start_writing(&self) -> (mpsc::Sender<Piece>, JoinHandle<Result<Applied, StoreError>>) {
        let (sender, pieces) = mpsc::channel();
        let (writer, cache, hub) = (self.writer.clone(), self.cache.clone(), self.hub.clone());
        // The batch's span goes along, so the feed's push is part of the batch's trace.
        let span = tracing::Span::current();
        let written = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.apply(pieces, &cache, &hub)
        });
        (sender, written)
    }
}

/// See [`ViewHandler::pruner`].
#[derive(Debug, Clone)]
pub struct Pruner(Arc<Mutex<Writer>>);

impl Pruner {
    /// [`Writer::prune_chunk`] at the current time, on a blocking thread.
    pub async fn prune_chunk(
        &self,
        retention: std::time::Duration,
        chunk: u32,
    ) -> Result<u64, StoreError> {
        let writer = self.0.clone();
        let now = crate::writer::now_ms();
        tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.prune_chunk(now, retention, chunk)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

fn failed(e: StoreError) -> HandlerError {
    let class = e.class();
    HandlerError::of_class(
        class,
        anyhow::Error::new(e).context("failed to write the read model"),
    )
}
