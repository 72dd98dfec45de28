//! The order's state machine, free of I/O: the handler loads the orders a batch touches into
//! a [`Book`], applies every message to it in order, and writes the result back once.

use std::collections::HashMap;
use std::fmt;

use feedline_schemas::types::{
    CreditEventPayload, OrderApproved, OrderCancelled, OrderCommandPayload, OrderCreated,
    OrderEventPayload, OrderRejected,
};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Rejected => "REJECTED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(Status::Pending),
            "APPROVED" => Some(Status::Approved),
            "REJECTED" => Some(Status::Rejected),
            "CANCELLED" => Some(Status::Cancelled),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: Status,
    pub total_cents: i64,
    pub reason: Option<String>,
    pub version: i32,
}

/// What a consumed message asks of an order, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Place {
        order_id: Uuid,
        customer_id: Uuid,
        total_cents: i64,
        /// When the gateway accepted the order (the command's `occurred_at`): the time of
        /// the `OrderCreated` it becomes, from which order-view measures freshness.
        placed_at: i64,
    },
    Cancel {
        order_id: Uuid,
        reason: Option<String>,
    },
    CreditReserved {
        order_id: Uuid,
    },
    CreditLimitExceeded {
        order_id: Uuid,
        reason: String,
    },
}

fn uuid(field: &str, text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|e| format!("{field} {text:?} is not a uuid: {e}"))
}

impl Input {
    pub fn order_id(&self) -> Uuid {
        match self {
            Input::Place { order_id, .. }
            | Input::Cancel { order_id, .. }
            | Input::CreditReserved { order_id }
            | Input::CreditLimitExceeded { order_id, .. } => *order_id,
        }
    }

    /// A command from `order-commands`; `Err` names what makes it malformed.
    /// `occurred_at`: the command's, when the gateway accepted it.
    pub fn from_command(payload: &OrderCommandPayload, occurred_at: i64) -> Result<Self, String> {
        match payload {
            OrderCommandPayload::PlaceOrder(p) => {
                if p.total_cents <= 0 {
                    return Err(format!(
                        "total_cents must be positive, got {}",
                        p.total_cents
                    ));
                }
                Ok(Input::Place {
                    order_id: uuid("order_id", &p.order_id)?,
                    customer_id: uuid("customer_id", &p.customer_id)?,
                    total_cents: p.total_cents,
                    placed_at: occurred_at,
                })
            }
            OrderCommandPayload::CancelOrder(c) => Ok(Input::Cancel {
                order_id: uuid("order_id", &c.order_id)?,
                reason: c.reason.clone(),
            }),
        }
    }

    /// A credit decision from `credit-events`; `Ok(None)` for events the order does not
    /// wait for (a release follows a cancellation the order already knows about).
    pub fn from_credit(payload: &CreditEventPayload) -> Result<Option<Self>, String> {
        match payload {
            CreditEventPayload::CreditReserved(r) => Ok(Some(Input::CreditReserved {
                order_id: uuid("order_id", &r.order_id)?,
            })),
            CreditEventPayload::CreditLimitExceeded(e) => Ok(Some(Input::CreditLimitExceeded {
                order_id: uuid("order_id", &e.order_id)?,
                reason: e.reason.clone(),
            })),
            CreditEventPayload::CreditReleased(_) => Ok(None),
        }
    }
}

/// Why a message changed nothing. Not an error: logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The order id exists already: a repeated PlaceOrder.
    AlreadyPlaced,
    UnknownOrder,
    /// Only PENDING and APPROVED orders can be cancelled.
    NotCancellable(Status),
    /// A credit decision for an order that is no longer waiting for one.
    NotPending(Status),
}

impl Ignored {
    /// A stable word for the metrics label.
    pub fn kind(self) -> &'static str {
        match self {
            Ignored::AlreadyPlaced => "already_placed",
            Ignored::UnknownOrder => "unknown_order",
            Ignored::NotCancellable(_) => "not_cancellable",
            Ignored::NotPending(_) => "not_pending",
        }
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ignored::AlreadyPlaced => f.write_str("order already placed"),
            Ignored::UnknownOrder => f.write_str("unknown order"),
            Ignored::NotCancellable(s) => write!(f, "order is {s}, it cannot be cancelled"),
            Ignored::NotPending(s) => write!(f, "order is {s}, not waiting for credit"),
        }
    }
}

