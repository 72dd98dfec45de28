//! The consumer's [`Handler`]: a batch of `customer-commands` and `order-events` becomes one
//! PostgreSQL transaction (customers + reservations + outbox rows + processed event ids).

use std::collections::BTreeSet;
use std::future::Future;

use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, RegistryClient, decode_batch};
use feedline::consumer::{Handler, HandlerError, Outcome};
use feedline::outbox::{Outbox, OutboxMessage};
use feedline::{Rejection, dedup};
use feedline_schemas::types::{CreditEvent, CustomerCommand, CustomerEvent, Envelope, OrderEvent};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use uuid::Uuid;

use crate::credit::{Event, Input, Ledger};
use crate::db::{self, DbError};
use crate::metrics::{CustomerMetrics, Tally};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "customers";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot encode a customer or credit event: {0}")]
    Encode(#[from] CodecError),
    /// Another transaction inserted a customer or reservation this batch was inserting:
    /// the retry sees it.
    #[error("{0} row(s) were inserted concurrently")]
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
            Error::Encode(_) | Error::Db(DbError::BadStatus { .. }) => {
                HandlerError::Fatal(e.into())
            }
            Error::Db(_) | Error::Conflict(_) => HandlerError::Retry(e.into()),
        }
    }
}

/// Full (prefixed) topic names.
#[derive(Debug, Clone)]
pub struct Topics {
    pub commands: String,
    pub orders: String,
    pub customer_events: String,
    pub credit_events: String,
}

#[derive(Debug)]
enum Incoming {
    Command(CustomerCommand),
    Order(OrderEvent),
}

impl Incoming {
    fn envelope(&self) -> &dyn Envelope {
        match self {
            Incoming::Command(c) => c,
            Incoming::Order(o) => o,
        }
    }

    fn input(&self) -> Result<Option<Input>, String> {
        match self {
            Incoming::Command(c) => Input::from_command(&c.payload).map(Some),
            Incoming::Order(o) => Input::from_order_event(&o.payload),
        }
    }
}

/// A message that asks something of a customer, with the metadata its effects carry on.
struct Work {
    event_id: String,
    correlation_id: String,
    input: Input,
}

#[derive(Debug)]
pub struct CustomersHandler {
    pub pool: PgPool,
    /// Where the batch's events go: rows in the transaction, then handed to the relay.
    pub outbox: Outbox,
    pub topics: Topics,
    pub commands: AvroDecoder<CustomerCommand, RegistryClient>,
    pub orders: AvroDecoder<OrderEvent, RegistryClient>,
    pub customer_events: AvroEncoder<CustomerEvent>,
    pub credit_events: AvroEncoder<CreditEvent>,
    /// `customers-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: CustomerMetrics,
}

impl Handler for CustomersHandler {
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
                // Approved and rejected orders: nothing to do, nothing to remember.
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

impl CustomersHandler {
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
            self.orders
                .decode_cached(bytes)
                .map(|v| v.map(Incoming::Order))
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
                        self.orders.decode(&bytes).await.map(Incoming::Order)
                    }
                }
            }
        }
    }

    /// Applies the batch in one transaction: dedup, lock the reservations and customers it
    /// touches, run the credit rules in memory, write rows and outbox messages set-based,
    /// commit.
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

        let order_ids: Vec<Uuid> = work
            .iter()
            .filter_map(|w| w.input.order_id())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let reservations = db::lock_reservations(&mut tx, &order_ids).await?;
        // A release touches the reservation's customer, whatever the event says.
        let customer_ids: Vec<Uuid> = work
            .iter()
            .map(|w| w.input.customer_id())
            .chain(reservations.iter().map(|r| r.customer_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let customers = db::lock_customers(&mut tx, &customer_ids).await?;
        let mut ledger = Ledger::new(customers, reservations);

        let mut messages = Vec::new();
        for w in work {
            match ledger.apply(&w.input) {
                Ok(emitted) => {
                    tally.emitted(&emitted.event);
                    let key = Some(emitted.customer_id.to_string().into_bytes());
                    let cause = Some(w.event_id.clone());
                    let correlation = w.correlation_id.clone();
                    let (topic, payload) = match emitted.event {
                        Event::Customer(payload) => (
                            &self.topics.customer_events,
                            self.customer_events.encode(&CustomerEvent::new(
                                &self.producer,
                                correlation,
                                cause,
                                payload,
                            ))?,
                        ),
                        Event::Credit(payload) => (
                            &self.topics.credit_events,
                            self.credit_events.encode(&CreditEvent::new(
                                &self.producer,
                                correlation,
                                cause,
                                payload,
                            ))?,
                        ),
                    };
                    messages.push(OutboxMessage {
                        topic: topic.clone(),
                        key,
                        payload,
                        headers: Vec::new(),
                    });
                }
                Err(why) => tally.ignored(why, w.input.customer_id(), &w.event_id),
            }
        }

        // Customers before reservations: a reservation references its customer.
        let new_customers = ledger.customer_inserts();
        let inserted = db::insert_customers(&mut tx, &new_customers).await?;
        if inserted != new_customers.len() as u64 {
            return Err(Error::Conflict(new_customers.len() as u64 - inserted));
        }
        db::update_customers(&mut tx, &ledger.customer_updates()).await?;
        let new_reservations = ledger.reservation_inserts();
        let inserted = db::insert_reservations(&mut tx, &new_reservations).await?;
        if inserted != new_reservations.len() as u64 {
            return Err(Error::Conflict(new_reservations.len() as u64 - inserted));
        }
        db::update_reservations(&mut tx, &ledger.reservation_updates()).await?;
        let enqueued = self.outbox.enqueue(&mut tx, messages).await?;
        tx.commit().await?;
        // Published from memory now; the rows are the fallback should this process die first.
        self.outbox.committed(enqueued);
        Ok(tally)
    }
}
