//! The consumer side: decode a batch, apply it in one SQLite transaction, then update the
//! cache and publish the changes. The runtime stores the batch's offsets only after
//! [`ViewHandler::handle`] returned `Ok`, that is after the commit.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use feedline::codec::{AvroDecoder, CodecError, RegistryClient, decode_batch};
use feedline::config::KafkaSettings;
use feedline::{Handler, HandlerError, Outcome, Rejection};
use feedline_schemas::types::{CreditEvent, CustomerEvent, OrderEvent};
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_EVENTS, ORDER_EVENTS, envelope_schema};
use futures::future::{Either, ready};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::SqliteConnection;

use crate::apply::{Event, EventKey, WorkingSet};
use crate::cache::Cache;
use crate::feed::FeedHub;
use crate::metrics::ViewMetrics;
use crate::model::{Customer, Order};
use crate::store::{Store, StoreError, Writes};

/// The topics order-view consumes (unprefixed).
pub const TOPICS: [&str; 3] = [ORDER_EVENTS, CUSTOMER_EVENTS, CREDIT_EVENTS];

/// One decoder per topic, built once at start-up.
pub struct Decoders {
    topics: [String; 3],
    order: AvroDecoder<OrderEvent, RegistryClient>,
    customer: AvroDecoder<CustomerEvent, RegistryClient>,
    credit: AvroDecoder<CreditEvent, RegistryClient>,
}

impl std::fmt::Debug for Decoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoders")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
enum Topic {
    Order,
    Customer,
    Credit,
}

impl Decoders {
    pub fn new(registry: Arc<RegistryClient>, kafka: &KafkaSettings) -> Result<Self, CodecError> {
        let schema = |topic| envelope_schema(topic).expect("every event topic has an envelope");
        Ok(Decoders {
            topics: TOPICS.map(|t| kafka.name(t)),
            order: AvroDecoder::new(registry.clone(), schema(ORDER_EVENTS), None)?,
            customer: AvroDecoder::new(registry.clone(), schema(CUSTOMER_EVENTS), None)?,
            credit: AvroDecoder::new(registry, schema(CREDIT_EVENTS), None)?,
        })
    }

    /// The full (prefixed) names of the topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Decodes without I/O when the writer's schema is known (every message but the first of
    /// each schema id); otherwise copies the bytes and fetches the schema.
    fn decode<'s>(
        &'s self,
        msg: &OwnedMessage,
    ) -> impl Future<Output = Result<Event, CodecError>> + Send + use<'s> {
        let bytes = msg.payload().unwrap_or_default();
        let topic = match self.topics.iter().position(|t| t == msg.topic()) {
            Some(0) => Topic::Order,
            Some(1) => Topic::Customer,
            Some(_) => Topic::Credit,
            None => {
                return Either::Left(ready(Err(CodecError::Decode {
                    id: 0,
                    reason: format!("unexpected topic {}", msg.topic()),
                })));
            }
        };
        match self.decode_cached(topic, bytes) {
            Ok(Some(event)) => Either::Left(ready(Ok(event))),
            Err(e) => Either::Left(ready(Err(e))),
            Ok(None) => {
                let bytes = bytes.to_vec();
                Either::Right(async move { self.fetch_and_decode(topic, &bytes).await })
            }
        }
    }

    fn decode_cached(&self, topic: Topic, bytes: &[u8]) -> Result<Option<Event>, CodecError> {
        Ok(match topic {
            Topic::Order => self.order.decode_cached(bytes)?.map(Event::Order),
            Topic::Customer => self.customer.decode_cached(bytes)?.map(Event::Customer),
            Topic::Credit => self.credit.decode_cached(bytes)?.map(Event::Credit),
        })
    }

    async fn fetch_and_decode(&self, topic: Topic, bytes: &[u8]) -> Result<Event, CodecError> {
        Ok(match topic {
            Topic::Order => Event::Order(self.order.decode(bytes).await?),
            Topic::Customer => Event::Customer(self.customer.decode(bytes).await?),
            Topic::Credit => Event::Credit(self.credit.decode(bytes).await?),
        })
    }
}

