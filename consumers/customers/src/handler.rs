//! The customer service's [`Domain`]: a batch of `customer-commands` and `order-events` runs
//! the credit rules in one transaction (customers + reservations + outbox rows + processed
//! event ids, see [`feedline::transactional`]).

use std::collections::BTreeSet;
use std::future::Future;

use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, RegistryClient};
use feedline::errors::{Classify, ErrorClass};
use feedline::outbox::OutboxMessage;
use feedline::transactional::{Applied, Domain, TransactionalHandler, Work};
use feedline_schemas::types::{CreditEvent, CustomerCommand, CustomerEvent, Envelope, OrderEvent};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::credit::{Event, Input, Ledger};
use crate::db::{self, DbError};
use crate::metrics::{CustomerMetrics, Tally};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "customers";

/// The consumer's handler: the platform's transactional handler over [`Customers`].
pub type CustomersHandler = TransactionalHandler<Customers>;

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

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Db(e) => e.class(),
            // The other transaction committed: the next try reads its row.
            Error::Conflict(_) => ErrorClass::Transient,
            // Our own event failing our own schema: no rule says why; retried, then the
            // message is set aside.
            Error::Encode(_) => ErrorClass::Unknown,
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
pub enum Incoming {
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

#[derive(Debug)]
pub struct Customers {
    pub topics: Topics,
    pub commands: AvroDecoder<CustomerCommand, RegistryClient>,
    pub orders: AvroDecoder<OrderEvent, RegistryClient>,
    pub customer_events: AvroEncoder<CustomerEvent>,
    pub credit_events: AvroEncoder<CreditEvent>,
    /// `customers-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: CustomerMetrics,
}

impl Domain for Customers {
    type Message = Incoming;
    type Input = Input;
    type Summary = Tally;
    type Error = Error;

    /// Decodes without I/O when the writer's schema is cached (always, after the first
    /// message of a schema).
    fn decode<'a>(
        &'a self,
        msg: &OwnedMessage,
    ) -> impl Future<Output = Result<Incoming, CodecError>> + Send + use<'a> {
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

    fn work(&self, message: Incoming) -> Result<Option<Work<Input>>, String> {
        let envelope = message.envelope();
        // Approved and rejected orders ask nothing: nothing to do, nothing to remember.
        Ok(message.input()?.map(|input| {
            Work::new(
                envelope.event_id().to_owned(),
                envelope.correlation_id().to_owned(),
                input,
            )
        }))
    }

    /// Locks the reservations and customers the batch touches, runs the credit rules in
    /// memory and writes the rows set-based.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        work: &[&Work<Input>],
    ) -> Result<Applied<Tally>, Error> {
        let mut tally = Tally::default();

        let order_ids: Vec<Uuid> = work
            .iter()
            .filter_map(|w| w.input.order_id())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let reservations = db::lock_reservations(&mut *tx, &order_ids).await?;
        // A release touches the reservation's customer, whatever the event says.
        let customer_ids: Vec<Uuid> = work
            .iter()
            .map(|w| w.input.customer_id())
            .chain(reservations.iter().map(|r| r.customer_id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let customers = db::lock_customers(&mut *tx, &customer_ids).await?;
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
                        trace_context: w.trace_context,
                    });
                }
                Err(why) => tally.ignored(why, w.input.customer_id(), &w.event_id),
            }
        }

        // Customers before reservations: a reservation references its customer.
        let new_customers = ledger.customer_inserts();
        let inserted = db::insert_customers(&mut *tx, &new_customers).await?;
        if inserted != new_customers.len() as u64 {
            return Err(Error::Conflict(new_customers.len() as u64 - inserted));
        }
        db::update_customers(&mut *tx, &ledger.customer_updates()).await?;
        let new_reservations = ledger.reservation_inserts();
        let inserted = db::insert_reservations(&mut *tx, &new_reservations).await?;
        if inserted != new_reservations.len() as u64 {
            return Err(Error::Conflict(new_reservations.len() as u64 - inserted));
        }
        db::update_reservations(&mut *tx, &ledger.reservation_updates()).await?;
        Ok(Applied {
            messages,
            summary: tally,
        })
    }

    fn committed(&self, tally: Tally) {
        tally.record(&self.metrics);
    }
}
