//! One file: the read model's rules are one in-memory step; its tests take it past 600 lines.
//!
//! Events → changes of the read model, in memory: a batch's rows are loaded into a
//! [`WorkingSet`], every event is applied to it in order, and the store then writes the rows
//! that changed and the numbered [`Change`]s in one transaction.
//!
//! Events of different topics about one order or customer arrive in either order
//! (`order-events` and `credit-events` are separate topics), so every apply is
//! order-tolerant: rows are upserted, a status only moves forward, credit figures carry the
//! time of the event they came from and older figures never overwrite newer ones. An event
//! that leaves its row as it was produces no change.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use feedline_schemas::types::{
    CreditEvent, CreditEventPayload, CustomerEvent, CustomerEventPayload, OrderEvent,
    OrderEventPayload,
};

use crate::model::{Change, Customer, Kind, Order, Status};

feedline_schemas::one_of! {
    /// A decoded message of any of the topics order-view consumes.
    #[derive(Debug, Clone)]
    pub enum Event {
        Order(OrderEvent),
        Customer(CustomerEvent),
        Credit(CreditEvent),
    }
}

impl Event {
    pub fn event_id(&self) -> &str {
        match self {
            Event::Order(e) => &e.event_id,
            Event::Customer(e) => &e.event_id,
            Event::Credit(e) => &e.event_id,
        }
    }

    pub fn correlation_id(&self) -> &str {
        match self {
            Event::Order(e) => &e.correlation_id,
            Event::Customer(e) => &e.correlation_id,
            Event::Credit(e) => &e.correlation_id,
        }
    }

    pub fn occurred_at(&self) -> i64 {
        match self {
            Event::Order(e) => e.occurred_at,
            Event::Customer(e) => e.occurred_at,
            Event::Credit(e) => e.occurred_at,
        }
    }

    /// The payload's record name: the `type` label of the applied-events metric.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Order(e) => match e.payload {
                OrderEventPayload::OrderCreated(_) => "OrderCreated",
                OrderEventPayload::OrderApproved(_) => "OrderApproved",
                OrderEventPayload::OrderRejected(_) => "OrderRejected",
                OrderEventPayload::OrderCancelled(_) => "OrderCancelled",
            },
            Event::Customer(e) => match e.payload {
                CustomerEventPayload::CustomerRegistered(_) => "CustomerRegistered",
                CustomerEventPayload::CreditLimitChanged(_) => "CreditLimitChanged",
            },
            Event::Credit(e) => match e.payload {
                CreditEventPayload::CreditReserved(_) => "CreditReserved",
                CreditEventPayload::CreditLimitExceeded(_) => "CreditLimitExceeded",
                CreditEventPayload::CreditReleased(_) => "CreditReleased",
            },
        }
    }

    /// The customer every event is about (the topics' key).
    pub fn customer_id(&self) -> &str {
        match self {
            Event::Order(e) => match &e.payload {
                OrderEventPayload::OrderCreated(p) => &p.customer_id,
                OrderEventPayload::OrderApproved(p) => &p.customer_id,
                OrderEventPayload::OrderRejected(p) => &p.customer_id,
                OrderEventPayload::OrderCancelled(p) => &p.customer_id,
            },
            Event::Customer(e) => match &e.payload {
                CustomerEventPayload::CustomerRegistered(p) => &p.customer_id,
                CustomerEventPayload::CreditLimitChanged(p) => &p.customer_id,
            },
            Event::Credit(e) => match &e.payload {
                CreditEventPayload::CreditReserved(p) => &p.customer_id,
                CreditEventPayload::CreditLimitExceeded(p) => &p.customer_id,
                CreditEventPayload::CreditReleased(p) => &p.customer_id,
            },
        }
    }

    /// The order an order event is about (credit events name one too, but change only the
    /// customer).
    pub fn order_id(&self) -> Option<&str> {
        match self {
            Event::Order(e) => Some(match &e.payload {
                OrderEventPayload::OrderCreated(p) => &p.order_id,
                OrderEventPayload::OrderApproved(p) => &p.order_id,
                OrderEventPayload::OrderRejected(p) => &p.order_id,
                OrderEventPayload::OrderCancelled(p) => &p.order_id,
            }),
            _ => None,
        }
    }

    /// The name and tenant a registration gives its customer.
    pub fn registered_name(&self) -> Option<(&str, &str, Option<&str>)> {
        match self {
            Event::Customer(CustomerEvent {
                payload: CustomerEventPayload::CustomerRegistered(p),
                ..
            }) => Some((&p.customer_id, &p.name, p.tenant.as_deref())),
            _ => None,
        }
    }

    /// Puts every id into the canonical UUID form (lower case, hyphenated), the form the
    /// HTTP API looks them up in. An id that is not a UUID could never be queried: the
    /// message is rejected to the DLQ.
    pub fn normalize(&mut self) -> Result<(), String> {
        let (customer, order) = match self {
            Event::Order(e) => match &mut e.payload {
                OrderEventPayload::OrderCreated(p) => (&mut p.customer_id, Some(&mut p.order_id)),
                OrderEventPayload::OrderApproved(p) => (&mut p.customer_id, Some(&mut p.order_id)),
                OrderEventPayload::OrderRejected(p) => (&mut p.customer_id, Some(&mut p.order_id)),
                OrderEventPayload::OrderCancelled(p) => (&mut p.customer_id, Some(&mut p.order_id)),
            },
            Event::Customer(e) => match &mut e.payload {
                CustomerEventPayload::CustomerRegistered(p) => (&mut p.customer_id, None),
                CustomerEventPayload::CreditLimitChanged(p) => (&mut p.customer_id, None),
            },
            Event::Credit(e) => match &mut e.payload {
                CreditEventPayload::CreditReserved(p) => (&mut p.customer_id, None),
                CreditEventPayload::CreditLimitExceeded(p) => (&mut p.customer_id, None),
                CreditEventPayload::CreditReleased(p) => (&mut p.customer_id, None),
            },
        };
        canonical(customer, "customer_id")?;
        if let Some(order) = order {
            canonical(order, "order_id")?;
        }
        Ok(())
    }
}

