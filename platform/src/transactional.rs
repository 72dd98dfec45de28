//! The transactional batch handler a service with a PostgreSQL database and an outbox is
//! built on: a batch of messages becomes one transaction holding the state change, the
//! events it emits (outbox rows) and the ids of the messages applied (`processed_events`).
//!
//! The service supplies its [`Domain`] (decode a message, say what it asks, apply a batch of
//! fresh inputs in the transaction); the platform supplies the rest and classifies every
//! failure in one place (see [`crate::errors`]), so that a bad message is dead-lettered, a
//! database blip is waited out, and nothing else stops the consumer.

use std::future::Future;

use feedline_schemas::types::{Consumed, Envelope};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::{PgConnection, PgPool};

use crate::codec::{CodecError, TopicDecoders, decode_each};
use crate::consumer::{Handler, HandlerError, Outcome};
use crate::contracts::Contracts;
use crate::db::DbError;
use crate::dedup;
use crate::dlq::Rejection;
use crate::errors::{Classify, ErrorClass};
use crate::outbox::{Outbox, OutboxMessage};
use crate::telemetry::{self, Traceparent};

/// One message's request, with the metadata its effects carry on.
#[derive(Debug, Clone)]
pub struct Work<I> {
    /// The message's event id: the key of `processed_events`.
    pub event_id: String,
    pub correlation_id: String,
    pub input: I,
    /// The message's span, which the events it causes continue: give it to their
    /// [`OutboxMessage::trace_context`].
    pub trace_context: Option<Traceparent>,
}

impl<I> Work<I> {
    /// The work of the message being handled (built inside the message's span): names the correlation id on that span and keeps its trace context.
    pub fn new(event_id: String, correlation_id: String, input: I) -> Self {
        telemetry::record_correlation_id(&correlation_id);
        Work {
            event_id,
            correlation_id,
            input,
            trace_context: Traceparent::current(),
        }
    }

    /// An event this work causes, for the outbox: it continues the work's trace.
    pub fn emit(&self, topic: &str, key: Vec<u8>, payload: Vec<u8>) -> OutboxMessage {
        OutboxMessage {
            trace_context: self.trace_context,
            ..OutboxMessage::new(topic, Some(key), payload)
        }
    }
}

/// What applying a batch produced: the events to emit, and whatever the service records
/// once the transaction committed (its business counters).
#[derive(Debug)]
pub struct Applied<S> {
    pub messages: Vec<OutboxMessage>,
    pub summary: S,
}

/// A service's business logic over its database.
pub trait Domain: Send + Sync + 'static {
    /// A decoded message: its event id is its key in `processed_events`.
    type Message: Envelope + Consumed + Send + 'static;
    /// What a message asks of the service.
    type Input: Send + Sync;
    type Summary: Send;

    /// What `message` asks: `Ok(None)` when it asks nothing of this service, `Err(reason)`
    /// when it is invalid (it goes to the dead-letter topic).
    fn input(&self, message: &Self::Message) -> Result<Option<Self::Input>, String>;

    /// Applies inputs never applied before, in order, inside `tx` (which the platform
    /// commits): lock what they touch, change the state, return the events to emit. An
    /// error's class decides what the runtime does (a lost connection is retried).
    fn apply(
        &self,
        tx: &mut PgConnection,
        work: &[&Work<Self::Input>],
    ) -> impl Future<Output = Result<Applied<Self::Summary>, ApplyError>> + Send;

    /// Called once the transaction holding `summary`'s changes committed.
    fn committed(&self, summary: Self::Summary);
}

/// What applying a batch fails with, for a domain that writes rows and encodes events.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] CodecError),
    /// Another transaction inserted a row this batch was inserting: the retry sees it.
    #[error("{0} row(s) were inserted concurrently")]
    Conflict(u64),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Db(DbError::Sql(e))
    }
}

impl Classify for ApplyError {
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::Db(e) => e.class(),
            // The other transaction committed: the next try reads its row.
            ApplyError::Conflict(_) => ErrorClass::Transient,
            // Our own event failing our own schema: no rule says why; retried, then the
            // message is set aside.
            ApplyError::Encode(_) => ErrorClass::Unknown,
        }
    }
}

