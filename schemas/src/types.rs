//! Rust types of the contracts in `schemas/avro/`. Field order and names follow the `.avsc`
//! files exactly (Avro binary is positional); `tests` proves each type against its schema.
//! Ids are UUID strings (Avro `string` with `logicalType: uuid`); money is `i64` cents.

use serde::{Deserialize, Serialize};

/// The per-topic envelopes: metadata plus the topic's payload union. One named struct per
/// topic, because Avro's schema-aware deserializer matches the struct name to the record's.
macro_rules! envelope {
    ($(#[$doc:meta])* $name:ident, $payload:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Unique per message; consumers deduplicate on it.
            pub event_id: String,
            /// Milliseconds since the Unix epoch (`timestamp-millis`).
            pub occurred_at: i64,
            /// Shared by every message of one business flow.
            pub correlation_id: String,
            /// `event_id` of the message that caused this one.
            pub causation_id: Option<String>,
            /// Service (and replica) that produced the message.
            pub producer: String,
            pub payload: $payload,
        }

        impl Envelope for $name {
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn correlation_id(&self) -> &str {
                &self.correlation_id
            }
        }

        impl $name {
            /// A new message with a fresh `event_id`, stamped now. The id is a UUIDv7: time
            /// first, so the `processed_events` indexes of its consumers grow at their end
            /// instead of taking a random page per event.
            pub fn new(
                producer: &str,
                correlation_id: String,
                causation_id: Option<String>,
                payload: $payload,
            ) -> Self {
                $name {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    occurred_at: now_millis(),
                    correlation_id,
                    causation_id,
                    producer: producer.to_owned(),
                    payload,
                }
            }
        }
    };
}

/// What every envelope has, whatever its topic.
pub trait Envelope {
    /// Unique per message: the key of `processed_events`.
    fn event_id(&self) -> &str;
    /// Shared by every message of one business flow.
    fn correlation_id(&self) -> &str;
}

/// Where a consumer's decoders are built, one per topic, each decoding into the message
/// type `M` (the platform's contracts are one).
pub trait TopicSink<M>: Sized {
    type Error;
    /// Adds the decoder of `topic`'s envelope `T` (unprefixed name).
    fn topic<T>(self, topic: &'static str) -> Result<Self, Self::Error>
    where
        T: serde::de::DeserializeOwned + Into<M> + Send + 'static;
}

/// A message type consumed from topics: it says which, and which envelope each carries.
pub trait Consumed: Sized {
    fn decoders<S: TopicSink<Self>>(sink: S) -> Result<S, S::Error>;
}

/// A service's incoming message: one of the envelopes it consumes, told apart by variant.
/// Each envelope converts into it (what a consumer's decoders decode into), and it is an
/// [`Envelope`] itself. With `from TOPIC` on every variant it is [`Consumed`] from those
/// topics too.
///
/// ```
/// use feedline_schemas::{CREDIT_EVENTS, ORDER_COMMANDS};
/// use feedline_schemas::types::{CreditEvent, OrderCommand};
///
/// feedline_schemas::one_of! {
///     /// What the order service consumes.
///     pub enum Incoming {
///         Command(OrderCommand) from ORDER_COMMANDS,
///         Credit(CreditEvent) from CREDIT_EVENTS,
///     }
/// }
/// ```
#[macro_export]
macro_rules! one_of {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($variant:ident($ty:ty) from $topic:expr),+ $(,)?
    }) => {
        $crate::one_of! { $(#[$meta])* $vis enum $name { $($variant($ty)),+ } }

        impl $crate::types::Consumed for $name {
            fn decoders<S: $crate::types::TopicSink<Self>>(sink: S) -> Result<S, S::Error> {
                $(let sink = sink.topic::<$ty>($topic)?;)+
                Ok(sink)
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name {
            $($variant($ty)),+
        }

        $(impl From<$ty> for $name {
            fn from(message: $ty) -> Self {
                $name::$variant(message)
            }
        })+

        impl $crate::types::Envelope for $name {
            fn event_id(&self) -> &str {
                match self {
                    $($name::$variant(m) => $crate::types::Envelope::event_id(m)),+
                }
            }
            fn correlation_id(&self) -> &str {
                match self {
                    $($name::$variant(m) => $crate::types::Envelope::correlation_id(m)),+
                }
            }
        }
    };
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

macro_rules! record {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }
    };
}

record!(PlaceOrder {
    order_id: String,
    customer_id: String,
    total_cents: i64
});
record!(CancelOrder { order_id: String, customer_id: String, reason: Option<String> });
record!(RegisterCustomer {
    customer_id: String,
    name: String,
    credit_limit_cents: i64,
    /// The tenant the customer belongs to; `None` for no tenant (seen by admins only).
    tenant: Option<String>
});
record!(ChangeCreditLimit {
    customer_id: String,
    credit_limit_cents: i64
});
record!(OrderCreated {
    order_id: String,
    customer_id: String,
    total_cents: i64
});
record!(OrderApproved {
    order_id: String,
    customer_id: String,
    total_cents: i64
});
record!(OrderRejected {
    order_id: String,
    customer_id: String,
    total_cents: i64,
    reason: String
});
record!(OrderCancelled { order_id: String, customer_id: String, total_cents: i64, reason: Option<String> });
record!(CustomerRegistered {
    customer_id: String,
    name: String,
    credit_limit_cents: i64,
    /// The tenant the customer belongs to; `None` for no tenant (seen by admins only).
    tenant: Option<String>
});
record!(CreditLimitChanged {
    customer_id: String,
    credit_limit_cents: i64,
    credit_reserved_cents: i64
});
record!(CreditReserved {
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    credit_reserved_cents: i64,
    credit_limit_cents: i64,
});
record!(CreditLimitExceeded {
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    credit_available_cents: i64,
    reason: String,
});
record!(CreditReleased {
    order_id: String,
    customer_id: String,
    amount_cents: i64,
    credit_reserved_cents: i64
});

/// Payload union of `order-commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommandPayload {
    PlaceOrder(PlaceOrder),
    CancelOrder(CancelOrder),
}

/// Payload union of `order-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEventPayload {
    OrderCreated(OrderCreated),
    OrderApproved(OrderApproved),
    OrderRejected(OrderRejected),
    OrderCancelled(OrderCancelled),
}

/// Payload union of `customer-commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCommandPayload {
    RegisterCustomer(RegisterCustomer),
    ChangeCreditLimit(ChangeCreditLimit),
}

/// Payload union of `customer-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerEventPayload {
    CustomerRegistered(CustomerRegistered),
    CreditLimitChanged(CreditLimitChanged),
}

/// Payload union of `credit-events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditEventPayload {
    CreditReserved(CreditReserved),
    CreditLimitExceeded(CreditLimitExceeded),
    CreditReleased(CreditReleased),
}

envelope!(
    /// Value of `order-commands`.
    OrderCommand, OrderCommandPayload
);
envelope!(
    /// Value of `order-events`.
    OrderEvent, OrderEventPayload
);
envelope!(
    /// Value of `customer-commands`.
    CustomerCommand, CustomerCommandPayload
);
envelope!(
    /// Value of `customer-events`.
    CustomerEvent, CustomerEventPayload
);
envelope!(
    /// Value of `credit-events`.
    CreditEvent, CreditEventPayload
);