/// Rewrites `id` in canonical UUID form, allocating only when it was not already.
pub fn canonical(id: &mut String, field: &str) -> Result<(), String> {
    let parsed =
        uuid::Uuid::parse_str(id).map_err(|e| format!("{field} {id:?} is not a UUID: {e}"))?;
    let mut buf = uuid::Uuid::encode_buffer();
    let text = parsed.hyphenated().encode_lower(&mut buf);
    if id != text {
        *id = text.to_owned();
    }
    Ok(())
}

/// The rows one batch touches, as they are before the batch (loaded from the cache or
/// SQLite) and after each event, plus the changes the batch made.
#[derive(Debug)]
pub struct WorkingSet {
    pub orders: HashMap<String, Order>,
    pub customers: HashMap<String, Customer>,
    pub changes: Vec<Arc<Change>>,
    next_seq: i64,
}

impl WorkingSet {
    /// An empty set whose first change will be numbered `next_seq`.
    pub fn new(next_seq: i64) -> Self {
        WorkingSet {
            orders: HashMap::new(),
            customers: HashMap::new(),
            changes: Vec::new(),
            next_seq,
        }
    }

    /// The number the next change will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Applies one event. The rows it touches must have been loaded (a missing row means
    /// the row does not exist yet); for a registration, every order of the customer whose
    /// `customer_name` differs must be loaded too.
    pub fn apply(&mut self, event: &Event) {
        let at = event.occurred_at();
        match event {
            Event::Order(e) => match &e.payload {
                OrderEventPayload::OrderCreated(p) => {
                    self.order(&p.order_id, &p.customer_id, p.total_cents, at, |o| {
                        // The creation is the authority on these; an earlier event may have
                        // made the row first with a provisional creation time.
                        o.customer_id.clone_from(&p.customer_id);
                        o.total_cents = p.total_cents;
                        o.created_at = o.created_at.min(at);
                    })
                }
                OrderEventPayload::OrderApproved(p) => {
                    self.order(&p.order_id, &p.customer_id, p.total_cents, at, |o| {
                        if o.status.rank() < Status::Approved.rank() {
                            o.status = Status::Approved;
                        }
                    })
                }
                OrderEventPayload::OrderRejected(p) => {
                    self.order(&p.order_id, &p.customer_id, p.total_cents, at, |o| {
                        if o.status.rank() < Status::Rejected.rank() {
                            o.status = Status::Rejected;
                            o.reason = Some(p.reason.clone());
                        }
                    })
                }
                OrderEventPayload::OrderCancelled(p) => {
                    self.order(&p.order_id, &p.customer_id, p.total_cents, at, |o| {
                        if o.status.rank() < Status::Cancelled.rank() {
                            o.status = Status::Cancelled;
                            if p.reason.is_some() {
                                o.reason.clone_from(&p.reason);
                            }
                        }
                    })
                }
            },
            Event::Customer(e) => match &e.payload {
                CustomerEventPayload::CustomerRegistered(p) => {
                    self.customer(&p.customer_id, at, |c| {
                        c.name = Some(p.name.clone());
                        c.tenant.clone_from(&p.tenant);
                        set_limit(c, p.credit_limit_cents, at);
                    });
                }
                CustomerEventPayload::CreditLimitChanged(p) => {
                    self.customer(&p.customer_id, at, |c| {
                        set_limit(c, p.credit_limit_cents, at);
                        set_reserved(c, p.credit_reserved_cents, at);
                    });
                }
            },
            Event::Credit(e) => match &e.payload {
                CreditEventPayload::CreditReserved(p) => {
                    self.customer(&p.customer_id, at, |c| {
                        set_limit(c, p.credit_limit_cents, at);
                        set_reserved(c, p.credit_reserved_cents, at);
                    });
                }
                CreditEventPayload::CreditReleased(p) => {
                    self.customer(&p.customer_id, at, |c| {
                        set_reserved(c, p.credit_reserved_cents, at);
                    });
                }
                // A refusal reserves nothing: the order's rejection carries the outcome.
                CreditEventPayload::CreditLimitExceeded(_) => {}
            },
        }
    }

