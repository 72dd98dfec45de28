//! feedline's message contracts. Topics are keyed by `customer_id`, so everything about one
//! customer stays ordered on one partition; each topic has one value subject
//! (`<topic>-value`, Confluent's TopicNameStrategy).
//!
//! A leaf crate: names, Avro schemas and Rust types only, no Kafka, database or HTTP. What
//! binds them to the platform (topic specs, registration, encoders and decoders) is
//! `feedline::contracts`.

pub mod contracts;
pub mod types;

pub use contracts::envelope_schema;

/// Commands the gateway publishes for the order service.
pub const ORDER_COMMANDS: &str = "order-commands";
/// Events of the order service.
pub const ORDER_EVENTS: &str = "order-events";
/// Commands the gateway publishes for the customer service.
pub const CUSTOMER_COMMANDS: &str = "customer-commands";
/// Events of the customer service about customers.
pub const CUSTOMER_EVENTS: &str = "customer-events";
/// Credit decisions of the customer service.
pub const CREDIT_EVENTS: &str = "credit-events";
/// The schema registry's log (compacted, one partition).
pub const SCHEMAS_TOPIC: &str = "_schemas";

/// Every business topic of the system.
pub const TOPICS: &[&str] = &[
    ORDER_COMMANDS,
    ORDER_EVENTS,
    CUSTOMER_COMMANDS,
    CUSTOMER_EVENTS,
    CREDIT_EVENTS,
];

/// The event topics the read model (order-view) is rebuilt from: they keep their events for
/// `kafka.event_retention_ms` (forever by default).
pub const EVENT_TOPICS: &[&str] = &[ORDER_EVENTS, CUSTOMER_EVENTS, CREDIT_EVENTS];

/// The value subject of `topic` under the TopicNameStrategy.
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_topic_name_strategy() {
        assert_eq!(value_subject(ORDER_EVENTS), "order-events-value");
    }
}
