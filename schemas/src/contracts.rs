//! The `.avsc` files, embedded, and the self-contained envelope schemas registered per topic.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

/// Every `.avsc` file of `schemas/avro/`, by record name.
pub const FILES: &[(&str, &str)] = &[
    ("PlaceOrder", include_str!("../avro/PlaceOrder.avsc")),
    ("CancelOrder", include_str!("../avro/CancelOrder.avsc")),
    (
        "RegisterCustomer",
        include_str!("../avro/RegisterCustomer.avsc"),
    ),
    (
        "ChangeCreditLimit",
        include_str!("../avro/ChangeCreditLimit.avsc"),
    ),
    ("OrderCreated", include_str!("../avro/OrderCreated.avsc")),
    ("OrderApproved", include_str!("../avro/OrderApproved.avsc")),
    ("OrderRejected", include_str!("../avro/OrderRejected.avsc")),
    (
        "OrderCancelled",
        include_str!("../avro/OrderCancelled.avsc"),
    ),
    (
        "CustomerRegistered",
        include_str!("../avro/CustomerRegistered.avsc"),
    ),
    (
        "CreditLimitChanged",
        include_str!("../avro/CreditLimitChanged.avsc"),
    ),
    (
        "CreditReserved",
        include_str!("../avro/CreditReserved.avsc"),
    ),
    (
        "CreditLimitExceeded",
        include_str!("../avro/CreditLimitExceeded.avsc"),
    ),
    (
        "CreditReleased",
        include_str!("../avro/CreditReleased.avsc"),
    ),
    ("OrderCommand", include_str!("../avro/OrderCommand.avsc")),
    ("OrderEvent", include_str!("../avro/OrderEvent.avsc")),
    (
        "CustomerCommand",
        include_str!("../avro/CustomerCommand.avsc"),
    ),
    ("CustomerEvent", include_str!("../avro/CustomerEvent.avsc")),
    ("CreditEvent", include_str!("../avro/CreditEvent.avsc")),
];

/// Which envelope record each topic carries.
pub const TOPIC_ENVELOPES: &[(&str, &str)] = &[
    (crate::ORDER_COMMANDS, "OrderCommand"),
    (crate::ORDER_EVENTS, "OrderEvent"),
    (crate::CUSTOMER_COMMANDS, "CustomerCommand"),
    (crate::CUSTOMER_EVENTS, "CustomerEvent"),
    (crate::CREDIT_EVENTS, "CreditEvent"),
];

/// Envelope schemas with every referenced record written inline at its first use, so any
/// Confluent-aware tool reads them without schema references.
static ENVELOPES: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    let by_fullname: HashMap<String, Value> = FILES
        .iter()
        .map(|(_, text)| {
            let json: Value = serde_json::from_str(text).expect("embedded .avsc is JSON");
            (fullname(&json), json)
        })
        .collect();
    TOPIC_ENVELOPES
        .iter()
        .map(|(topic, record)| {
            let (_, text) = FILES
                .iter()
                .find(|(n, _)| n == record)
                .expect("envelope file");
            let mut json: Value = serde_json::from_str(text).expect("embedded .avsc is JSON");
            let mut defined = vec![fullname(&json)];
            inline(&mut json, &by_fullname, &mut defined);
            (*topic, json.to_string())
        })
        .collect()
});

fn fullname(record: &Value) -> String {
    match (record["namespace"].as_str(), record["name"].as_str()) {
        (Some(ns), Some(name)) => format!("{ns}.{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => panic!("record without a name: {record}"),
    }
}

/// Replaces each name of a known record by its definition, the first time it appears.
fn inline(node: &mut Value, records: &HashMap<String, Value>, defined: &mut Vec<String>) {
    match node {
        Value::String(name) if records.contains_key(name.as_str()) && !defined.contains(name) => {
            defined.push(name.clone());
            let mut definition = records[name.as_str()].clone();
            inline(&mut definition, records, defined);
            *node = definition;
        }
        Value::Array(items) => items.iter_mut().for_each(|i| inline(i, records, defined)),
        Value::Object(map) => {
            for key in ["type", "fields", "items", "values"] {
                if let Some(child) = map.get_mut(key) {
                    inline(child, records, defined);
                }
            }
        }
        _ => {}
    }
}

/// The self-contained value schema of `topic` (unprefixed topic name), if it is one of ours.
pub fn envelope_schema(topic: &str) -> Option<&'static str> {
    ENVELOPES.get(topic).map(String::as_str)
}
