//! The settings each service of a run ran with, for the run's metadata: read from the same
//! layers the services load (their built-in defaults, then `--service-config`), so the report
//! never restates a setting that a service has since changed.

use std::collections::BTreeMap;

use feedline::Settings;
use serde_json::{Value, json};

/// Every service's built-in defaults, by name, in start order.
pub const SERVICES: [(&str, &str); 5] = [
    ("registry", feedline_registry::DEFAULTS),
    ("orders", feedline_orders::DEFAULTS),
    ("customers", feedline_customers::DEFAULTS),
    ("order-view", feedline_order_view::DEFAULTS),
    ("gateway", feedline_gateway::DEFAULTS),
];

/// Services that consume, whose consumer settings are recorded.
const CONSUMERS: [&str; 3] = ["orders", "customers", "order-view"];

/// What a child process loads: its defaults, then `extra` (its `FEEDLINE_CONFIG` file). Its
/// `FEEDLINE_*` variables only say where the broker, the registry, its database and its port
/// are, none of which the metadata records.
pub fn layered(defaults: &str, extra: &str) -> anyhow::Result<Settings> {
    Ok(Settings::from_toml(defaults)?.with_overrides(extra)?)
}

/// The settings of every service as child processes load them.
pub fn of_processes(extra: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    SERVICES
        .iter()
        .map(|(name, defaults)| Ok(((*name).to_owned(), describe(&layered(defaults, extra)?))))
        .collect()
}

/// What the metadata records of one service's settings: what bounds its throughput, latency
/// and memory.
pub fn describe(s: &Settings) -> Value {
    let kafka = &s.kafka;
    let mut out = json!({
        "partitions": kafka.default_partitions,
        "linger_ms": kafka.linger_ms,
        "compression": kafka.producer_config().get("compression.type").unwrap_or("none"),
        "kafka_properties": feedline::config::redacted_properties(&kafka.properties),
        "database_max_connections": s.database.max_connections,
    });
    if CONSUMERS.contains(&s.service_name.as_str()) {
        let c = &s.consumer;
        out["consumer"] = json!({
            "batch_max": c.batch_max,
            "batch_wait_ms": c.batch_wait_ms,
            "queued_max_kbytes": c.queued_max_kbytes,
            "fetch_queue_backoff_ms": c.fetch_queue_backoff_ms,
        });
    }
    if s.service_name == "gateway"
        && let Ok(gateway) = s.section::<Value>("gateway")
    {
        out["admission"] = gateway["admission"].clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_the_service_ships_and_what_the_run_layers_over_it() {
        let shipped = of_processes("").unwrap();
        let view = Settings::from_toml(feedline_order_view::DEFAULTS).unwrap();
        assert_eq!(
            shipped["order-view"]["consumer"]["batch_max"],
            json!(view.consumer.batch_max)
        );
        let tuned = of_processes("[consumer]\nbatch_max = 7\n").unwrap();
        assert_eq!(tuned["orders"]["consumer"]["batch_max"], json!(7));
        assert!(tuned["gateway"].get("consumer").is_none());
    }
}
