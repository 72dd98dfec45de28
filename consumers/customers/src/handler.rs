//! The customer service's [`Domain`]: a batch of `customer-commands` and `order-events` runs
//! the credit rules in one transaction (customers + reservations + outbox rows + processed
//! event ids, see [`feedline::transactional`]).

use std::collections::BTreeSet;

use feedline::codec::{AvroEncoder, CodecError};
use feedline::config::KafkaSettings;
use feedline::contracts::Contracts;
use feedline::transactional::{
    Applied, ApplyError, Domain, TransactionalHandler, Work, all_inserted,
};
use feedline_schemas::types::{CreditEvent, CustomerCommand, CustomerEvent, OrderEvent};
use feedline_schemas::{CREDIT_EVENTS, CUSTOMER_COMMANDS, CUSTOMER_EVENTS, ORDER_EVENTS};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::credit::{Event, Input, Ledger};
use crate::db;
use crate::metrics::{CustomerMetrics, Tally};

/// The key of this service's rows in `processed_events`.
pub const DEDUP_CONSUMER: &str = "customers";

/// The consumer's handler: the platform's transactional handler over [`Customers`].
pub type CustomersHandler = TransactionalHandler<Customers>;

/// Full (prefixed) names of the topics the service emits to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub customer_events: String,
    pub credit_events: String,
}

feedline_schemas::one_of! {
    /// What the service consumes: commands, and the order service's events (credit to
    /// reserve or release).
    #[derive(Debug)]
    pub enum Incoming {
        Command(CustomerCommand) from CUSTOMER_COMMANDS,
        Order(OrderEvent) from ORDER_EVENTS,
    }
}

#[derive(Debug)]
pub struct Customers {
    pub topics: Topics,
    pub customer_events: AvroEncoder<CustomerEvent>,
    pub credit_events: AvroEncoder<CreditEvent>,
    /// `customers-<replica id>`, stamped on every emitted event.
    pub producer: String,
    pub metrics: CustomerMetrics,
}

impl Customers {
    /// The domain over the registered `contracts`, emitting as `producer`.
    pub async fn new(
        contracts: &Contracts,
        kafka: &KafkaSettings,
        producer: String,
        metrics: CustomerMetrics,
    ) -> Result<Self, CodecError> {
        Ok(Customers {
            topics: Topics {
                customer_events: kafka.name(CUSTOMER_EVENTS),
                credit_events: kafka.name(CREDIT_EVENTS),
            },
            customer_events: contracts.encoder(CUSTOMER_EVENTS).await?,
            credit_events: contracts.encoder(CREDIT_EVENTS).await?,
            producer,
            metrics,
        })
    }
}

impl Domain for Customers {
    type Message = Incoming;
    type Input = Input;
    type Summary = Tally;

    fn input(&self, message: &Incoming) -> Result<Option<Input>, String> {
        // Approved and rejected orders ask nothing: nothing to do, nothing to remember.
        match message {
            Incoming::Command(c) => Input::from_command(&c.payload).map(Some),
            Incoming::Order(o) => Input::from_order_event(&o.payload),
        }
    }

    /// Locks the reservations and customers the batch touches, runs the credit rules in
    /// memory and writes the rows set-based.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        work: &[&Work<Input>],
    ) -> Result<Applied<Tally>, ApplyError> {
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
                    let key = emitted.customer_id.to_string().into_bytes();
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
                    messages.push(w.emit(topic, key, payload));
                }
                Err(why) => tally.ignored(why, w.input.customer_id(), &w.event_id),
            }
        }

        // Customers before reservations: a reservation references its customer.
        let new_customers = ledger.customer_inserts();
        let inserted = db::insert_customers(&mut *tx, &new_customers).await?;
        all_inserted(new_customers.len(), inserted)?;
        db::update_customers(&mut *tx, &ledger.customer_updates()).await?;
        let new_reservations = ledger.reservation_inserts();
        let inserted = db::insert_reservations(&mut *tx, &new_reservations).await?;
        all_inserted(new_reservations.len(), inserted)?;
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
