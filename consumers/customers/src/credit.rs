//! Customers and their credit, free of I/O: the handler loads what a batch touches into a
//! [`Ledger`], applies every message to it in order, and writes the result back once.

use std::collections::HashMap;
use std::fmt;

use feedline_schemas::types::{
    CreditEventPayload, CreditLimitChanged, CreditLimitExceeded, CreditReleased, CreditReserved,
    CustomerCommandPayload, CustomerEventPayload, CustomerRegistered, OrderEventPayload,
};
use uuid::Uuid;

/// Reason of a [`CreditLimitExceeded`] for a customer nobody registered.
pub const UNKNOWN_CUSTOMER: &str = "unknown customer";
/// Reason of a [`CreditLimitExceeded`] when the order does not fit the limit.
pub const LIMIT_EXCEEDED: &str = "credit limit exceeded";

/// One row of `customers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: Uuid,
    pub name: String,
    pub credit_limit_cents: i64,
    pub credit_reserved_cents: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Reserved,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "RESERVED",
            ReservationStatus::Released => "RELEASED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "RESERVED" => Some(ReservationStatus::Reserved),
            "RELEASED" => Some(ReservationStatus::Released),
            _ => None,
        }
    }
}

/// One row of `reservations`: the credit an order holds (or held).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub amount_cents: i64,
    pub status: ReservationStatus,
}

/// What a consumed message asks of a customer, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Register {
        customer_id: Uuid,
        name: String,
        credit_limit_cents: i64,
        /// Passed on to the event: order-view shows the customer to that tenant only.
        tenant: Option<String>,
    },
    ChangeLimit {
        customer_id: Uuid,
        credit_limit_cents: i64,
    },
    /// An order wants credit.
    OrderCreated {
        order_id: Uuid,
        customer_id: Uuid,
        total_cents: i64,
    },
    /// An order gives its credit back (if it got any).
    OrderCancelled { order_id: Uuid, customer_id: Uuid },
}

fn uuid(field: &str, text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|e| format!("{field} {text:?} is not a uuid: {e}"))
}

fn not_negative(field: &str, cents: i64) -> Result<i64, String> {
    if cents < 0 {
        return Err(format!("{field} must not be negative, got {cents}"));
    }
    Ok(cents)
}

impl Input {
    pub fn customer_id(&self) -> Uuid {
        match self {
            Input::Register { customer_id, .. }
            | Input::ChangeLimit { customer_id, .. }
            | Input::OrderCreated { customer_id, .. }
            | Input::OrderCancelled { customer_id, .. } => *customer_id,
        }
    }

    pub fn order_id(&self) -> Option<Uuid> {
        match self {
            Input::OrderCreated { order_id, .. } | Input::OrderCancelled { order_id, .. } => {
                Some(*order_id)
            }
            Input::Register { .. } | Input::ChangeLimit { .. } => None,
        }
    }

    /// A command from `customer-commands`; `Err` names what makes it malformed.
    pub fn from_command(payload: &CustomerCommandPayload) -> Result<Self, String> {
        match payload {
            CustomerCommandPayload::RegisterCustomer(r) => Ok(Input::Register {
                customer_id: uuid("customer_id", &r.customer_id)?,
                name: r.name.clone(),
                credit_limit_cents: not_negative("credit_limit_cents", r.credit_limit_cents)?,
                tenant: r.tenant.clone(),
            }),
            CustomerCommandPayload::ChangeCreditLimit(c) => Ok(Input::ChangeLimit {
                customer_id: uuid("customer_id", &c.customer_id)?,
                credit_limit_cents: not_negative("credit_limit_cents", c.credit_limit_cents)?,
            }),
        }
    }

    /// An event from `order-events`; `Ok(None)` for the ones credit does not depend on
    /// (approved and rejected orders).
    pub fn from_order_event(payload: &OrderEventPayload) -> Result<Option<Self>, String> {
        match payload {
            OrderEventPayload::OrderCreated(o) => {
                if o.total_cents <= 0 {
                    return Err(format!(
                        "total_cents must be positive, got {}",
                        o.total_cents
                    ));
                }
                Ok(Some(Input::OrderCreated {
                    order_id: uuid("order_id", &o.order_id)?,
                    customer_id: uuid("customer_id", &o.customer_id)?,
                    total_cents: o.total_cents,
                }))
            }
            OrderEventPayload::OrderCancelled(o) => Ok(Some(Input::OrderCancelled {
                order_id: uuid("order_id", &o.order_id)?,
                customer_id: uuid("customer_id", &o.customer_id)?,
            })),
            OrderEventPayload::OrderApproved(_) | OrderEventPayload::OrderRejected(_) => Ok(None),
        }
    }
}

