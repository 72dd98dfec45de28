//! The client side: an open-loop stream of orders through the gateway, each with an
//! `Idempotency-Key` that its retries repeat, as a real client retries a command whose answer
//! it never got. What each order's client was finally told is recorded; the checks compare
//! that with the databases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{RwLock, Semaphore};
use tokio_util::sync::CancellationToken;

/// One request's time limit: longer than the gateway's admission hold (2 s), so a held
/// command is not retried while it may still be accepted.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Orders in flight at once; beyond that the open loop records the order as not sent rather
/// than queueing without bound.
const MAX_IN_FLIGHT: usize = 4_000;

/// The gateway, and a bearer token that is fetched again when it stops being accepted.
#[derive(Debug)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
    bearer: RwLock<String>,
}

impl Client {
    pub async fn new(base: String, http: reqwest::Client) -> anyhow::Result<Client> {
        let client = Client {
            base,
            http,
            bearer: RwLock::new(String::new()),
        };
        client.refresh().await?;
        Ok(client)
    }

    /// A new token for the demo client.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let answer: Value = self
            .http
            .post(format!("{}/auth/token", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(&json!({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}))
            .send()
            .await
            .context("failed to ask the gateway for a token")?
            .json()
            .await?;
        *self.bearer.write().await = answer["access_token"]
            .as_str()
            .context("no access token")?
            .to_owned();
        Ok(())
    }

    pub async fn bearer(&self) -> String {
        self.bearer.read().await.clone()
    }

    /// Registers `n` customers (waiting for each to exist); every tenth gets no credit, so
    /// its orders are rejected and the saga's other branch runs too.
    pub async fn customers(&self, n: usize) -> anyhow::Result<Vec<Customer>> {
        let ids = futures::stream::iter(0..n)
            .map(|i| async move {
                let limit = if i % 10 == 9 { "0.00" } else { "1000000000.00" };
                let response = self
                    .http
                    .post(format!("{}/customers?wait=20s", self.base))
                    .bearer_auth(self.bearer().await)
                    .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({"name": format!("chaos customer {i}"), "credit_limit": limit}))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "customer registration answered {}",
                    response.status()
                );
                let body: Value = response.json().await?;
                Ok(Customer {
                    id: body["customer_id"]
                        .as_str()
                        .context("no customer_id")?
                        .to_owned(),
                })
            })
            .buffer_unordered(8)
            .collect::<Vec<anyhow::Result<Customer>>>()
            .await;
        ids.into_iter().collect()
    }
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
}

/// What the client of one order was finally told.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Told {
    /// 202 with this order id.
    Accepted { order_id: String },
    /// Not accepted; the client gave up (a 4xx, or retries exhausted).
    GaveUp { reason: String },
    /// The open loop had too many orders in flight to send this one.
    NotSent,
}

/// One order as the client saw it. `total_cents` is unique per order (its sequence number
/// plus one), so the checks can find every row an order produced, whatever ids a retry got.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub seq: u64,
    pub customer: String,
    pub idempotency_key: String,
    pub total_cents: i64,
    pub attempts: u32,
    /// Seconds since the load started: when it was due, and when the client got its answer.
    pub due: f64,
    pub answered: f64,
    pub told: Told,
}

/// Counters shared with the sampler: what the clients have been told so far.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub retries: AtomicU64,
    pub gave_up: AtomicU64,
    pub not_sent: AtomicU64,
}

/// Offers `rate` orders per second over `customers` until `stop`, then waits for the
/// answers still outstanding (their retries included).
pub async fn run(
    client: Arc<Client>,
    customers: Arc<Vec<Customer>>,
    rate: f64,
    give_up: Duration,
    started: Instant,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Vec<Record> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut seq: u64 = 0;
    loop {
        // Open loop: order n is due at n × period, whatever the answers before it took.
        let due = started + period.mul_f64(seq as f64);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let customer = customers[seq as usize % customers.len()].id.clone();
        let record = Record {
            seq,
            customer,
            idempotency_key: uuid::Uuid::new_v4().to_string(),
            total_cents: seq as i64 + 1,
            attempts: 0,
            due: due.duration_since(started).as_secs_f64(),
            answered: 0.0,
            told: Told::NotSent,
        };
        seq += 1;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.not_sent.fetch_add(1, Ordering::Relaxed);
            records.lock().expect("poisoned").push(record);
            continue;
        };
        let (client, records, counters) = (client.clone(), records.clone(), counters.clone());
        tasks.spawn(async move {
            let record = place(&client, record, give_up, started, &counters).await;
            records.lock().expect("poisoned").push(record);
            drop(permit);
        });
        // Reap finished tasks as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut records = std::mem::take(&mut *records.lock().expect("poisoned"));
    records.sort_by_key(|r| r.seq);
    records
}

/// Places one order, retrying timeouts, connection failures and 5xx with the same
/// Idempotency-Key, until it is accepted or `give_up` has passed.
async fn place(
    client: &Client,
    mut record: Record,
    give_up: Duration,
    started: Instant,
    counters: &Counters,
) -> Record {
    let first = Instant::now();
    let total = format!(
        "{}.{:02}",
        record.total_cents / 100,
        record.total_cents % 100
    );
    let mut backoff = Duration::from_millis(100);
    let told = loop {
        record.attempts += 1;
        if record.attempts > 1 {
            counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let answer = client
            .http
            .post(format!("{}/orders", client.base))
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(client.bearer().await)
            .header("Idempotency-Key", &record.idempotency_key)
            .json(&json!({"customer_id": record.customer, "total": total}))
            .send()
            .await;
        let retry_because = match answer {
            Ok(response) if response.status() == 202 => {
                match response.json::<Value>().await {
                    Ok(body) => match body["order_id"].as_str() {
                        Some(id) => {
                            break Told::Accepted {
                                order_id: id.to_owned(),
                            };
                        }
                        None => {
                            break Told::GaveUp {
                                reason: format!("202 without an order_id: {body}"),
                            };
                        }
                    },
                    // The answer was cut off: the client does not know; retry.
                    Err(e) => format!("202 with an unreadable body: {e}"),
                }
            }
            Ok(response) if response.status() == 401 => {
                // A restarted gateway may not take the old token; get a new one.
                let _ = client.refresh().await;
                "401".to_owned()
            }
            Ok(response) if response.status().is_server_error() || response.status() == 429 => {
                format!("{}", response.status())
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                break Told::GaveUp {
                    reason: format!("{status}: {body}"),
                };
            }
            Err(e) => format!("{e}"),
        };
        if first.elapsed() > give_up {
            break Told::GaveUp {
                reason: format!(
                    "still failing after {} attempts: {retry_because}",
                    record.attempts
                ),
            };
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    match told {
        Told::Accepted { .. } => counters.accepted.fetch_add(1, Ordering::Relaxed),
        _ => counters.gave_up.fetch_add(1, Ordering::Relaxed),
    };
    record.answered = started.elapsed().as_secs_f64();
    record.told = told;
    record
}