/// Checks that an `INSERT .. ON CONFLICT DO NOTHING` of `expected` rows inserted them all:
/// a row missing was inserted by a concurrent transaction, and the batch is retried.
pub fn all_inserted(expected: usize, inserted: u64) -> Result<(), ApplyError> {
    match (expected as u64).checked_sub(inserted) {
        Some(0) | None => Ok(()),
        Some(missing) => Err(ApplyError::Conflict(missing)),
    }
}

/// A [`Handler`] that runs a [`Domain`] in one transaction per batch.
#[derive(Debug)]
pub struct TransactionalHandler<D: Domain> {
    pub pool: PgPool,
    /// The decoders of the domain's topics, one per topic: each message is decoded with its
    /// topic's (see [`crate::codec::decode_each`]).
    pub decoders: TopicDecoders<D::Message>,
    /// Where the batch's events go: rows in the transaction, then handed to the relay.
    pub outbox: Outbox,
    /// This service's name in `processed_events`.
    pub dedup_consumer: &'static str,
    pub domain: D,
}

#[derive(Debug, thiserror::Error)]
enum TxError<E> {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Domain(E),
}

impl<E: Classify> Classify for TxError<E> {
    fn class(&self) -> ErrorClass {
        match self {
            TxError::Database(e) => e.class(),
            TxError::Domain(e) => e.class(),
        }
    }
}

impl<D: Domain> Handler for TransactionalHandler<D> {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let mut outcome = Outcome::ok();
        let mut work = Vec::with_capacity(batch.len());
        let mut invalid = Vec::new();
        // This runs in each message's span (decode_each), so Work::new finds it.
        decode_each(
            batch,
            &mut outcome,
            &self.decoders,
            |index, message| match self.domain.input(&message) {
                Ok(Some(input)) => {
                    // Work::new names the correlation on the span first: the line carries it.
                    let w = Work::new(
                        message.event_id().to_owned(),
                        message.correlation_id().to_owned(),
                        input,
                    );
                    tracing::debug!(target: "feedline::consumer", event_id = %w.event_id, "message to apply");
                    work.push(w)
                }
                Ok(None) => {}
                Err(reason) => {
                    let msg = &batch[index];
                    tracing::warn!(topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), %reason, "invalid message");
                    invalid.push((index, reason));
                }
            },
        )
        .await?;
        for (index, reason) in invalid {
            outcome.reject(index, Rejection::new("validation", reason));
        }
        if !work.is_empty() {
            self.apply(&work).await.map_err(HandlerError::classified)?;
        }
        Ok(outcome)
    }
}

impl<D: Domain> TransactionalHandler<D> {
    /// The handler of `domain` over `pool`, its events written to the outbox in `pool`.
    pub fn new(
        pool: PgPool,
        dedup_consumer: &'static str,
        contracts: &Contracts,
        domain: D,
    ) -> Result<Self, CodecError> {
        Ok(TransactionalHandler {
            decoders: contracts.decoders()?,
            outbox: Outbox::new(pool.clone()),
            pool,
            dedup_consumer,
            domain,
        })
    }

    /// The topics the domain consumes (full names).
    pub fn topics(&self) -> &[String] {
        self.decoders.topics()
    }

    async fn apply(&self, work: &[Work<D::Input>]) -> Result<(), TxError<ApplyError>> {
        let mut tx = self.pool.begin().await?;
        let event_ids: Vec<String> = work.iter().map(|w| w.event_id.clone()).collect();
        let fresh = dedup::first_time(&mut tx, self.dedup_consumer, &event_ids).await?;
        let work: Vec<&Work<D::Input>> = work
            .iter()
            .zip(fresh)
            .filter_map(|(w, fresh)| fresh.then_some(w))
            .collect();
        if work.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let applied = self
            .domain
            .apply(&mut tx, &work)
            .await
            .map_err(TxError::Domain)?;
        let enqueued = self.outbox.enqueue(&mut tx, applied.messages).await?;
        tx.commit().await?;
        // Published from memory now; the rows are the fallback should this process die first.
        self.outbox.committed(enqueued);
        self.domain.committed(applied.summary);
        Ok(())
    }
}