/// Why a message changed nothing. Not an error: logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    AlreadyRegistered,
    UnknownCustomer,
    /// The order already holds a reservation: a repeated OrderCreated.
    AlreadyReserved,
    /// A cancelled order that never got credit (refused, or unknown here).
    NothingReserved,
    AlreadyReleased,
}

impl Ignored {
    /// A stable word for the metrics label.
    pub fn kind(self) -> &'static str {
        match self {
            Ignored::AlreadyRegistered => "already_registered",
            Ignored::UnknownCustomer => "unknown_customer",
            Ignored::AlreadyReserved => "already_reserved",
            Ignored::NothingReserved => "nothing_reserved",
            Ignored::AlreadyReleased => "already_released",
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ignored::AlreadyRegistered => "customer already registered",
            Ignored::UnknownCustomer => "unknown customer",
            Ignored::AlreadyReserved => "order already holds a reservation",
            Ignored::NothingReserved => "order holds no reservation",
            Ignored::AlreadyReleased => "reservation already released",
        })
    }
}

/// An event to emit: to `customer-events` or to `credit-events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Customer(CustomerEventPayload),
    Credit(CreditEventPayload),
}

/// An event with the key it goes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub customer_id: Uuid,
    pub event: Event,
}

#[derive(Debug)]
struct Tracked<T> {
    row: T,
    /// Not in the database yet: inserted (in its final state) at the end of the batch.
    new: bool,
    /// Changed by this batch: updated at the end of the batch.
    dirty: bool,
}

impl<T> Tracked<T> {
    fn loaded(row: T) -> Self {
        Tracked {
            row,
            new: false,
            dirty: false,
        }
    }

    fn created(row: T) -> Self {
        Tracked {
            row,
            new: true,
            dirty: true,
        }
    }
}

fn inserts<T>(rows: &HashMap<Uuid, Tracked<T>>) -> Vec<&T> {
    rows.values().filter(|t| t.new).map(|t| &t.row).collect()
}

fn updates<T>(rows: &HashMap<Uuid, Tracked<T>>) -> Vec<&T> {
    rows.values()
        .filter(|t| t.dirty && !t.new)
        .map(|t| &t.row)
        .collect()
}

/// The customers and reservations one batch touches, in memory.
#[derive(Debug, Default)]
pub struct Ledger {
    customers: HashMap<Uuid, Tracked<Customer>>,
    reservations: HashMap<Uuid, Tracked<Reservation>>,
}

impl Ledger {
    pub fn new(
        customers: impl IntoIterator<Item = Customer>,
        reservations: impl IntoIterator<Item = Reservation>,
    ) -> Self {
        Ledger {
            customers: customers
                .into_iter()
                .map(|c| (c.id, Tracked::loaded(c)))
                .collect(),
            reservations: reservations
                .into_iter()
                .map(|r| (r.order_id, Tracked::loaded(r)))
                .collect(),
        }
    }

    pub fn customer(&self, id: &Uuid) -> Option<&Customer> {
        self.customers.get(id).map(|t| &t.row)
    }

    pub fn reservation(&self, order_id: &Uuid) -> Option<&Reservation> {
        self.reservations.get(order_id).map(|t| &t.row)
    }

    /// Applies one message; messages of a batch must be applied in their Kafka order.
    pub fn apply(&mut self, input: &Input) -> Result<Emitted, Ignored> {
        match input {
            Input::Register {
                customer_id,
                name,
                credit_limit_cents,
                tenant,
            } => self.register(*customer_id, name, *credit_limit_cents, tenant.clone()),
            Input::ChangeLimit {
                customer_id,
                credit_limit_cents,
            } => self.change_limit(*customer_id, *credit_limit_cents),
            Input::OrderCreated {
                order_id,
                customer_id,
                total_cents,
            } => self.reserve(*order_id, *customer_id, *total_cents),
            Input::OrderCancelled { order_id, .. } => self.release(*order_id),
        }
    }

    fn register(
        &mut self,
        id: Uuid,
        name: &str,
        limit: i64,
        tenant: Option<String>,
    ) -> Result<Emitted, Ignored> {
        if self.customers.contains_key(&id) {
            return Err(Ignored::AlreadyRegistered);
        }
        let customer = Customer {
            id,
            name: name.to_owned(),
            credit_limit_cents: limit,
            credit_reserved_cents: 0,
        };
        self.customers.insert(id, Tracked::created(customer));
        Ok(Emitted {
            customer_id: id,
            event: Event::Customer(CustomerEventPayload::CustomerRegistered(
                CustomerRegistered {
                    customer_id: id.to_string(),
                    name: name.to_owned(),
                    credit_limit_cents: limit,
                    tenant,
                },
            )),
        })
    }