/// What the writer remembers between batches.
#[derive(Debug)]
struct WriterState {
    next_seq: i64,
    /// The oldest change still in the log.
    oldest: Option<i64>,
    /// A write failed after it began: whether it committed is unknown, so the numbering is
    /// re-read and the cache dropped before the next batch.
    unsure: bool,
}

/// Applies batches to the read model.
#[derive(Debug)]
pub struct ViewHandler {
    decoders: Decoders,
    store: Store,
    cache: Arc<Cache>,
    hub: Arc<FeedHub>,
    metrics: ViewMetrics,
    /// Changes kept in the log for resuming clients.
    retain: i64,
    state: tokio::sync::Mutex<WriterState>,
}

/// A batch applied in memory, with the statements that write it.
struct Prepared {
    ws: WorkingSet,
    /// Events applied, by type.
    per_type: HashMap<&'static str, u64>,
    writes: Writes,
}

impl Prepared {
    fn apply<'e>(mut ws: WorkingSet, events: impl Iterator<Item = &'e Event>) -> Self {
        let mut per_type: HashMap<&'static str, u64> = HashMap::new();
        for event in events {
            ws.apply(event);
            *per_type.entry(event.type_name()).or_default() += 1;
        }
        let writes = Store::prepare_writes(&ws);
        Prepared {
            ws,
            per_type,
            writes,
        }
    }
}

/// What one committed batch did.
struct Applied {
    ws: WorkingSet,
    duplicates: usize,
    /// Events applied (not duplicates), by type.
    per_type: HashMap<&'static str, u64>,
    oldest: Option<i64>,
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
        let (oldest, newest) = store.seq_bounds().await?;
        Ok(ViewHandler {
            decoders,
            store,
            cache,
            hub,
            metrics,
            retain: retain.max(1),
            state: tokio::sync::Mutex::new(WriterState {
                next_seq: newest + 1,
                oldest,
                unsure: false,
            }),
        })
    }

    pub fn topics(&self) -> &[String] {
        self.decoders.topics()
    }

    async fn write(
        &self,
        state: &WriterState,
        events: &Arc<[Event]>,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.store.begin().await?;
        let keys: Vec<EventKey> = events.iter().map(Event::key).collect();
        // Nearly every batch is entirely new. So the rows all its events touch are loaded
        // first, and the batch is applied and its statements built on another thread while
        // SQLite records the keys: the two overlap instead of taking turns. A batch holding
        // events applied before is applied again without them (no row was written yet).
        let mut ws = WorkingSet::new(state.next_seq);
        self.load(&mut tx, &mut ws, &events.iter().collect::<Vec<_>>())
            .await?;
        let optimistic = tokio::task::spawn_blocking({
            let events = events.clone();
            move || Prepared::apply(ws, events.iter())
        });
        let fresh = Store::record_processed(&mut tx, &keys).await?;
        let optimistic = match optimistic.await {
            Ok(prepared) => prepared,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let (prepared, duplicates) = if fresh.iter().all(|new| *new) {
            (optimistic, 0)
        } else {
            let events: Vec<&Event> = events
                .iter()
                .zip(&fresh)
                .filter_map(|(e, fresh)| fresh.then_some(e))
                .collect();
            let mut ws = WorkingSet::new(state.next_seq);
            self.load(&mut tx, &mut ws, &events).await?;
            let duplicates = fresh.len() - events.len();
            (Prepared::apply(ws, events.into_iter()), duplicates)
        };
        let Prepared {
            ws,
            per_type,
            writes,
        } = prepared;
        Store::execute(&mut tx, writes).await?;

        let newest = ws.next_seq() - 1;
        let mut oldest = state.oldest.or(ws.changes.first().map(|c| c.seq));
        // Trim in steps of a tenth of the log, not at every batch.
        if let Some(first) = oldest
            && newest - first + 1 > self.retain + self.retain / 10
        {
            Store::trim_changes(&mut tx, newest - self.retain).await?;
            oldest = Some(newest - self.retain + 1);
        }
        tx.commit().await?;
        Ok(Applied {
            duplicates,
            per_type,
            ws,
            oldest,
        })
    }

    /// Loads the rows `events` touch into `ws`: from the cache, the rest from SQLite.
    async fn load(
        &self,
        conn: &mut SqliteConnection,
        ws: &mut WorkingSet,
        events: &[&Event],
    ) -> Result<(), StoreError> {
        let mut order_ids = HashSet::new();
        let mut customer_ids = HashSet::new();
        let mut registrations = HashSet::new();
        for e in events {
            customer_ids.insert(e.customer_id());
            if let Some(order) = e.order_id() {
                order_ids.insert(order);
            }
            if let Some(registration) = e.registered_name() {
                registrations.insert(registration);
            }
        }
        let mut missing = Vec::new();
        for id in order_ids {
            match self.cache.order(id) {
                Some(order) => {
                    ws.orders.insert(id.to_owned(), Order::clone(&order));
                }
                None => missing.push(id),
            }
        }
        for order in Store::load_orders(conn, &missing).await? {
            ws.orders.insert(order.id.clone(), order);
        }
        missing.clear();
        for id in customer_ids {
            match self.cache.customer(id) {
                Some(customer) => {
                    ws.customers
                        .insert(id.to_owned(), Customer::clone(&customer));
                }
                None => missing.push(id),
            }
        }
        for customer in Store::load_customers(conn, &missing).await? {
            ws.customers.insert(customer.id.clone(), customer);
        }
        // Orders that arrived before their customer's registration take its name.
        for (customer, name) in registrations {
            for order in Store::orders_named_otherwise(conn, customer, name).await? {
                ws.orders.entry(order.id.clone()).or_insert(order);
            }
        }
        Ok(())
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
    }
}

