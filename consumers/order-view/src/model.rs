//! The rows of the read model, their JSON form, and the numbered changes of the live feed.

use std::sync::Arc;

use serde::Serialize;

/// Where an order stands. Events of different topics arrive in either order, so a status
/// only ever moves forward: PENDING → APPROVED | REJECTED → CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Approved,
        Status::Rejected,
        Status::Cancelled,
    ];

    /// How far along the saga the status is; a transition must raise it.
    pub fn rank(self) -> u8 {
        match self {
            Status::Pending => 0,
            Status::Approved | Status::Rejected => 1,
            Status::Cancelled => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Rejected => "REJECTED",
            Status::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An order as the query side knows it. Times are milliseconds since the epoch, taken from
/// the events (so a rebuild gives the same rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub customer_id: String,
    /// The customer's name; `None` until the customer's registration arrived.
    pub customer_name: Option<String>,
    pub status: Status,
    pub total_cents: i64,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The customer's tenant; `None` until the registration arrived, or for a customer of
    /// no tenant.
    pub tenant: Option<String>,
}

/// A customer and their credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    /// `None` while only credit events of the customer arrived.
    pub name: Option<String>,
    pub credit_limit_cents: i64,
    pub credit_reserved_cents: i64,
    /// `occurred_at` of the event the limit came from (newer events win).
    pub limit_at: Option<i64>,
    /// `occurred_at` of the event the reservation came from (newer events win).
    pub reserved_at: Option<i64>,
    pub updated_at: i64,
    /// The tenant the registration named; `None` for no tenant (admins only see it).
    pub tenant: Option<String>,
}

impl Customer {
    pub fn new(id: &str, at: i64) -> Self {
        Customer {
            id: id.to_owned(),
            name: None,
            credit_limit_cents: 0,
            credit_reserved_cents: 0,
            limit_at: None,
            reserved_at: None,
            updated_at: at,
            tenant: None,
        }
    }
}

/// RFC 3339 in UTC with milliseconds, the API's timestamp format.
pub fn timestamp(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Serialize)]
struct OrderJson<'a> {
    id: &'a str,
    customer_id: &'a str,
    customer_name: Option<&'a str>,
    status: Status,
    total_cents: i64,
    reason: Option<&'a str>,
    created_at: String,
    updated_at: String,
    tenant: Option<&'a str>,
}

#[derive(Serialize)]
struct CustomerJson<'a> {
    id: &'a str,
    name: Option<&'a str>,
    credit_limit_cents: i64,
    credit_reserved_cents: i64,
    available_cents: i64,
    updated_at: String,
    tenant: Option<&'a str>,
}

impl Serialize for Order {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        OrderJson {
            id: &self.id,
            customer_id: &self.customer_id,
            customer_name: self.customer_name.as_deref(),
            status: self.status,
            total_cents: self.total_cents,
            reason: self.reason.as_deref(),
            created_at: timestamp(self.created_at),
            updated_at: timestamp(self.updated_at),
            tenant: self.tenant.as_deref(),
        }
        .serialize(serializer)
    }
}

impl Serialize for Customer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CustomerJson {
            id: &self.id,
            name: self.name.as_deref(),
            credit_limit_cents: self.credit_limit_cents,
            credit_reserved_cents: self.credit_reserved_cents,
            available_cents: self.credit_limit_cents - self.credit_reserved_cents,
            updated_at: timestamp(self.updated_at),
            tenant: self.tenant.as_deref(),
        }
        .serialize(serializer)
    }
}

/// What kind of row a change is about: the SSE `event:` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Customer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Order => "order",
            Kind::Customer => "customer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "order" => Some(Kind::Order),
            "customer" => Some(Kind::Customer),
            _ => None,
        }
    }
}

/// One change of the read model: the new state of one row, numbered in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Monotonically increasing over the life of the database file: the SSE `id:`.
    pub seq: i64,
    pub kind: Kind,
    pub customer_id: String,
    /// Set for order changes.
    pub order_id: Option<String>,
    /// The row's JSON, serialized once and shared by every subscriber.
    pub data: Arc<str>,
    /// The tenant of the row's customer, as of this change.
    pub tenant: Option<String>,
}

/// Which changes a feed subscriber wants (all set: all must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub customer_id: Option<String>,
    pub order_id: Option<String>,
    /// Only rows of this tenant; `None` is every row (the gateway's admins and its own
    /// internal subscriptions).
    pub tenant: Option<String>,
}

impl Filter {
    pub fn matches(&self, change: &Change) -> bool {
        self.customer_id
            .as_ref()
            .is_none_or(|c| *c == change.customer_id)
            && self
                .order_id
                .as_ref()
                .is_none_or(|o| change.order_id.as_ref() == Some(o))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| change.tenant.as_ref() == Some(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranks_only_move_forward() {
        assert!(Status::Pending.rank() < Status::Approved.rank());
        assert_eq!(Status::Approved.rank(), Status::Rejected.rank());
        assert!(Status::Rejected.rank() < Status::Cancelled.rank());
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("approved"), None);
    }

    #[test]
    fn customer_json_has_available_credit() {
        let mut c = Customer::new("c", 0);
        c.credit_limit_cents = 1000;
        c.credit_reserved_cents = 300;
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["available_cents"], 700);
        assert_eq!(json["updated_at"], "1970-01-01T00:00:00.000Z");
        assert!(json.get("limit_at").is_none());
    }

    #[test]
    fn filters_match_customer_and_order() {
        let change = |customer: &str, order: Option<&str>| Change {
            seq: 1,
            kind: if order.is_some() {
                Kind::Order
            } else {
                Kind::Customer
            },
            customer_id: customer.into(),
            order_id: order.map(Into::into),
            data: "{}".into(),
            tenant: Some("acme".into()),
        };
        let by_customer = Filter {
            customer_id: Some("c1".into()),
            ..Filter::default()
        };
        assert!(by_customer.matches(&change("c1", None)));
        assert!(by_customer.matches(&change("c1", Some("o1"))));
        assert!(!by_customer.matches(&change("c2", Some("o1"))));
        let by_order = Filter {
            order_id: Some("o1".into()),
            ..Filter::default()
        };
        assert!(by_order.matches(&change("c1", Some("o1"))));
        assert!(!by_order.matches(&change("c1", None)));
        assert!(Filter::default().matches(&change("c9", None)));
    }

    #[test]
    fn a_tenant_filter_passes_only_that_tenants_changes() {
        let change = |tenant: Option<&str>| Change {
            seq: 1,
            kind: Kind::Customer,
            customer_id: "c1".into(),
            order_id: None,
            data: "{}".into(),
            tenant: tenant.map(Into::into),
        };
        let acme = Filter {
            tenant: Some("acme".into()),
            ..Filter::default()
        };
        assert!(acme.matches(&change(Some("acme"))));
        assert!(!acme.matches(&change(Some("globex"))));
        // A row of no tenant is for admins only.
        assert!(!acme.matches(&change(None)));
        assert!(Filter::default().matches(&change(Some("globex"))));
        assert!(Filter::default().matches(&change(None)));
    }
}