    fn order(
        &mut self,
        id: &str,
        customer_id: &str,
        total_cents: i64,
        at: i64,
        update: impl FnOnce(&mut Order),
    ) {
        let (name, tenant) = self
            .customers
            .get(customer_id)
            .map_or((None, None), |c| (c.name.clone(), c.tenant.clone()));
        let (before, order) = match self.orders.get_mut(id) {
            Some(order) => (Some(order.clone()), order),
            // The first event of an order makes its row, whichever event it is.
            None => {
                let order = Order {
                    id: id.to_owned(),
                    customer_id: customer_id.to_owned(),
                    customer_name: None,
                    status: Status::Pending,
                    total_cents,
                    reason: None,
                    created_at: at,
                    updated_at: at,
                    tenant: None,
                };
                (None, self.orders.entry(id.to_owned()).or_insert(order))
            }
        };
        update(order);
        if order.customer_name.is_none() {
            order.customer_name = name;
        }
        if order.tenant.is_none() {
            order.tenant = tenant;
        }
        if before.as_ref() != Some(order) {
            order.updated_at = order.updated_at.max(at);
            let change = order_change(self.next_seq, order);
            self.push(change);
        }
    }

    fn customer(&mut self, id: &str, at: i64, update: impl FnOnce(&mut Customer)) {
        let (before, customer) = match self.customers.get_mut(id) {
            Some(customer) => (Some(customer.clone()), customer),
            None => (
                None,
                self.customers
                    .entry(id.to_owned())
                    .or_insert_with(|| Customer::new(id, at)),
            ),
        };
        update(customer);
        if before.as_ref() == Some(customer) {
            return;
        }
        customer.updated_at = customer.updated_at.max(at);
        let name = customer.name.clone();
        let tenant = customer.tenant.clone();
        let renamed = before
            .as_ref()
            .is_none_or(|b| b.name != name || b.tenant != tenant);
        let change = customer_change(self.next_seq, customer);
        self.push(change);
        if renamed && let Some(name) = name {
            self.rename_orders(id, &name, tenant.as_deref(), at);
        }
    }

    /// Orders carry their customer's name and tenant; orders that arrived before the
    /// registration get them now.
    fn rename_orders(&mut self, customer_id: &str, name: &str, tenant: Option<&str>, at: i64) {
        let mut renamed: Vec<&mut Order> = self
            .orders
            .values_mut()
            .filter(|o| {
                o.customer_id == customer_id
                    && (o.customer_name.as_deref() != Some(name) || o.tenant.as_deref() != tenant)
            })
            .collect();
        // Stable numbering across runs, whatever the hash map's order.
        renamed.sort_by(|a, b| a.id.cmp(&b.id));
        let mut changes = Vec::with_capacity(renamed.len());
        for (n, order) in renamed.into_iter().enumerate() {
            order.customer_name = Some(name.to_owned());
            order.tenant = tenant.map(str::to_owned);
            order.updated_at = order.updated_at.max(at);
            changes.push(order_change(self.next_seq + n as i64, order));
        }
        for change in changes {
            self.push(change);
        }
    }