impl Handler for ViewHandler {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let started = Instant::now();

        let mut outcome = Outcome::ok();
        let decoded = decode_batch(batch, &mut outcome, |msg| self.decoders.decode(msg)).await?;
        let mut events = Vec::with_capacity(decoded.len());
        for (index, mut event) in decoded {
            match event.normalize() {
                Ok(()) => events.push(event),
                Err(reason) => outcome.reject(index, Rejection::new("validation", reason)),
            }
        }
        if !events.is_empty() {
            self.apply_events(events.into()).await?;
        }
        self.metrics.batch_size.observe(batch.len() as f64);
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(outcome)
    }
}

impl ViewHandler {
    /// Applies decoded events (ids in canonical form) in one transaction, then updates the
    /// cache and publishes the changes. Returns the number of changes.
    pub async fn apply_events(&self, events: Arc<[Event]>) -> Result<usize, HandlerError> {
        let mut state = self.state.lock().await;
        if state.unsure {
            let (oldest, newest) = self.store.seq_bounds().await.map_err(retry)?;
            self.cache.clear();
            *state = WriterState {
                next_seq: newest + 1,
                oldest,
                unsure: false,
            };
        }
        let applied = match self.write(&state, &events).await {
            Ok(applied) => applied,
            Err(e) => {
                state.unsure = true;
                return Err(match e {
                    StoreError::Corrupt { .. } => HandlerError::Fatal(e.into()),
                    e => retry(e),
                });
            }
        };
        state.next_seq = applied.ws.next_seq();
        state.oldest = applied.oldest;
        // Committed: now readers may see it (still under the lock, so changes are published
        // in the order they were committed).
        self.cache
            .update(applied.ws.orders.values(), applied.ws.customers.values());
        self.hub.publish(&applied.ws.changes);
        drop(state);
        self.count(&applied);
        Ok(applied.ws.changes.len())
    }
}

fn retry(e: StoreError) -> HandlerError {
    HandlerError::Retry(anyhow::Error::new(e).context("failed to write the read model"))
}
