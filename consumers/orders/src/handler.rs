//! The order service's [`Domain`]: a batch of `order-commands` and `credit-events` runs the
//! order state machine in one transaction (order rows + outbox rows + processed event ids,
//! see [`feedline::transactional`]).

use std::collections::BTreeSet;
use std::future::Future;

use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, RegistryClient};
use feedline::errors::{Classify, ErrorClass};
use feedline::outbox::OutboxMessage;
use feedline::transactional::{Applied, Domain, TransactionalHandler, Work};
use feedline_schemas::types::{CreditEvent, Envelope, OrderCommand, OrderEvent};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::{self, DbError};
use crate::metrics::{OrderMetrics, Tally};
use crate::order::{Book, Input};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "orders";

/// The consumer's handler: the platform's transactional handler over [`Orders`].
pub type OrdersHandler = TransactionalHandler<Orders>;

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
    pub credit: String,
    pub events: String,
}

#[derive(Debug)]
pub enum Incoming {
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
            Incoming::Command(c) => Input::from_command(&c.payload, c.occurred_at).map(Some),
            Incoming::Credit(c) => Input::from_credit(&c.payload),
        }
    }
}

#[derive(Debug)]
pub struct Orders {
    pub topics: Topics,
    pub commands: AvroDecoder<OrderCommand, RegistryClient>,
    pub credit: AvroDecoder<CreditEvent, RegistryClient>,
    pub encoder: AvroEncoder<OrderEvent>,
    /// `orders-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: OrderMetrics,
}

impl Domain for Orders {
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

    fn work(&self, message: Incoming) -> Result<Option<Work<Input>>, String> {
        let envelope = message.envelope();
        Ok(message.input()?.map(|input| {
            Work::new(
                envelope.event_id().to_owned(),
                envelope.correlation_id().to_owned(),
                input,
            )
        }))
    }

    /// Locks the orders the batch touches, runs the state machine in memory and writes
    /// the rows set-based.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        work: &[&Work<Input>],
    ) -> Result<Applied<Tally>, Error> {
        let ids: Vec<Uuid> = work
            .iter()
            .map(|w| w.input.order_id())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut book = Book::new(db::lock_orders(&mut *tx, &ids).await?);
        let mut tally = Tally::default();
        let mut messages = Vec::new();
        for w in work {
            match book.apply(&w.input) {
                Ok(emitted) => {
                    tally.emitted(&emitted.payload);
                    let mut event = OrderEvent::new(
                        &self.producer,
                        w.correlation_id.clone(),
                        Some(w.event_id.clone()),
                        emitted.payload,
                    );
                    // An order was placed when the gateway accepted it, not when it was
                    // stored here.
                    if let Input::Place { placed_at, .. } = w.input {
                        event.occurred_at = placed_at;
                    }
                    messages.push(OutboxMessage {
                        topic: self.topics.events.clone(),
                        key: Some(emitted.customer_id.to_string().into_bytes()),
                        payload: self.encoder.encode(&event)?,
                        headers: Vec::new(),
                        trace_context: w.trace_context,
                    });
                }
                Err(why) => tally.ignored(why, w.input.order_id(), &w.event_id),
            }
        }

        let inserts = book.inserts();
        let inserted = db::insert_orders(&mut *tx, &inserts).await?;
        if inserted != inserts.len() as u64 {
            return Err(Error::Conflict(inserts.len() as u64 - inserted));
        }
        db::update_orders(&mut *tx, &book.updates()).await?;
        Ok(Applied {
            messages,
            summary: tally,
        })
    }

    fn committed(&self, tally: Tally) {
        tally.record(&self.metrics);
    }
}