    fn push(&mut self, change: Change) {
        debug_assert_eq!(change.seq, self.next_seq);
        self.next_seq += 1;
        self.changes.push(Arc::new(change));
    }
}

fn set_limit(c: &mut Customer, limit: i64, at: i64) {
    if c.limit_at.is_none_or(|t| at >= t) {
        c.credit_limit_cents = limit;
        c.limit_at = Some(at);
    }
}

fn set_reserved(c: &mut Customer, reserved: i64, at: i64) {
    if c.reserved_at.is_none_or(|t| at >= t) {
        c.credit_reserved_cents = reserved;
        c.reserved_at = Some(at);
    }
}

fn order_change(seq: i64, order: &Order) -> Change {
    Change {
        seq,
        kind: Kind::Order,
        customer_id: order.customer_id.clone(),
        order_id: Some(order.id.clone()),
        data: json(order),
        tenant: order.tenant.clone(),
    }
}

fn customer_change(seq: i64, customer: &Customer) -> Change {
    Change {
        seq,
        kind: Kind::Customer,
        customer_id: customer.id.clone(),
        order_id: None,
        data: json(customer),
        tenant: customer.tenant.clone(),
    }
}

fn json(value: &impl serde::Serialize) -> Arc<str> {
    serde_json::to_string(value)
        .expect("rows always serialize")
        .into()
}

#[cfg(test)]
mod tests {
    use feedline_schemas::types::*;

    use super::*;

    const C: &str = "00000000-0000-0000-0000-00000000000c";
    const O: &str = "00000000-0000-0000-0000-00000000000a";

    fn order_event(at: i64, payload: OrderEventPayload) -> Event {
        let mut e = OrderEvent::new("test", "corr".into(), None, payload);
        e.occurred_at = at;
        Event::Order(e)
    }

    fn customer_event(at: i64, payload: CustomerEventPayload) -> Event {
        let mut e = CustomerEvent::new("test", "corr".into(), None, payload);
        e.occurred_at = at;
        Event::Customer(e)
    }

    fn credit_event(at: i64, payload: CreditEventPayload) -> Event {
        let mut e = CreditEvent::new("test", "corr".into(), None, payload);
        e.occurred_at = at;
        Event::Credit(e)
    }

    fn created(at: i64) -> Event {
        order_event(
            at,
            OrderEventPayload::OrderCreated(OrderCreated {
                order_id: O.into(),
                customer_id: C.into(),
                total_cents: 500,
            }),
        )
    }

    fn approved(at: i64) -> Event {
        order_event(
            at,
            OrderEventPayload::OrderApproved(OrderApproved {
                order_id: O.into(),
                customer_id: C.into(),
                total_cents: 500,
            }),
        )
    }

    fn cancelled(at: i64) -> Event {
        order_event(
            at,
            OrderEventPayload::OrderCancelled(OrderCancelled {
                order_id: O.into(),
                customer_id: C.into(),
                total_cents: 500,
                reason: Some("changed my mind".into()),
            }),
        )
    }

    fn registered(at: i64, limit: i64) -> Event {
        customer_event(
            at,
            CustomerEventPayload::CustomerRegistered(CustomerRegistered {
                customer_id: C.into(),
                name: "Ada".into(),
                credit_limit_cents: limit,
                tenant: None,
            }),
        )
    }

    fn reserved(at: i64, reserved: i64, limit: i64) -> Event {
        credit_event(
            at,
            CreditEventPayload::CreditReserved(CreditReserved {
                order_id: O.into(),
                customer_id: C.into(),
                amount_cents: 500,
                credit_reserved_cents: reserved,
                credit_limit_cents: limit,
            }),
        )
    }

    fn run(events: &[Event]) -> WorkingSet {
        let mut ws = WorkingSet::new(1);
        for e in events {
            ws.apply(e);
        }
        ws
    }

