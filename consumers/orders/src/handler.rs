//! The consumer's [`Handler`]: a batch of `order-commands` and `credit-events` becomes one
//! PostgreSQL transaction (order rows + outbox rows + processed event ids).

use std::collections::BTreeSet;
use std::future::Future;

use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, RegistryClient, decode_batch};
use feedline::consumer::{Handler, HandlerError, Outcome};
use feedline::outbox::{Outbox, OutboxMessage};
use feedline::{Rejection, dedup};
use feedline_schemas::types::{CreditEvent, Envelope, OrderCommand, OrderEvent};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{self, DbError};
use crate::metrics::{OrderMetrics, Tally};
use crate::order::{Book, Input};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "orders";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot encode an order event: {0}")]
    Encode(#[from] CodecError),
    /// Another transaction inserted an order this batch was placing: the retry sees it.
    #[error("{0} order(s) were inserted concurrently")]
    Conflict(u64),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Db(DbError::Sql(e))
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        match e {
            // Our own event failing our own schema is a bug; retrying cannot fix it.
            Error::Encode(_) => HandlerError::Fatal(e.into()),
            Error::Db(DbError::BadStatus { .. }) => HandlerError::Fatal(e.into()),
            Error::Db(_) | Error::Conflict(_) => HandlerError::Retry(e.into()),
        }
    }
}

/// Full (prefixed) topic names.
#[derive(Debug, Clone)]
pub struct Topics {
    pub commands: String,
    pub credit: String,
    pub events: String,
}

#[derive(Debug)]
enum Incoming {
    Command(OrderCommand),
    Credit(CreditEvent),
}

impl Incoming {
    fn envelope(&self) -> &dyn Envelope {
        match self {
            Incoming::Command(c) => c,
            Incoming::Credit(c) => c,
        }
    }

    fn input(&self) -> Result<Option<Input>, String> {
        match self {
            Incoming::Command(c) => Input::from_command(&c.payload).map(Some),
            Incoming::Credit(c) => Input::from_credit(&c.payload),
        }
    }
}

/// A message that asks something of an order, with the metadata its effects carry on.
struct Work {
    event_id: String,
    correlation_id: String,
    input: Input,
}

#[derive(Debug)]
pub struct OrdersHandler {
    pub pool: PgPool,
    /// Where the batch's events go: rows in the transaction, then handed to the relay.
    pub outbox: Outbox,
    pub topics: Topics,
    pub commands: AvroDecoder<OrderCommand, RegistryClient>,
    pub credit: AvroDecoder<CreditEvent, RegistryClient>,
    pub encoder: AvroEncoder<OrderEvent>,
    /// `orders-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: OrderMetrics,
}

impl Handler for OrdersHandler {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let mut outcome = Outcome::ok();
        let decoded = decode_batch(batch, &mut outcome, |msg| self.decode(msg)).await?;
        let mut work = Vec::with_capacity(decoded.len());
        for (index, incoming) in decoded {
            let envelope = incoming.envelope();
            match incoming.input() {
                Ok(Some(input)) => work.push(Work {
                    event_id: envelope.event_id().to_owned(),
                    correlation_id: envelope.correlation_id().to_owned(),
                    input,
                }),
                Ok(None) => {}
                Err(reason) => {
                    let msg = &batch[index];
                    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %reason, "invalid message");
                    outcome.reject(index, Rejection::new("validation", reason));
                }
            }
        }
        if !work.is_empty() {
            let tally = self.apply(&work).await?;
            tally.record(&self.metrics);
        }
        Ok(outcome)
    }
}

impl OrdersHandler {
    /// Decodes without I/O when the writer's schema is cached (always, after the first
    /// message of a schema); the returned future owns what it needs, so it does not borrow
    /// the message.
    fn decode(
        &self,
        msg: &OwnedMessage,
    ) -> impl Future<Output = Result<Incoming, CodecError>> + use<'_> {
        let bytes = msg.payload().unwrap_or_default();
        let is_command = msg.topic() == self.topics.commands;
        let cached = if is_command {
            self.commands
                .decode_cached(bytes)
                .map(|v| v.map(Incoming::Command))
        } else {
            self.credit
                .decode_cached(bytes)
                .map(|v| v.map(Incoming::Credit))
        }
        .transpose();
        let miss = cached.is_none().then(|| bytes.to_vec());
        async move {
            match (cached, miss) {
                (Some(done), _) => done,
                (None, bytes) => {
                    let bytes = bytes.unwrap_or_default();
                    if is_command {
                        self.commands.decode(&bytes).await.map(Incoming::Command)
                    } else {
                        self.credit.decode(&bytes).await.map(Incoming::Credit)
                    }
                }
            }
        }
    }

    /// Applies the batch in one transaction: dedup, lock the orders it touches, run the
    /// state machine in memory, write rows and outbox messages set-based, commit.
    async fn apply(&self, work: &[Work]) -> Result<Tally, Error> {
        let mut tx = self.pool.begin().await?;
        let event_ids: Vec<String> = work.iter().map(|w| w.event_id.clone()).collect();
        let fresh = dedup::first_time(&mut tx, DEDUP_CONSUMER, &event_ids).await?;
        let work: Vec<&Work> = work
            .iter()
            .zip(fresh)
            .filter_map(|(w, fresh)| fresh.then_some(w))
            .collect();
        let mut tally = Tally::default();
        if work.is_empty() {
            tx.commit().await?;
            return Ok(tally);
        }

        let ids: Vec<Uuid> = work
            .iter()
            .map(|w| w.input.order_id())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut book = Book::new(db::lock_orders(&mut tx, &ids).await?);
        let mut messages = Vec::new();
        for w in work {
            match book.apply(&w.input) {
                Ok(emitted) => {
                    tally.emitted(&emitted.payload);
                    let event = OrderEvent::new(
                        &self.producer,
                        w.correlation_id.clone(),
                        Some(w.event_id.clone()),
                        emitted.payload,
                    );
                    messages.push(OutboxMessage {
                        topic: self.topics.events.clone(),
                        key: Some(emitted.customer_id.to_string().into_bytes()),
                        payload: self.encoder.encode(&event)?,
                        headers: Vec::new(),
                    });
                }
                Err(why) => tally.ignored(why, w.input.order_id(), &w.event_id),
            }
        }

        let inserts = book.inserts();
        let inserted = db::insert_orders(&mut tx, &inserts).await?;
        if inserted != inserts.len() as u64 {
            return Err(Error::Conflict(inserts.len() as u64 - inserted));
        }
        db::update_orders(&mut tx, &book.updates()).await?;
        let enqueued = self.outbox.enqueue(&mut tx, messages).await?;
        tx.commit().await?;
        // Published from memory now; the rows are the fallback should this process die first.
        self.outbox.committed(enqueued);
        Ok(tally)
    }
}