/// An event to emit, with the key it goes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub customer_id: Uuid,
    pub payload: OrderEventPayload,
}

#[derive(Debug)]
struct Entry {
    order: Order,
    /// Not in the database yet: inserted (in its final state) at the end of the batch.
    new: bool,
    /// Changed by this batch: updated at the end of the batch.
    dirty: bool,
}

/// The orders one batch touches, in memory.
#[derive(Debug, Default)]
pub struct Book {
    entries: HashMap<Uuid, Entry>,
}

impl Book {
    pub fn new(loaded: impl IntoIterator<Item = Order>) -> Self {
        let entries = loaded
            .into_iter()
            .map(|order| {
                let entry = Entry {
                    order,
                    new: false,
                    dirty: false,
                };
                (entry.order.id, entry)
            })
            .collect();
        Book { entries }
    }

    pub fn get(&self, id: &Uuid) -> Option<&Order> {
        self.entries.get(id).map(|e| &e.order)
    }

    /// Applies one message; messages of a batch must be applied in their Kafka order.
    pub fn apply(&mut self, input: &Input) -> Result<Emitted, Ignored> {
        if let Input::Place {
            order_id,
            customer_id,
            total_cents,
            ..
        } = input
        {
            if self.entries.contains_key(order_id) {
                return Err(Ignored::AlreadyPlaced);
            }
            let order = Order {
                id: *order_id,
                customer_id: *customer_id,
                status: Status::Pending,
                total_cents: *total_cents,
                reason: None,
                version: 1,
            };
            self.entries.insert(
                *order_id,
                Entry {
                    order,
                    new: true,
                    dirty: true,
                },
            );
            return Ok(Emitted {
                customer_id: *customer_id,
                payload: OrderEventPayload::OrderCreated(OrderCreated {
                    order_id: order_id.to_string(),
                    customer_id: customer_id.to_string(),
                    total_cents: *total_cents,
                }),
            });
        }

        let entry = self
            .entries
            .get_mut(&input.order_id())
            .ok_or(Ignored::UnknownOrder)?;
        let order = &mut entry.order;
        let (status, reason) = match (input, order.status) {
            (Input::Cancel { reason, .. }, Status::Pending | Status::Approved) => {
                (Status::Cancelled, reason.clone())
            }
            (Input::Cancel { .. }, other) => return Err(Ignored::NotCancellable(other)),
            (Input::CreditReserved { .. }, Status::Pending) => (Status::Approved, None),
            (Input::CreditLimitExceeded { reason, .. }, Status::Pending) => {
                (Status::Rejected, Some(reason.clone()))
            }
            (Input::CreditReserved { .. } | Input::CreditLimitExceeded { .. }, other) => {
                return Err(Ignored::NotPending(other));
            }
            (Input::Place { .. }, _) => unreachable!("handled above"),
        };
        order.status = status;
        order.reason = reason;
        order.version += 1;
        entry.dirty = true;

        let (order_id, customer_id) = (order.id.to_string(), order.customer_id.to_string());
        let total_cents = order.total_cents;
        let payload = match status {
            Status::Approved => OrderEventPayload::OrderApproved(OrderApproved {
                order_id,
                customer_id,
                total_cents,
            }),
            Status::Rejected => OrderEventPayload::OrderRejected(OrderRejected {
                order_id,
                customer_id,
                total_cents,
                reason: order.reason.clone().unwrap_or_default(),
            }),
            Status::Cancelled => OrderEventPayload::OrderCancelled(OrderCancelled {
                order_id,
                customer_id,
                total_cents,
                reason: order.reason.clone(),
            }),
            Status::Pending => unreachable!("no transition leads back to PENDING"),
        };
        Ok(Emitted {
            customer_id: order.customer_id,
            payload,
        })
    }

    /// Orders placed by this batch, in their final state.
    pub fn inserts(&self) -> Vec<&Order> {
        self.entries
            .values()
            .filter(|e| e.new)
            .map(|e| &e.order)
            .collect()
    }