    #[test]
    fn a_saga_in_order() {
        let ws = run(&[
            registered(1, 1000),
            created(2),
            reserved(3, 500, 1000),
            approved(4),
        ]);
        let order = &ws.orders[O];
        assert_eq!(order.status, Status::Approved);
        assert_eq!(order.customer_name.as_deref(), Some("Ada"));
        assert_eq!((order.created_at, order.updated_at), (2, 4));
        let customer = &ws.customers[C];
        assert_eq!(customer.credit_reserved_cents, 500);
        assert_eq!(ws.changes.len(), 4);
        let seqs: Vec<i64> = ws.changes.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(ws.next_seq(), 5);
    }

    #[test]
    fn status_never_moves_backwards() {
        let ws = run(&[approved(4), created(2)]);
        let order = &ws.orders[O];
        assert_eq!(order.status, Status::Approved);
        assert_eq!(order.created_at, 2, "the creation fixes the creation time");
        let ws = run(&[cancelled(5), approved(4), created(2)]);
        assert_eq!(ws.orders[O].status, Status::Cancelled);
        assert_eq!(ws.orders[O].reason.as_deref(), Some("changed my mind"));
    }

    #[test]
    fn repeated_events_change_nothing_twice() {
        let ws = run(&[created(2), approved(4), created(2), approved(4)]);
        assert_eq!(ws.changes.len(), 2);
        let ws = run(&[registered(1, 1000), registered(1, 1000)]);
        assert_eq!(ws.changes.len(), 1);
    }

    #[test]
    fn older_credit_figures_never_overwrite_newer_ones() {
        // The reservation (credit-events) overtakes the registration (customer-events).
        let ws = run(&[reserved(3, 500, 2000), registered(1, 1000)]);
        let customer = &ws.customers[C];
        assert_eq!(customer.name.as_deref(), Some("Ada"));
        assert_eq!(customer.credit_limit_cents, 2000);
        assert_eq!(customer.credit_reserved_cents, 500);
    }

    #[test]
    fn orders_get_the_name_of_a_late_registration() {
        let ws = run(&[created(2), registered(1, 1000)]);
        assert_eq!(ws.orders[O].customer_name.as_deref(), Some("Ada"));
        let kinds: Vec<Kind> = ws.changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [Kind::Order, Kind::Customer, Kind::Order]);
    }

    fn registered_to(at: i64, tenant: &str) -> Event {
        let mut e = registered(at, 1000);
        if let Event::Customer(c) = &mut e
            && let CustomerEventPayload::CustomerRegistered(p) = &mut c.payload
        {
            p.tenant = Some(tenant.into());
        }
        e
    }

    #[test]
    fn orders_and_changes_carry_their_customers_tenant() {
        let ws = run(&[registered_to(1, "acme"), created(2), approved(3)]);
        assert_eq!(ws.customers[C].tenant.as_deref(), Some("acme"));
        assert_eq!(ws.orders[O].tenant.as_deref(), Some("acme"));
        assert!(
            ws.changes
                .iter()
                .all(|c| c.tenant.as_deref() == Some("acme"))
        );
        assert!(ws.changes[1].data.contains(r#""tenant":"acme""#));
    }

    #[test]
    fn orders_before_the_registration_take_its_tenant_with_a_new_change() {
        let ws = run(&[created(2), registered_to(5, "acme")]);
        assert_eq!(ws.orders[O].tenant.as_deref(), Some("acme"));
        let tenants: Vec<Option<&str>> = ws.changes.iter().map(|c| c.tenant.as_deref()).collect();
        // The order's first change had no tenant yet (admins only); the registration
        // re-announces it to the tenant.
        assert_eq!(tenants, [None, Some("acme"), Some("acme")]);
    }

    #[test]
    fn ids_are_made_canonical() {
        let mut e = order_event(
            1,
            OrderEventPayload::OrderCreated(OrderCreated {
                order_id: O.to_uppercase(),
                customer_id: C.into(),
                total_cents: 1,
            }),
        );
        e.normalize().unwrap();
        assert_eq!(e.order_id(), Some(O));
        let mut bad = registered(1, 1);
        if let Event::Customer(c) = &mut bad
            && let CustomerEventPayload::CustomerRegistered(p) = &mut c.payload
        {
            p.customer_id = "alice".into();
        }
        assert!(bad.normalize().unwrap_err().contains("customer_id"));
    }
}
