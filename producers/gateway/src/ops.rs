//! `GET /ops`: what an operator looks at beside the fleet: the dead letters waiting in each
//! DLQ topic (high minus low watermark, summed over its partitions) and how fresh
//! order-view's read model is (p50 and p99 of `feedline_order_view_freshness_seconds`,
//! estimated from its histogram merged over the replicas, as Prometheus'
//! `histogram_quantile` would). Admins only: it names topics.
//!
//! The answer is cached for [`CACHE_FOR`] and computed by one request at a time, so a page
//! that polls (or many open pages) costs the broker one round of watermark queries per
//! interval, not one per request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use feedline::config::KafkaSettings;
use feedline::dlq::DLQ_SUFFIX;
use feedline::metrics::text::{histogram, merge, quantile};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{Admin, Authorized};

/// How long one answer is served again.
pub const CACHE_FOR: Duration = Duration::from_secs(2);

/// The histogram order-view exports: commit time of a change minus its event's time.
pub const FRESHNESS: &str = "feedline_order_view_freshness_seconds";

/// Per broker call and per replica scrape: an operations page must answer even while a
/// broker or a replica does not.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the dead letters could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot create a kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot read the topics' metadata: {0}")]
    Metadata(#[source] KafkaError),
    #[error("cannot read the watermarks of {topic}/{partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("the counting task failed: {0}")]
    Task(String),
}

/// The cache and the clients behind `GET /ops`.
pub struct Ops {
    kafka: KafkaSettings,
    http: reqwest::Client,
    /// Created on first use and kept: a client per request would reconnect every time.
    client: std::sync::Mutex<Option<Arc<BaseConsumer>>>,
    /// The last answer; the lock is held while a new one is computed (one at a time).
    last: tokio::sync::Mutex<Option<(Instant, Value)>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("topic_prefix", &self.kafka.topic_prefix)
            .finish_non_exhaustive()
    }
}

impl Ops {
    pub fn new(kafka: KafkaSettings) -> Self {
        Ops {
            kafka,
            http: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .unwrap_or_default(),
            client: std::sync::Mutex::new(None),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached answer if it is fresh enough, else a new one from `replicas`.
    async fn report(&self, replicas: Vec<String>) -> Value {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < CACHE_FOR
        {
            return answer.clone();
        }
        let (dead_letters, freshness) =
            tokio::join!(self.dead_letters(), freshness(&self.http, &replicas));
        let (dead_letters, dlq_error) = match dead_letters {
            Ok(topics) => (Some(topics), None),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the dead letters");
                (None, Some(e.to_string()))
            }
        };
        let answer = json!({
            "dead_letters": dead_letters,
            "dead_letters_error": dlq_error,
            "freshness": freshness,
            "generated_at_ms": SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "cache_ms": CACHE_FOR.as_millis() as u64,
        });
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    fn client(&self) -> Result<Arc<BaseConsumer>, OpsError> {
        let mut client = self.client.lock().expect("ops client lock");
        if let Some(client) = &*client {
            return Ok(client.clone());
        }
        let mut config = self.kafka.client_config();
        // Its statistics would only add noise to the platform's.
        config.remove("statistics.interval.ms");
        let created: Arc<BaseConsumer> = Arc::new(config.create().map_err(OpsError::Client)?);
        *client = Some(created.clone());
        Ok(created)
    }

    /// Every DLQ topic under the topic prefix with the messages it holds.
    async fn dead_letters(&self) -> Result<Vec<DeadLetters>, OpsError> {
        let client = self.client()?;
        let prefix = self.kafka.topic_prefix.clone();
        // librdkafka's metadata and watermark calls block.
        tokio::task::spawn_blocking(move || count_dead_letters(&client, &prefix))
            .await
            .map_err(|e| OpsError::Task(e.to_string()))?
    }
}

/// One DLQ topic and the messages in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetters {
    pub topic: String,
    pub messages: i64,
}

fn count_dead_letters(client: &BaseConsumer, prefix: &str) -> Result<Vec<DeadLetters>, OpsError> {
    let metadata = client
        .fetch_metadata(None, CALL_TIMEOUT)
        .map_err(OpsError::Metadata)?;
    let mut counts = Vec::new();
    for topic in metadata.topics() {
        let name = topic.name();
        if !(name.starts_with(prefix) && name.ends_with(DLQ_SUFFIX)) {
            continue;
        }
        let mut messages = 0;
        for partition in topic.partitions() {
            let (low, high) = client
                .fetch_watermarks(name, partition.id(), CALL_TIMEOUT)
                .map_err(|source| OpsError::Watermarks {
                    topic: name.to_owned(),
                    partition: partition.id(),
                    source,
                })?;
            messages += (high - low).max(0);
        }
        counts.push(DeadLetters {
            topic: name.to_owned(),
            messages,
        });
    }
    counts.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(counts)
}

/// p50 and p99 of the freshness histogram over every replica that answered; `null`
/// quantiles when none exports it (or it has no observations yet).
async fn freshness(http: &reqwest::Client, replicas: &[String]) -> Value {
    let scrapes = futures::future::join_all(replicas.iter().map(|url| async move {
        let answer = http.get(format!("{url}/metrics")).send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        answer.text().await.ok()
    }))
    .await;
    let mut merged = Vec::new();
    let mut scraped = 0;
    for text in scrapes.iter().flatten() {
        scraped += 1;
        merge(&mut merged, &histogram(text, FRESHNESS));
    }
    let observations = merged
        .iter()
        .find(|(le, _)| *le == f64::INFINITY)
        .map(|(_, count)| *count);
    json!({
        "p50_seconds": quantile(0.5, &merged),
        "p99_seconds": quantile(0.99, &merged),
        "observations": observations,
        "replicas": replicas.len(),
        "replicas_scraped": scraped,
    })
}

pub async fn ops(State(app): State<Arc<AppState>>, _admin: Authorized<Admin>) -> impl IntoResponse {
    let replicas = app
        .order_view
        .upstream()
        .replicas()
        .into_iter()
        .map(|r| r.url)
        .collect();
    let body = app.ops.report(replicas).await;
    ([(header::CACHE_CONTROL, "no-store")], Json(body))
}
