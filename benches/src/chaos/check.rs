//! One file: every end-of-run check reads the same snapshot of the system.
//!
//! The end-of-run checks. Each reads the system's own state (the orders and customers
//! databases, order-view's SQLite files, the dead-letter topics) and compares it with what
//! the clients were told; none trusts the harness's counters. Where the system may still be
//! catching up (settling, the view, the outbox relays, the feed), a check polls its condition
//! until it holds or its deadline passes, and then reports what it saw last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Headers as _;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::{PgPool, SqlitePool};

use super::feed::Watched;
use super::load::{Record, Told};
use super::poison::{MARKER, Poison};

pub const FINAL: [&str; 3] = ["APPROVED", "REJECTED", "CANCELLED"];

/// One check's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &str, passed: bool, detail: String) -> Check {
        Check {
            name: name.to_owned(),
            passed,
            detail,
        }
    }
}

/// An order row, as either side stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub customer_id: String,
    pub status: String,
    pub total_cents: i64,
    pub reason: Option<String>,
}

pub async fn orders(db: &PgPool) -> anyhow::Result<HashMap<String, OrderRow>> {
    let rows: Vec<(String, String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT id::text, customer_id::text, status, total_cents, reason FROM orders",
    )
    .fetch_all(db)
    .await
    .context("failed to read the orders database")?;
    Ok(rows
        .into_iter()
        .map(|(id, customer_id, status, total_cents, reason)| {
            (
                id.clone(),
                OrderRow {
                    id,
                    customer_id,
                    status,
                    total_cents,
                    reason,
                },
            )
        })
        .collect())
}

/// The orders' fate, as the databases tell it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Fate {
    /// Orders whose client got a 202.
    pub accepted: u64,
    /// Accepted, and absent from the orders database.
    pub lost: u64,
    /// Rows beyond the first for one client order (found by its unique total).
    pub duplicated: u64,
    /// Accepted, present, and not in a final state.
    pub stuck: u64,
    /// The client gave up (4xx, or retries exhausted), or the open loop could not send it.
    pub gave_up: u64,
    pub not_sent: u64,
    /// Orders whose client was not told 202 but which exist anyway (a retried timeout).
    pub created_unacknowledged: u64,
    pub examples: Vec<String>,
}

/// Accepted orders not yet final (missing or pending) in `rows`.
fn unsettled(records: &[Record], rows: &HashMap<String, OrderRow>) -> usize {
    records
        .iter()
        .filter(|r| match &r.told {
            Told::Accepted { order_id } => rows
                .get(order_id)
                .is_none_or(|row| !FINAL.contains(&row.status.as_str())),
            _ => false,
        })
        .count()
}

