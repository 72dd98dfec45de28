//! The order service's [`Domain`]: a batch of `order-commands` and `credit-events` runs the
//! order state machine in one transaction (order rows + outbox rows + processed event ids,
//! see [`feedline::transactional`]).

use std::collections::BTreeSet;

use feedline::codec::{AvroEncoder, CodecError};
use feedline::config::KafkaSettings;
use feedline::contracts::Contracts;
use feedline::transactional::{
    Applied, ApplyError, Domain, TransactionalHandler, Work, all_inserted,
};
use feedline_schemas::types::{CreditEvent, OrderCommand, OrderEvent};
use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS, ORDER_EVENTS};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db;
use crate::metrics::{OrderMetrics, Tally};
use crate::order::{Book, Input};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "orders";

/// The consumer's handler: the platform's transactional handler over [`Orders`].
pub type OrdersHandler = TransactionalHandler<Orders>;

feedline_schemas::one_of! {
    /// What the service consumes: commands, and the customer service's credit decisions.
    #[derive(Debug)]
    pub enum Incoming {
        Command(OrderCommand) from ORDER_COMMANDS,
        Credit(CreditEvent) from CREDIT_EVENTS,
    }
}

#[derive(Debug)]
pub struct Orders {
    /// Where the order events go (full name).
    pub events: String,
    pub encoder: AvroEncoder<OrderEvent>,
    /// `orders-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: OrderMetrics,
}

impl Orders {
    /// The domain over the registered `contracts`, emitting as `producer`.
    pub async fn new(
        contracts: &Contracts,
        kafka: &KafkaSettings,
        producer: String,
        metrics: OrderMetrics,
    ) -> Result<Self, CodecError> {
        Ok(Orders {
            events: kafka.name(ORDER_EVENTS),
            encoder: contracts.encoder(ORDER_EVENTS).await?,
            producer,
            metrics,
        })
    }
}

impl Domain for Orders {
    type Message = Incoming;
    type Input = Input;
    type Summary = Tally;

    fn input(&self, message: &Incoming) -> Result<Option<Input>, String> {
        match message {
            Incoming::Command(c) => Input::from_command(&c.payload, c.occurred_at).map(Some),
            Incoming::Credit(c) => Input::from_credit(&c.payload),
        }
    }

    /// Locks the orders the batch touches, runs the state machine in memory and writes
    /// the rows set-based.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        work: &[&Work<Input>],
    ) -> Result<Applied<Tally>, ApplyError> {
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
                    messages.push(w.emit(
                        &self.events,
                        emitted.customer_id.to_string().into_bytes(),
                        self.encoder.encode(&event)?,
                    ));
                }
                Err(why) => tally.ignored(why, w.input.order_id(), &w.event_id),
            }
        }

        let inserts = book.inserts();
        all_inserted(inserts.len(), db::insert_orders(&mut *tx, &inserts).await?)?;
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