    /// Orders that existed before the batch and changed in it.
    pub fn updates(&self) -> Vec<&Order> {
        self.entries
            .values()
            .filter(|e| e.dirty && !e.new)
            .map(|e| &e.order)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(order_id: Uuid, customer_id: Uuid, total_cents: i64) -> Input {
        Input::Place {
            order_id,
            customer_id,
            total_cents,
            placed_at: 0,
        }
    }

    fn cancel(order_id: Uuid) -> Input {
        Input::Cancel {
            order_id,
            reason: Some("changed my mind".into()),
        }
    }

    #[test]
    fn placed_order_is_pending_and_a_repeat_changes_nothing() {
        let (o, c) = (Uuid::new_v4(), Uuid::new_v4());
        let mut book = Book::default();
        let created = book.apply(&place(o, c, 6000)).unwrap();
        assert_eq!(created.customer_id, c);
        assert!(
            matches!(created.payload, OrderEventPayload::OrderCreated(ref p) if p.total_cents == 6000)
        );
        assert_eq!(book.apply(&place(o, c, 9999)), Err(Ignored::AlreadyPlaced));
        assert_eq!(book.get(&o).unwrap().total_cents, 6000);
        assert_eq!(book.inserts().len(), 1);
        assert!(book.updates().is_empty());
    }

    #[test]
    fn credit_decisions_move_pending_orders_only() {
        let c = Uuid::new_v4();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let pending = |id| Order {
            id,
            customer_id: c,
            status: Status::Pending,
            total_cents: 100,
            reason: None,
            version: 1,
        };
        let mut book = Book::new([pending(a), pending(b)]);
        let approved = book.apply(&Input::CreditReserved { order_id: a }).unwrap();
        assert!(matches!(
            approved.payload,
            OrderEventPayload::OrderApproved(_)
        ));
        let rejected = book
            .apply(&Input::CreditLimitExceeded {
                order_id: b,
                reason: "credit limit exceeded".into(),
            })
            .unwrap();
        assert!(
            matches!(rejected.payload, OrderEventPayload::OrderRejected(ref r) if r.reason == "credit limit exceeded")
        );
        assert_eq!(
            book.apply(&Input::CreditReserved { order_id: b }),
            Err(Ignored::NotPending(Status::Rejected))
        );
        let a_now = book.get(&a).unwrap();
        assert_eq!((a_now.status, a_now.version), (Status::Approved, 2));
        assert_eq!(book.updates().len(), 2);
        assert_eq!(
            book.apply(&Input::CreditReserved {
                order_id: Uuid::new_v4()
            }),
            Err(Ignored::UnknownOrder)
        );
    }

    #[test]
    fn pending_and_approved_orders_cancel_others_do_not() {
        let (c, o) = (Uuid::new_v4(), Uuid::new_v4());
        let mut book = Book::default();
        book.apply(&place(o, c, 100)).unwrap();
        book.apply(&Input::CreditReserved { order_id: o }).unwrap();
        let cancelled = book.apply(&cancel(o)).unwrap();
        assert!(
            matches!(cancelled.payload, OrderEventPayload::OrderCancelled(ref e) if e.reason.as_deref() == Some("changed my mind"))
        );
        assert_eq!(
            book.apply(&cancel(o)),
            Err(Ignored::NotCancellable(Status::Cancelled))
        );
        // A late credit decision for a cancelled order changes nothing.
        assert_eq!(
            book.apply(&Input::CreditLimitExceeded {
                order_id: o,
                reason: "x".into()
            }),
            Err(Ignored::NotPending(Status::Cancelled))
        );
        let order = book.get(&o).unwrap();
        assert_eq!((order.status, order.version), (Status::Cancelled, 3));
        // Placed and changed in the same batch: one insert of the final state.
        assert_eq!(book.inserts().len(), 1);
        assert!(book.updates().is_empty());
        assert_eq!(
            book.apply(&cancel(Uuid::new_v4())),
            Err(Ignored::UnknownOrder)
        );
    }

    #[test]
    fn malformed_commands_are_refused() {
        use feedline_schemas::types::PlaceOrder;
        let bad_total = OrderCommandPayload::PlaceOrder(PlaceOrder {
            order_id: Uuid::new_v4().to_string(),
            customer_id: Uuid::new_v4().to_string(),
            total_cents: 0,
        });
        assert!(
            Input::from_command(&bad_total, 0)
                .unwrap_err()
                .contains("total_cents")
        );
        let bad_id = OrderCommandPayload::PlaceOrder(PlaceOrder {
            order_id: "not-a-uuid".into(),
            customer_id: Uuid::new_v4().to_string(),
            total_cents: 10,
        });
        assert!(
            Input::from_command(&bad_id, 0)
                .unwrap_err()
                .contains("order_id")
        );
    }
}