/// Polls the orders database until every accepted order is final, or `deadline`.
pub async fn wait_settled(
    db: &PgPool,
    records: &[Record],
    deadline: Instant,
) -> anyhow::Result<HashMap<String, OrderRow>> {
    loop {
        let rows = orders(db).await;
        if let Ok(rows) = &rows {
            let left = unsettled(records, rows);
            if left == 0 || Instant::now() >= deadline {
                eprintln!("  {left} accepted order(s) not final");
                return Ok(rows.clone());
            }
        } else if Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn fate(records: &[Record], rows: &HashMap<String, OrderRow>) -> Fate {
    let mut fate = Fate::default();
    let by_total: HashMap<i64, Vec<&OrderRow>> =
        rows.values().fold(HashMap::new(), |mut m, row| {
            m.entry(row.total_cents).or_default().push(row);
            m
        });
    for record in records {
        let found: Vec<&&OrderRow> = by_total
            .get(&record.total_cents)
            .map(|v| {
                v.iter()
                    .filter(|r| r.customer_id == record.customer)
                    .collect()
            })
            .unwrap_or_default();
        if found.len() > 1 {
            fate.duplicated += found.len() as u64 - 1;
            if fate.examples.len() < 10 {
                fate.examples.push(format!(
                    "order #{} (Idempotency-Key {}) has {} rows: {:?}",
                    record.seq,
                    record.idempotency_key,
                    found.len(),
                    found.iter().map(|r| &r.id).collect::<Vec<_>>()
                ));
            }
        }
        match &record.told {
            Told::Accepted { order_id } => {
                fate.accepted += 1;
                match rows.get(order_id) {
                    None => {
                        fate.lost += 1;
                        if fate.examples.len() < 10 {
                            fate.examples.push(format!(
                                "order {order_id} (#{}, 202 at {:.1} s) is not in the orders database",
                                record.seq, record.answered
                            ));
                        }
                    }
                    Some(row) if !FINAL.contains(&row.status.as_str()) => {
                        fate.stuck += 1;
                        if fate.examples.len() < 10 {
                            fate.examples.push(format!(
                                "order {order_id} (#{}, 202 at {:.1} s) is still {}",
                                record.seq, record.answered, row.status
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
            Told::GaveUp { .. } => {
                fate.gave_up += 1;
                fate.created_unacknowledged += !found.is_empty() as u64;
            }
            Told::NotSent => fate.not_sent += 1,
        }
    }
    fate
}

/// Each customer's reserved credit against the sum of its approved orders.
pub async fn credit(customers_db: &PgPool, rows: &HashMap<String, OrderRow>) -> Check {
    let reserved: Result<Vec<(String, i64)>, _> =
        sqlx::query_as("SELECT id::text, credit_reserved_cents FROM customers")
            .fetch_all(customers_db)
            .await;
    let reserved = match reserved {
        Ok(r) => r,
        Err(e) => {
            return Check::new("credit", false, format!("could not read customers: {e}"));
        }
    };
    let mut approved: HashMap<&str, i64> = HashMap::new();
    for row in rows.values().filter(|r| r.status == "APPROVED") {
        *approved.entry(row.customer_id.as_str()).or_default() += row.total_cents;
    }
    let mut wrong = Vec::new();
    for (id, cents) in &reserved {
        let want = approved.get(id.as_str()).copied().unwrap_or(0);
        if *cents != want {
            wrong.push(format!(
                "{id}: reserved {cents}, approved orders sum to {want}"
            ));
        }
    }
    let known: HashSet<&str> = reserved.iter().map(|(id, _)| id.as_str()).collect();
    for (id, sum) in &approved {
        if !known.contains(id) {
            wrong.push(format!(
                "{id}: approved orders sum to {sum} but the customer does not exist"
            ));
        }
    }
    Check::new(
        "reserved credit = sum of approved orders, per customer",
        wrong.is_empty(),
        if wrong.is_empty() {
            format!("{} customers balance", reserved.len())
        } else {
            format!(
                "{} customer(s) off: {}",
                wrong.len(),
                wrong.into_iter().take(5).collect::<Vec<_>>().join("; ")
            )
        },
    )
}

async fn view_rows(file: &str) -> anyhow::Result<HashMap<String, OrderRow>> {
    // Read-only: order-view's writer owns the file; WAL lets this read beside it.
    let pool = SqlitePool::connect(&format!("sqlite:{file}?mode=ro"))
        .await
        .with_context(|| format!("failed to open {file}"))?;
    let rows: Vec<(String, String, String, i64, Option<String>)> =
        sqlx::query_as("SELECT id, customer_id, status, total_cents, reason FROM orders")
            .fetch_all(&pool)
            .await
            .with_context(|| format!("failed to read the orders of {file}"))?;
    pool.close().await;
    Ok(rows
        .into_iter()
        .map(|(id, customer_id, status, total_cents, reason)| {
            (
                id.clone(),
                OrderRow {
                    id,
                    customer_id,
                    status,
                    total_cents,
                    reason,
                },
            )
        })
        .collect())
}

fn diff(view: &HashMap<String, OrderRow>, truth: &HashMap<String, OrderRow>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, row) in truth {
        match view.get(id) {
            None => out.push(format!("{id} ({}) missing", row.status)),
            Some(v) if v != row => out.push(format!(
                "{id}: view {}/{}/{:?}, database {}/{}/{:?}",
                v.status, v.total_cents, v.reason, row.status, row.total_cents, row.reason
            )),
            Some(_) => {}
        }
    }
    for id in view.keys() {
        if !truth.contains_key(id) {
            out.push(format!("{id} only in the view"));
        }
    }
    out
}

/// order-view replica `file` equals the orders database row by row, polled until it does or
/// `deadline` (the view may still be applying the last events).
pub async fn view(file: &str, replica: usize, orders_db: &PgPool, deadline: Instant) -> Check {
    let name = format!("order-view#{replica} = orders database, row by row");
    loop {
        let outcome = async {
            let truth = orders(orders_db).await?;
            let view = view_rows(file).await?;
            anyhow::Ok((diff(&view, &truth), truth.len()))
        }
        .await;
        let done = Instant::now() >= deadline;
        match outcome {
            Ok((d, n)) if d.is_empty() => {
                return Check::new(&name, true, format!("{n} orders identical"));
            }
            Ok((d, n)) if done => {
                return Check::new(
                    &name,
                    false,
                    format!(
                        "{} of {n} differ: {}",
                        d.len(),
                        d.into_iter().take(5).collect::<Vec<_>>().join("; ")
                    ),
                );
            }
            Err(e) if done => return Check::new(&name, false, format!("{e:#}")),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The outbox of `db` is empty, polled until it is or `deadline`.
pub async fn outbox(service: &str, db: &PgPool, deadline: Instant) -> Check {
    let name = format!("{service} outbox empty");
    loop {
        let left: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(db)
            .await;
        let done = Instant::now() >= deadline;
        match left {
            Ok(0) => return Check::new(&name, true, "0 rows".into()),
            Ok(n) if done => return Check::new(&name, false, format!("{n} rows left")),
            Err(e) if done => return Check::new(&name, false, format!("{e}")),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The change log of one customer in order-view's file: (seq, kind, order id, data).
type ChangeRow = (i64, String, Option<String>, String);

/// The customer's changes from `from` on, and the oldest change the log still retains:
/// order-view trims the oldest rows (`change_log_retain`), so what the feed delivered before
/// that can no longer be compared.
async fn changes(file: &str, customer: &str, from: i64) -> anyhow::Result<(Vec<ChangeRow>, i64)> {
    let pool = SqlitePool::connect(&format!("sqlite:{file}?mode=ro")).await?;
    let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM changes")
        .fetch_one(&pool)
        .await?;
    let rows = sqlx::query_as(
        "SELECT seq, kind, order_id, data FROM changes WHERE customer_id = ? AND seq >= ? ORDER BY seq",
    )
    .bind(customer)
    .bind(from)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok((rows, oldest.unwrap_or(0)))
}

/// A feed client saw each change of its customer once and in order: its event ids are the
/// customer's rows of the change log of the order-view behind the gateway, from its first
/// event on, each once, ascending; and the last change it saw of each order is that order's
/// final state in the orders database.
pub async fn feed(
    watched: &std::sync::Mutex<Watched>,
    view_file: &str,
    rows: &HashMap<String, OrderRow>,
    deadline: Instant,
) -> Check {
    let customer = watched.lock().expect("poisoned").customer.clone();
    let name = format!("feed of customer {customer}: each change once, in order");
    loop {
        let (ids, kinds, last_status, reconnects) = {
            let w = watched.lock().expect("poisoned");
            let ids: Vec<i64> = w.events.iter().filter_map(|e| e.id).collect();
            let kinds: BTreeMap<String, usize> =
                w.events.iter().fold(BTreeMap::new(), |mut m, e| {
                    *m.entry(e.kind.clone()).or_default() += 1;
                    m
                });
            let mut last_status: HashMap<String, String> = HashMap::new();
            for e in w.events.iter().filter(|e| e.kind == "order") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.data)
                    && let (Some(id), Some(status)) = (v["id"].as_str(), v["status"].as_str())
                {
                    last_status.insert(id.to_owned(), status.to_owned());
                }
            }
            (ids, kinds, last_status, w.reconnects)
        };
        let mut problems = Vec::new();
        let out_of_order = ids.windows(2).filter(|w| w[1] <= w[0]).count();
        if out_of_order > 0 {
            problems.push(format!("{out_of_order} event(s) repeated or out of order"));
        }
        let from = ids.first().copied().unwrap_or(0);
        let mut unverifiable = 0;
        match changes(view_file, &customer, from).await {
            Ok((log, oldest)) => {
                let want: Vec<i64> = log.iter().map(|c| c.0).collect();
                unverifiable = ids.iter().filter(|i| **i < oldest).count();
                let ids: Vec<i64> = ids.iter().copied().filter(|i| *i >= oldest).collect();
                let got: HashSet<i64> = ids.iter().copied().collect();
                let missed: Vec<i64> = want.iter().filter(|s| !got.contains(s)).copied().collect();
                if !missed.is_empty() {
                    problems.push(format!(
                        "{} change(s) of the log never arrived (first: {:?})",
                        missed.len(),
                        &missed[..missed.len().min(5)]
                    ));
                }
                let logged: HashSet<i64> = want.iter().copied().collect();
                let foreign = ids.iter().filter(|i| !logged.contains(i)).count();
                if foreign > 0 {
                    problems.push(format!(
                        "{foreign} event id(s) not in the customer's change log"
                    ));
                }
            }
            Err(e) => problems.push(format!("could not read the change log: {e:#}")),
        }
        let mut stale = 0;
        for row in rows.values().filter(|r| r.customer_id == customer) {
            if last_status.get(&row.id) != Some(&row.status) {
                stale += 1;
            }
        }
        if stale > 0 {
            problems.push(format!(
                "{stale} order(s) whose last change on the feed is not their state in the orders database"
            ));
        }
        if let Some(n) = kinds.get("snapshot") {
            problems.push(format!("{n} snapshot event(s) instead of changes"));
        }
        let summary = format!(
            "{} events ({kinds:?}), {reconnects} reconnection attempt(s){}",
            ids.len(),
            if unverifiable > 0 {
                format!(
                    "; the first {unverifiable} are older than the change log retains and were checked for order only"
                )
            } else {
                String::new()
            }
        );
        if problems.is_empty() {
            return Check::new(&name, true, summary);
        }
        if Instant::now() >= deadline {
            return Check::new(&name, false, format!("{summary}: {}", problems.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One message of a dead-letter topic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub topic: String,
    pub marker: Option<String>,
    pub error: String,
}

fn find_marker(bytes: &[u8]) -> Option<String> {
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())?;
    let rest = &bytes[at..];
    let len = MARKER.len() + 36;
    (rest.len() >= len).then(|| String::from_utf8_lossy(&rest[..len]).into_owned())
}

/// Every message of every `<topic>.dlq` of the run, read from the start to the end offsets.
pub fn dead_letters(
    kafka: &feedline::config::KafkaSettings,
    topics: &[&str],
) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{}chaos-dlq-check", kafka.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("failed to create the DLQ reader")?;
    let mut letters = Vec::new();
    for topic in topics {
        let name = kafka.name(&feedline::dlq::dlq_topic(topic));
        let metadata = consumer
            .fetch_metadata(Some(&name), Duration::from_secs(10))
            .context("failed to read the DLQ's metadata")?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&name, *p, Duration::from_secs(10))
                .context("failed to read the DLQ's offsets")?;
            if high > low {
                ends.insert(*p, high);
                assignment.add_partition_offset(&name, *p, Offset::Offset(low))?;
            }
        }
        if ends.is_empty() {
            continue;
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ends.is_empty() && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.context("failed to read a dead letter")?;
            let mut marker = message.key().and_then(find_marker);
            marker = marker.or_else(|| message.payload().and_then(find_marker));
            let mut error = String::new();
            if let Some(headers) = message.headers() {
                for h in headers.iter() {
                    let value = h.value.unwrap_or_default();
                    if h.key == "dlq.error" {
                        error = String::from_utf8_lossy(value).into_owned();
                    }
                    marker = marker.or_else(|| find_marker(value));
                }
            }
            letters.push(DeadLetter {
                topic: topic.to_string(),
                marker,
                error,
            });
            if ends
                .get(&message.partition())
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                ends.remove(&message.partition());
            }
        }
    }
    Ok(letters)
}

/// The only dead letters are the poison the harness sent, and every poison that reached a
/// topic was dead-lettered.
pub fn poison(letters: &[DeadLetter], sent: &[Poison]) -> Vec<Check> {
    let sent_markers: HashSet<&str> = sent.iter().map(|p| p.marker.as_str()).collect();
    let unexpected: Vec<&DeadLetter> = letters
        .iter()
        .filter(|l| {
            l.marker
                .as_deref()
                .is_none_or(|m| !sent_markers.contains(m))
        })
        .collect();
    let lettered: HashSet<(&str, &str)> = letters
        .iter()
        .filter_map(|l| Some((l.topic.as_str(), l.marker.as_deref()?)))
        .collect();
    let missing: Vec<&Poison> = sent
        .iter()
        .filter(|p| p.expect_dlq && !lettered.contains(&(p.topic.as_str(), p.marker.as_str())))
        .collect();
    vec![
        Check::new(
            "the only dead letters are the harness's poison",
            unexpected.is_empty(),
            if unexpected.is_empty() {
                format!("{} dead letters, all poison", letters.len())
            } else {
                format!(
                    "{} unexpected dead letter(s): {}",
                    unexpected.len(),
                    unexpected
                        .iter()
                        .take(5)
                        .map(|l| format!("{}.dlq: {}", l.topic, l.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        ),
        Check::new(
            "every poison input that reached a topic was dead-lettered",
            missing.is_empty(),
            if missing.is_empty() {
                format!("{} poison input(s) sent", sent.len())
            } else {
                format!(
                    "not dead-lettered: {}",
                    missing
                        .iter()
                        .map(|p| format!("{} on {} ({})", p.what, p.topic, p.note))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_found_in_any_bytes_with_its_uuid() {
        let mark = format!("{MARKER}{}", uuid::Uuid::new_v4());
        let bytes = [b"\x00\x01\x02".as_slice(), mark.as_bytes(), b"\x00 tail"].concat();
        assert_eq!(find_marker(&bytes), Some(mark.clone()));
        assert_eq!(find_marker(b"an ordinary dead letter"), None);
        // Cut off before the end of its uuid: not a marker the harness sent.
        assert_eq!(find_marker(&mark.as_bytes()[..mark.len() - 1]), None);
    }

    fn record(seq: u64, customer: &str, told: Told) -> Record {
        Record {
            seq,
            customer: customer.into(),
            idempotency_key: format!("key-{seq}"),
            total_cents: seq as i64 + 1,
            attempts: 1,
            due: 0.0,
            answered: 0.0,
            told,
        }
    }

    fn row(id: &str, customer: &str, status: &str, total_cents: i64) -> (String, OrderRow) {
        (
            id.into(),
            OrderRow {
                id: id.into(),
                customer_id: customer.into(),
                status: status.into(),
                total_cents,
                reason: None,
            },
        )
    }

    #[test]
    fn fate_tells_lost_stuck_and_duplicated_orders_apart() {
        let accepted = |id: &str| Told::Accepted {
            order_id: id.into(),
        };
        let records = [
            record(0, "c", accepted("a")),
            record(1, "c", accepted("b")),
            record(2, "c", accepted("x")),
            record(3, "c", accepted("d")),
            record(
                4,
                "c",
                Told::GaveUp {
                    reason: "503".into(),
                },
            ),
        ];
        let rows: HashMap<String, OrderRow> = [
            row("a", "c", "APPROVED", 1),
            row("b", "c", "PENDING", 2),
            row("d", "c", "REJECTED", 4),
            row("d2", "c", "REJECTED", 4),
            row("e", "c", "APPROVED", 5),
        ]
        .into_iter()
        .collect();
        let fate = fate(&records, &rows);
        assert_eq!(
            (fate.accepted, fate.lost, fate.stuck, fate.duplicated),
            (4, 1, 1, 1)
        );
        assert_eq!((fate.gave_up, fate.created_unacknowledged), (1, 1));
        assert_eq!(unsettled(&records, &rows), 2);
    }
}
