//! The runtime acts on the class of a handler's failure, against the real broker: a
//! permanent one costs only the message at fault (dead-lettered), an unknown one is retried
//! then narrowed down to its message, a transient one is waited out with the member still in
//! its group and the consumer reported not ready meanwhile.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use feedline::consumer::{Handler, HandlerError, Outcome};
use feedline::dlq::{self, header as dlqh};
use rdkafka::message::OwnedMessage;

/// Commits a batch as one transaction would: all of it, or nothing when any message in it is
/// `bad`; then it fails with `error`'s class.
#[derive(Clone)]
struct AllOrNothing {
    bad: &'static str,
    class: fn(anyhow::Error) -> HandlerError,
    committed: Seen,
    /// Every batch it was given: its size, and whether it held the bad message.
    batches: Arc<Mutex<Vec<(usize, bool)>>>,
}

impl AllOrNothing {
    fn new(bad: &'static str, class: fn(anyhow::Error) -> HandlerError) -> Self {
        AllOrNothing {
            bad,
            class,
            committed: Seen::default(),
            batches: Arc::default(),
        }
    }

    fn committed(&self) -> Vec<String> {
        self.committed.lock().unwrap().iter().map(text).collect()
    }
}

impl Handler for AllOrNothing {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let bad = batch.iter().any(|m| text(m) == self.bad);
        self.batches.lock().unwrap().push((batch.len(), bad));
        if bad {
            // Like a set-based INSERT refused by one row: the error names no message.
            return Err((self.class)(anyhow::anyhow!(
                "value too long for type character varying(8)"
            )));
        }
        self.committed.lock().unwrap().extend(batch.iter().cloned());
        Ok(Outcome::ok())
    }
}

async fn produce_all(ctx: &TestCtx, topic: &str, payloads: &[String]) {
    for p in payloads {
        ctx.produce(topic, "k", p.as_bytes(), &[]).await;
    }
}

