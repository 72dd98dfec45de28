//! Dead-letter queue: a message that can never be processed goes to `<topic>.dlq` with
//! headers that say why and where it came from, so it can be inspected and re-driven.

use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};

use crate::producer::{Delivered, Outgoing, ProduceError, Producer};

pub const DLQ_SUFFIX: &str = ".dlq";

/// Header names on every dead-lettered message; values are UTF-8 text.
pub mod header {
    pub const ERROR: &str = "dlq.error";
    pub const ERROR_KIND: &str = "dlq.error.kind";
    pub const SOURCE_TOPIC: &str = "dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "dlq.source.offset";
    pub const SOURCE_TIMESTAMP: &str = "dlq.source.timestamp";
    pub const GROUP: &str = "dlq.consumer.group";
    pub const TIME: &str = "dlq.time";
}

pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// Why a message was rejected: `kind` is a stable machine word (`decode`, `validation`, ...),
/// `reason` the human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(kind: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            kind: kind.into(),
            reason: reason.into(),
        }
    }
}

/// Sends `msg` (key, payload and original headers unchanged) to its topic's DLQ and waits
/// for the broker's acknowledgement.
pub async fn dead_letter(
    producer: &Producer,
    group: &str,
    msg: &OwnedMessage,
    rejection: &Rejection,
) -> Result<Delivered, ProduceError> {
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let source_ts = msg
        .timestamp()
        .to_millis()
        .map(|t| t.to_string())
        .unwrap_or_default();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut headers: Vec<(&str, &[u8])> = vec![
        (header::ERROR, rejection.reason.as_bytes()),
        (header::ERROR_KIND, rejection.kind.as_bytes()),
        (header::SOURCE_TOPIC, msg.topic().as_bytes()),
        (header::SOURCE_PARTITION, partition.as_bytes()),
        (header::SOURCE_OFFSET, offset.as_bytes()),
        (header::SOURCE_TIMESTAMP, source_ts.as_bytes()),
        (header::GROUP, group.as_bytes()),
        (header::TIME, now.as_bytes()),
    ];
    if let Some(original) = msg.headers() {
        headers.extend(
            original
                .iter()
                .filter(|h| !h.key.starts_with("dlq."))
                .map(|h| (h.key, h.value.unwrap_or_default())),
        );
    }
    let topic = dlq_topic(msg.topic());
    let outgoing = Outgoing {
        topic: &topic,
        key: msg.key(),
        payload: msg.payload().unwrap_or_default(),
        headers: &headers,
        partition: None,
    };
    producer.send(outgoing).await
}