    fn change_limit(&mut self, id: Uuid, limit: i64) -> Result<Emitted, Ignored> {
        let tracked = self
            .customers
            .get_mut(&id)
            .ok_or(Ignored::UnknownCustomer)?;
        tracked.row.credit_limit_cents = limit;
        tracked.dirty = true;
        Ok(Emitted {
            customer_id: id,
            event: Event::Customer(CustomerEventPayload::CreditLimitChanged(
                CreditLimitChanged {
                    customer_id: id.to_string(),
                    credit_limit_cents: limit,
                    credit_reserved_cents: tracked.row.credit_reserved_cents,
                },
            )),
        })
    }

    fn reserve(
        &mut self,
        order_id: Uuid,
        customer_id: Uuid,
        amount: i64,
    ) -> Result<Emitted, Ignored> {
        if self.reservations.contains_key(&order_id) {
            return Err(Ignored::AlreadyReserved);
        }
        let exceeded = |available: i64, reason: &str| Emitted {
            customer_id,
            event: Event::Credit(CreditEventPayload::CreditLimitExceeded(
                CreditLimitExceeded {
                    order_id: order_id.to_string(),
                    customer_id: customer_id.to_string(),
                    amount_cents: amount,
                    credit_available_cents: available,
                    reason: reason.to_owned(),
                },
            )),
        };
        let Some(tracked) = self.customers.get_mut(&customer_id) else {
            return Ok(exceeded(0, UNKNOWN_CUSTOMER));
        };
        let customer = &mut tracked.row;
        let after = customer
            .credit_reserved_cents
            .checked_add(amount)
            .filter(|after| *after <= customer.credit_limit_cents);
        let Some(after) = after else {
            // Never negative, even when a lowered limit sits below what is reserved.
            let available = (customer.credit_limit_cents - customer.credit_reserved_cents).max(0);
            return Ok(exceeded(available, LIMIT_EXCEEDED));
        };
        customer.credit_reserved_cents = after;
        tracked.dirty = true;
        let limit = customer.credit_limit_cents;
        self.reservations.insert(
            order_id,
            Tracked::created(Reservation {
                order_id,
                customer_id,
                amount_cents: amount,
                status: ReservationStatus::Reserved,
            }),
        );
        Ok(Emitted {
            customer_id,
            event: Event::Credit(CreditEventPayload::CreditReserved(CreditReserved {
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                amount_cents: amount,
                credit_reserved_cents: after,
                credit_limit_cents: limit,
            })),
        })
    }

    fn release(&mut self, order_id: Uuid) -> Result<Emitted, Ignored> {
        let reservation = self
            .reservations
            .get_mut(&order_id)
            .ok_or(Ignored::NothingReserved)?;
        if reservation.row.status == ReservationStatus::Released {
            return Err(Ignored::AlreadyReleased);
        }
        // The reservation's customer, not the event's: it is the one whose credit is held.
        let customer_id = reservation.row.customer_id;
        let customer = self
            .customers
            .get_mut(&customer_id)
            .ok_or(Ignored::UnknownCustomer)?;
        let amount = reservation.row.amount_cents;
        reservation.row.status = ReservationStatus::Released;
        reservation.dirty = true;
        customer.row.credit_reserved_cents -= amount;
        customer.dirty = true;
        Ok(Emitted {
            customer_id,
            event: Event::Credit(CreditEventPayload::CreditReleased(CreditReleased {
                order_id: order_id.to_string(),
                customer_id: customer_id.to_string(),
                amount_cents: amount,
                credit_reserved_cents: customer.row.credit_reserved_cents,
            })),
        })
    }

    /// Customers registered by this batch, in their final state.
    pub fn customer_inserts(&self) -> Vec<&Customer> {
        inserts(&self.customers)
    }

    /// Customers that existed before the batch and changed in it.
    pub fn customer_updates(&self) -> Vec<&Customer> {
        updates(&self.customers)
    }

    pub fn reservation_inserts(&self) -> Vec<&Reservation> {
        inserts(&self.reservations)
    }

    pub fn reservation_updates(&self) -> Vec<&Reservation> {
        updates(&self.reservations)
    }
}

#[cfg(test)]
mod tests;