fn payloads(n: usize, bad_at: usize, bad: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == bad_at {
                bad.to_owned()
            } else {
                format!("m{i}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_dead_letters_only_the_message_at_fault() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("commands", 1).await;
    let sent = payloads(40, 23, "poison");
    // All in the topic before the consumer starts: they arrive as one batch.
    produce_all(&ctx, &topic, &sent).await;
    let handler = AllOrNothing::new("poison", HandlerError::Permanent);
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler.clone());
    eventually("every good message committed", PATIENCE, async || {
        handler.committed.lock().unwrap().len() >= 39
    })
    .await;
    let letters = ctx.read_all(&dlq::dlq_topic(&topic), 1).await;
    token.cancel();
    task.await.unwrap().unwrap();

    let expected: Vec<String> = sent.iter().filter(|p| *p != "poison").cloned().collect();
    assert_eq!(
        handler.committed(),
        expected,
        "the rest, once each, in order"
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(text(&letters[0]), "poison");
    assert_eq!(header(&letters[0], dlqh::ERROR_KIND), Some("permanent"));
    assert!(
        header(&letters[0], dlqh::ERROR)
            .unwrap()
            .contains("value too long"),
        "the reason travels with the letter"
    );
    assert_eq!(header(&letters[0], dlqh::SOURCE_OFFSET), Some("23"));
    // Bisection, not one transaction per message: a 40-message batch takes about
    // 2·log2(40) attempts to corner one message.
    let attempts = handler.batches.lock().unwrap().len();
    assert!(
        attempts <= 16,
        "{attempts} attempts to find one poison message"
    );
    assert_eq!(
        ctx.committed("g", &topic, 1),
        vec![40],
        "offsets past the poison"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_failure_is_retried_then_narrowed_to_its_message() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("commands", 1).await;
    let sent = payloads(12, 5, "odd");
    produce_all(&ctx, &topic, &sent).await;
    let mut settings = ctx.settings.consumer.clone();
    settings.unknown_error_attempts = 3;
    settings.retry_backoff_ms = 10;
    let handler = AllOrNothing::new("odd", HandlerError::Unknown);
    let (token, task, _) = ctx.spawn_watched(
        "g",
        std::slice::from_ref(&topic),
        handler.clone(),
        &settings,
    );
    let letters = ctx.read_all(&dlq::dlq_topic(&topic), 1).await;
    eventually("every other message committed", PATIENCE, async || {
        handler.committed.lock().unwrap().len() >= 11
    })
    .await;
    token.cancel();
    task.await.unwrap().unwrap();

    let expected: Vec<String> = sent.iter().filter(|p| *p != "odd").cloned().collect();
    assert_eq!(handler.committed(), expected);
    assert_eq!(text(&letters[0]), "odd");
    assert_eq!(header(&letters[0], dlqh::ERROR_KIND), Some("unknown"));
    let with_bad: Vec<usize> = handler
        .batches
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(len, bad)| bad.then_some(*len))
        .collect();
    // The batch unknown_error_attempts times, then the message alone a few times.
    assert_eq!(with_bad.len(), 6, "{with_bad:?}");
    assert!(with_bad[0] > 1 && with_bad[..3].iter().all(|n| *n == with_bad[0]));
    assert_eq!(with_bad[3..], [1, 1, 1]);
}

/// Fails transiently while `down` is set, as a handler does while its database is away.
#[derive(Clone, Default)]
struct Dependent {
    down: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    committed: Seen,
}

impl Handler for Dependent {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "connection refused"
            )));
        }
        self.committed.lock().unwrap().extend(batch.iter().cloned());
        Ok(Outcome::ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_waited_out_in_the_group_and_reported_not_ready() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("commands", 2).await;
    let mut settings = ctx.settings.consumer.clone();
    // Shorter than the outage below: a member that stopped polling would be evicted.
    settings.max_poll_interval_ms = 7000;
    // Less than what is sent: the next batch fills up while the first is retried, and the
    // fetch thread pauses the partitions to keep polling.
    settings.batch_max = 10;
    settings.retry_backoff_ms = 50;
    settings.retry_backoff_max_ms = 500;
    let handler = Dependent::default();
    let (token, task, progress) = ctx.spawn_watched(
        "g",
        std::slice::from_ref(&topic),
        handler.clone(),
        &settings,
    );
    eventually("ready", PATIENCE, async || progress.ready().is_ok()).await;

    handler.down.store(true, Ordering::SeqCst);
    let sent = payloads(30, usize::MAX, "");
    produce_all(&ctx, &topic, &sent).await;
    eventually(
        "not ready while the dependency is away",
        PATIENCE,
        async || {
            progress
                .ready()
                .is_err_and(|e| e.contains("waiting for a dependency"))
        },
    )
    .await;
    // Outlast max.poll.interval.ms with the batch still failing: the member must stay.
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(9);
    while tokio::time::Instant::now() < outage_ends {
        let ready = progress.ready();
        assert!(
            ready
                .as_ref()
                .is_err_and(|e| e.contains("waiting for a dependency")),
            "the member left its group or the outage went unreported: {ready:?}"
        );
        assert!(progress.live().is_ok(), "retrying is progress");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(handler.committed.lock().unwrap().is_empty());
    assert!(handler.attempts.load(Ordering::SeqCst) > 5);

    handler.down.store(false, Ordering::SeqCst);
    eventually(
        "everything once the dependency is back",
        PATIENCE,
        async || handler.committed.lock().unwrap().len() >= 30,
    )
    .await;
    eventually("ready again", PATIENCE, async || progress.ready().is_ok()).await;
    token.cancel();
    task.await.unwrap().unwrap();
    let mut got = handler.committed();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want, "each message once");
}

impl Dependent {
    fn committed(&self) -> Vec<String> {
        self.committed.lock().unwrap().iter().map(text).collect()
    }
}

/// Never finishes a batch holding `stuck`: a hung await, not a failure.
#[derive(Clone)]
struct Hangs {
    stuck: &'static str,
}

impl Handler for Hangs {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        if batch.iter().any(|m| text(m) == self.stuck) {
            std::future::pending::<()>().await;
        }
        Ok(Outcome::ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_hangs_is_not_live() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("commands", 1).await;
    let mut settings = ctx.settings.consumer.clone();
    settings.stall_timeout_ms = 1500;
    let (token, task, progress) = ctx.spawn_watched(
        "g",
        std::slice::from_ref(&topic),
        Hangs { stuck: "stuck" },
        &settings,
    );
    ctx.produce(&topic, "k", b"fine", &[]).await;
    eventually("ready", PATIENCE, async || progress.ready().is_ok()).await;
    assert!(progress.live().is_ok());
    ctx.produce(&topic, "k", b"stuck", &[]).await;
    eventually(
        "not live once the batch outlasts the stall timeout",
        PATIENCE,
        async || progress.live().is_err_and(|e| e.contains("in the handler")),
    )
    .await;
    token.cancel();
    // The drain timeout abandons the hung batch; the consumer still stops cleanly.
    task.await.unwrap().unwrap();
}
