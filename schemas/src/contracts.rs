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
    let composed = compose(FILES.iter().map(|(_, text)| *text)).expect("embedded .avsc files");
    TOPIC_ENVELOPES
        .iter()
        .map(|(topic, record)| (*topic, composed[*record].clone()))
        .collect()
});

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{file}: not JSON: {reason}")]
    Json { file: String, reason: String },
    #[error("{0}: a record schema needs a \"name\"")]
    Unnamed(String),
}

/// Every record of `files` (schema texts), self-contained, by simple record name. Used on
/// the embedded files at start-up, and on the files on disk by `feedline schema check`.
pub fn compose<'a>(
    files: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, String>, ContractError> {
    let mut by_fullname: HashMap<String, Value> = HashMap::new();
    for text in files {
        let json: Value = serde_json::from_str(text).map_err(|e| ContractError::Json {
            file: text.chars().take(60).collect(),
            reason: e.to_string(),
        })?;
        let name = fullname(&json)
            .ok_or_else(|| ContractError::Unnamed(text.chars().take(60).collect()))?;
        by_fullname.insert(name, json);
    }
    Ok(by_fullname
        .iter()
        .map(|(name, json)| {
            let mut json = json.clone();
            let mut defined = vec![name.clone()];
            inline(&mut json, &by_fullname, &mut defined);
            let simple = name.rsplit('.').next().unwrap_or(name).to_owned();
            (simple, json.to_string())
        })
        .collect())
}

fn fullname(record: &Value) -> Option<String> {
    match (record["namespace"].as_str(), record["name"].as_str()) {
        (_, Some(name)) if name.contains('.') => Some(name.to_owned()),
        (Some(ns), Some(name)) => Some(format!("{ns}.{name}")),
        (None, Some(name)) => Some(name.to_owned()),
        _ => None,
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
