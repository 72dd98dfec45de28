//! Builders of the messages the services exchange, for the tests of every crate: commands
//! as the gateway sends them, events as the services publish them. Ids are anything
//! printable (a `Uuid` or a `&str`); the customer comes before the order everywhere, as the
//! customer is the Kafka key. Each message is stamped now (see [`At`] for another time).

use std::fmt::Display;

use feedline_schemas::types::*;

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn order_command(payload: OrderCommandPayload) -> OrderCommand {
    OrderCommand::new("test-gateway", new_id(), None, payload)
}

pub fn customer_command(payload: CustomerCommandPayload) -> CustomerCommand {
    CustomerCommand::new("test-gateway", new_id(), None, payload)
}

pub fn order_event(payload: OrderEventPayload) -> OrderEvent {
    OrderEvent::new("test", new_id(), None, payload)
}

pub fn customer_event(payload: CustomerEventPayload) -> CustomerEvent {
    CustomerEvent::new("test", new_id(), None, payload)
}

pub fn credit_event(payload: CreditEventPayload) -> CreditEvent {
    CreditEvent::new("test", new_id(), None, payload)
}

// Commands.

pub fn place(customer: impl Display, order: impl Display, total: i64) -> OrderCommand {
    order_command(OrderCommandPayload::PlaceOrder(PlaceOrder {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        total_cents: total,
    }))
}

pub fn cancel(customer: impl Display, order: impl Display) -> OrderCommand {
    order_command(OrderCommandPayload::CancelOrder(CancelOrder {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        reason: Some("changed my mind".into()),
    }))
}

pub fn register(customer: impl Display, limit: i64) -> CustomerCommand {
    customer_command(CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
        customer_id: customer.to_string(),
        name: "Ada Lovelace".into(),
        credit_limit_cents: limit,
        tenant: None,
    }))
}

pub fn change_limit(customer: impl Display, limit: i64) -> CustomerCommand {
    customer_command(CustomerCommandPayload::ChangeCreditLimit(
        ChangeCreditLimit {
            customer_id: customer.to_string(),
            credit_limit_cents: limit,
        },
    ))
}

// Customer events.

pub fn registered(customer: impl Display, name: &str, limit: i64) -> CustomerEvent {
    customer_event(CustomerEventPayload::CustomerRegistered(
        CustomerRegistered {
            customer_id: customer.to_string(),
            name: name.into(),
            credit_limit_cents: limit,
            tenant: None,
        },
    ))
}

/// A registration of a customer of `tenant`.
pub fn registered_in(
    customer: impl Display,
    name: &str,
    limit: i64,
    tenant: &str,
) -> CustomerEvent {
    let mut event = registered(customer, name, limit);
    if let CustomerEventPayload::CustomerRegistered(p) = &mut event.payload {
        p.tenant = Some(tenant.into());
    }
    event
}

// Order events.

pub fn created(customer: impl Display, order: impl Display, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderCreated(OrderCreated {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        total_cents: total,
    }))
}

pub fn approved(customer: impl Display, order: impl Display, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderApproved(OrderApproved {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        total_cents: total,
    }))
}

pub fn rejected(
    customer: impl Display,
    order: impl Display,
    total: i64,
    reason: &str,
) -> OrderEvent {
    order_event(OrderEventPayload::OrderRejected(OrderRejected {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        total_cents: total,
        reason: reason.into(),
    }))
}

pub fn cancelled(customer: impl Display, order: impl Display, total: i64) -> OrderEvent {
    order_event(OrderEventPayload::OrderCancelled(OrderCancelled {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        total_cents: total,
        reason: Some("customer asked".into()),
    }))
}

// Credit events.

pub fn reserved(
    customer: impl Display,
    order: impl Display,
    amount: i64,
    reserved: i64,
    limit: i64,
) -> CreditEvent {
    credit_event(CreditEventPayload::CreditReserved(CreditReserved {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        amount_cents: amount,
        credit_reserved_cents: reserved,
        credit_limit_cents: limit,
    }))
}

pub fn exceeded(
    customer: impl Display,
    order: impl Display,
    amount: i64,
    available: i64,
) -> CreditEvent {
    credit_event(CreditEventPayload::CreditLimitExceeded(
        CreditLimitExceeded {
            order_id: order.to_string(),
            customer_id: customer.to_string(),
            amount_cents: amount,
            credit_available_cents: available,
            reason: "credit limit exceeded".into(),
        },
    ))
}

pub fn released(
    customer: impl Display,
    order: impl Display,
    amount: i64,
    reserved: i64,
) -> CreditEvent {
    credit_event(CreditEventPayload::CreditReleased(CreditReleased {
        order_id: order.to_string(),
        customer_id: customer.to_string(),
        amount_cents: amount,
        credit_reserved_cents: reserved,
    }))
}

/// The Kafka key of an order event: its customer.
pub fn order_key(event: &OrderEvent) -> &str {
    match &event.payload {
        OrderEventPayload::OrderCreated(p) => &p.customer_id,
        OrderEventPayload::OrderApproved(p) => &p.customer_id,
        OrderEventPayload::OrderRejected(p) => &p.customer_id,
        OrderEventPayload::OrderCancelled(p) => &p.customer_id,
    }
}

/// The Kafka key of a customer event: its customer.
pub fn customer_key(event: &CustomerEvent) -> &str {
    match &event.payload {
        CustomerEventPayload::CustomerRegistered(p) => &p.customer_id,
        CustomerEventPayload::CreditLimitChanged(p) => &p.customer_id,
    }
}

/// The Kafka key of a credit event: its customer.
pub fn credit_key(event: &CreditEvent) -> &str {
    match &event.payload {
        CreditEventPayload::CreditReserved(p) => &p.customer_id,
        CreditEventPayload::CreditLimitExceeded(p) => &p.customer_id,
        CreditEventPayload::CreditReleased(p) => &p.customer_id,
    }
}

/// Sets `occurred_at`.
pub trait At: Sized {
    fn at(self, millis: i64) -> Self;
}

macro_rules! at {
    ($($envelope:ty),*) => {$(
        impl At for $envelope {
            fn at(mut self, millis: i64) -> Self {
                self.occurred_at = millis;
                self
            }
        }
    )*};
}

at!(
    OrderCommand,
    CustomerCommand,
    OrderEvent,
    CustomerEvent,
    CreditEvent
);

/// The order an order event is about.
pub fn order_id(event: &OrderEvent) -> &str {
    match &event.payload {
        OrderEventPayload::OrderCreated(p) => &p.order_id,
        OrderEventPayload::OrderApproved(p) => &p.order_id,
        OrderEventPayload::OrderRejected(p) => &p.order_id,
        OrderEventPayload::OrderCancelled(p) => &p.order_id,
    }
}
