//! The transactional outbox: a service writes its state change and the events it emits in
//! one database transaction; the relay publishes the rows in order and deletes them only
//! after the broker acknowledged them.
//!
//! Two ways lead from a committed row to the broker:
//!
//! - **Hand-off** (the fast path): the handler that committed passes the rows' ids and bytes
//!   to the relay of its own process ([`Outbox::committed`]), which publishes them at once:
//!   no `NOTIFY`, no wake-up of a listener, no `SELECT` of what the handler already holds.
//! - **The table** (the fallback): rows of other replicas (announced by `NOTIFY`), rows left
//!   by a crash or a restart, rows whose hand-off was dropped (the relay was not active, or
//!   behind) are read from the table in id order, as before.
//!
//! Either way a row is deleted only after the broker acknowledged it, so a crash anywhere
//! leaves the row to be published again (at-least-once; consumers deduplicate on the
//! event id). Publishing does not wait for acknowledgements: a separate task awaits them in
//! order and deletes the acknowledged rows, while the relay goes on publishing.
//!
//! Order per key: one relay per database publishes (the advisory lock), through one
//! idempotent producer, in the order it enqueues. Within this process that is commit order
//! (hand-offs arrive in commit order; after a dropped hand-off, later ones go through the
//! table too until the relay has read it, see [`Shared::missed`]); rows read from the table
//! go in id order, and all rows already in the table when the relay becomes active go
//! before any hand-off.
//!
//! [`writer`] puts rows in the table inside the caller's transaction and hands them over;
//! [`relay`] holds the lock, publishes and deletes.

mod relay;
mod writer;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::producer::{Outgoing, PendingDelivery, ProduceError, Producer};
use crate::telemetry::{TRACEPARENT, Traceparent};

pub use relay::{OutboxRelay, Published};
pub use writer::{Enqueued, enqueue};
/// Channel the enqueue notifies at commit, so a relay in another process publishes without
/// polling delay.
pub const NOTIFY_CHANNEL: &str = "feedline_outbox";

/// Advisory lock held by the single active relay of a database: one publisher keeps the
/// rows' order; standby replicas take over when its connection goes away.
const RELAY_LOCK: i64 = 0x0fee_d11e;

/// Transactions whose rows may wait for the relay in memory; beyond that the hand-off is
/// dropped and the rows are read from the table.
const HANDOFF_CAPACITY: usize = 256;

/// The relay's first and longest wait before it reconnects to a dependency that went away.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Messages published and not yet acknowledged at most: bounds what the acknowledging task
/// holds, and makes the relay wait for the broker rather than pile up.
const IN_FLIGHT: usize = 10_000;

/// How long the relay remembers ids it published from the table, to skip their hand-off
/// arriving later. A hand-off is sent right after the commit, so it is always far quicker;
/// one later than this would only cause a duplicate, which consumers absorb.
const REMEMBER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The trace the message continues, published as its `traceparent`: the span that
    /// caused it (see [`crate::transactional::Work::trace_context`]). `None`: the span
    /// current when the row is written.
    pub trace_context: Option<Traceparent>,
}

impl OutboxMessage {
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        OutboxMessage {
            topic: topic.into(),
            key,
            payload,
            headers: Vec::new(),
            trace_context: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("outbox row {id} has malformed headers")]
    Headers { id: i64 },
    /// The broker refused the row itself (too large, invalid): no retry can publish it.
    #[error("outbox row {id} cannot be published: {source}")]
    Rejected { id: i64, source: ProduceError },
}

impl OutboxError {
    /// The row at fault, when the error is the row's and not a dependency's.
    fn bad_row(&self) -> Option<i64> {
        match self {
            OutboxError::Headers { id } | OutboxError::Rejected { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// A produce failure of row `id`, blamed on the row only when the broker refused the
    /// message itself; anything else (a topic missing for a while, a broker away) is an
    /// outage the relay waits out.
    fn produce(id: i64, e: ProduceError) -> Self {
        use rdkafka::types::RDKafkaErrorCode::*;
        let ProduceError::Fatal { source, .. } = &e else {
            return OutboxError::Produce(e);
        };
        match source.rdkafka_error_code() {
            Some(
                MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord
                | InvalidArgument | BadMessage,
            ) => OutboxError::Rejected { id, source: e },
            _ => OutboxError::Produce(e),
        }
    }
}

/// Appends `messages` to the outbox inside the caller's transaction, in order, and notifies
/// the relay at commit. A service whose handler hands its rows over uses
/// [`Outbox::enqueue`] instead.
fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in headers {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode_headers(mut bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        bytes = rest;
        Some(head)
    };
    let mut headers = Vec::new();
    while let Some(len) = take(2) {
        let key_len = u16::from_be_bytes(len.try_into().ok()?) as usize;
        let key = String::from_utf8(take(key_len)?.to_vec()).ok()?;
        let value_len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        headers.push((key, take(value_len)?.to_vec()));
    }
    // A lone trailing byte is corruption too, not an empty header.
    bytes.is_empty().then_some(headers)
}

/// One outbox row, as handed over or as read back.
#[derive(Debug)]
struct Staged {
    id: i64,
    message: OutboxMessage,
}

/// What a service shares between its handler and its relay: the database and the in-process
/// hand-off of committed rows.
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: PgPool,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Set while this process's relay holds the lock and takes hand-offs.
    active: AtomicBool,
    /// Set when committed rows were not handed over: until the relay has read the table,
    /// later hand-offs are dropped too, or they would overtake those rows.
    missed: AtomicBool,
    sender: mpsc::Sender<Vec<Staged>>,
    /// Taken by the relay when it starts.
    receiver: Mutex<Option<mpsc::Receiver<Vec<Staged>>>>,
    /// Wakes the relay when `missed` was set.
    wake: Notify,
    /// Set while the relay cannot reach its database or the broker: readiness says so.
    outage: AtomicBool,
}

impl Shared {
    fn miss(&self) {
        self.missed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let headers = vec![
            ("event-id".to_owned(), b"abc".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)).unwrap(), headers);
        assert_eq!(decode_headers(&[]).unwrap(), vec![]);
    }

    #[test]
    fn truncated_headers_are_rejected() {
        let bytes = encode_headers(&[("k".to_owned(), b"value".to_vec())]);
        assert!(decode_headers(&bytes[..bytes.len() - 1]).is_none());
    }
}
