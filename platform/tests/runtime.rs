//! The consumer runtime against the real broker: ordering, redelivery, DLQ, shutdown.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use feedline::consumer::{Handler, HandlerError, Outcome};
use feedline::dlq::{self, header as dlqh};
use feedline::{Outgoing, Rejection};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// Records every message it is given.
#[derive(Clone, Default)]
struct Collect {
    seen: Seen,
}

impl Handler for Collect {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        Ok(Outcome::ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_keys_headers_and_order_per_key() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("events", 3).await;
    let keys = ["alice", "bob", "carol", "dave"];
    for i in 0..200 {
        let key = keys[i % keys.len()];
        let seq = i.to_string();
        ctx.produce(
            &topic,
            key,
            format!("{key}:{i}").as_bytes(),
            &[("seq", seq.as_bytes())],
        )
        .await;
    }
    let handler = Collect::default();
    let seen = handler.seen.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler);
    eventually("200 messages", PATIENCE, async || {
        seen.lock().unwrap().len() >= 200
    })
    .await;
    token.cancel();
    task.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200, "each message exactly once");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for m in seen.iter() {
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let (k, i) = text(m)
            .split_once(':')
            .map(|(k, i)| (k.to_owned(), i.parse::<usize>().unwrap()))
            .unwrap();
        assert_eq!(k, key, "key travels with its payload");
        assert_eq!(
            header(m, "seq"),
            Some(i.to_string().as_str()),
            "headers travel too"
        );
        per_key.entry(key).or_default().push(i);
    }
    assert_eq!(per_key.len(), 4);
    for (key, order) in per_key {
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(
            order, sorted,
            "messages of {key} arrive in the order they were sent"
        );
        assert_eq!(order.len(), 50);
    }
    let metrics = ctx.metrics.render();
    assert!(metrics.contains("feedline_consumed_total"));
    assert!(
        metrics.contains(&format!(
            "feedline_event_age_seconds_count{{group=\"{}\"",
            ctx.name("g")
        )),
        "event age observed per topic and group"
    );
}

/// Handles batches atomically, but fails (transiently: its database is away) on any batch
/// holding one payload, counting its attempts.
#[derive(Clone)]
struct FailOn {
    bad: &'static str,
    seen: Seen,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for FailOn {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        if batch.iter().any(|m| text(m) == self.bad) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "cannot handle {}",
                self.bad
            )));
        }
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        Ok(Outcome::ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handler_gets_the_message_again_after_restart_and_skips_nothing() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("orders", 1).await;
    let first = FailOn {
        bad: "m7",
        seen: Seen::default(),
        attempts: Arc::default(),
    };
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), first.clone());
    for i in 0..7 {
        ctx.produce(&topic, "k", format!("m{i}").as_bytes(), &[])
            .await;
    }
    eventually("the first seven", PATIENCE, async || {
        first.seen.lock().unwrap().len() >= 7
    })
    .await;
    for i in 7..20 {
        ctx.produce(&topic, "k", format!("m{i}").as_bytes(), &[])
            .await;
    }
    // A transient failure is retried for as long as it lasts: stopped while it still fails,
    // the consumer stores nothing of the failing batch.
    eventually("m7 retried", PATIENCE, async || {
        first.attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let before: Vec<String> = first.seen.lock().unwrap().iter().map(text).collect();
    assert_eq!(before, (0..7).map(|i| format!("m{i}")).collect::<Vec<_>>());

    // The restarted consumer (fixed handler) resumes exactly at the failed message.
    let second = Collect::default();
    let seen = second.seen.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), second);
    eventually("the rest", PATIENCE, async || {
        seen.lock().unwrap().len() >= 13
    })
    .await;
    token.cancel();
    task.await.unwrap().unwrap();
    let after: Vec<String> = seen.lock().unwrap().iter().map(text).collect();
    assert_eq!(after, (7..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
}

/// Rejects what is not UTF-8 and anything saying "reject".
#[derive(Clone, Default)]
struct Picky {
    accepted: Seen,
}

impl Handler for Picky {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        let mut outcome = Outcome::ok();
        for (i, m) in batch.iter().enumerate() {
            match std::str::from_utf8(m.payload().unwrap_or_default()) {
                Err(e) => outcome.reject(
                    i,
                    Rejection::new("decode", format!("payload is not utf-8: {e}")),
                ),
                Ok(s) if s.contains("reject") => {
                    outcome.reject(i, Rejection::new("validation", "the handler refused it"))
                }
                Ok(_) => self.accepted.lock().unwrap().push(m.clone()),
            }
        }
        Ok(outcome)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dlq_with_reason_and_source() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("payments", 1).await;
    ctx.produce(&topic, "a", b"fine-1", &[]).await;
    ctx.produce(&topic, "b", &[0xff, 0xfe, 0x00, 0x80], &[("trace", b"t-1")])
        .await;
    ctx.produce(&topic, "c", b"please reject me", &[]).await;
    ctx.produce(&topic, "d", b"fine-2", &[]).await;

    let handler = Picky::default();
    let accepted = handler.accepted.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler);
    eventually("the good ones", PATIENCE, async || {
        accepted.lock().unwrap().len() >= 2
    })
    .await;
    let dead = ctx.read_all(&dlq::dlq_topic(&topic), 2).await;
    token.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(
        accepted
            .lock()
            .unwrap()
            .iter()
            .map(text)
            .collect::<Vec<_>>(),
        ["fine-1", "fine-2"]
    );
    assert_eq!(dead.len(), 2, "both poison messages dead-lettered");
    let mut dead = dead;
    dead.sort_by_key(|m| {
        header(m, dlqh::SOURCE_OFFSET)
            .unwrap()
            .parse::<i64>()
            .unwrap()
    });
    let garbage = &dead[0];
    assert_eq!(
        garbage.payload(),
        Some(&[0xff, 0xfe, 0x00, 0x80][..]),
        "original bytes kept"
    );
    assert_eq!(garbage.key(), Some(&b"b"[..]));
    assert_eq!(header(garbage, dlqh::ERROR_KIND), Some("decode"));
    assert!(header(garbage, dlqh::ERROR).unwrap().contains("not utf-8"));
    assert_eq!(header(garbage, dlqh::SOURCE_TOPIC), Some(topic.as_str()));
    assert_eq!(header(garbage, dlqh::SOURCE_PARTITION), Some("0"));
    assert_eq!(header(garbage, dlqh::SOURCE_OFFSET), Some("1"));
    assert!(header(garbage, dlqh::TIME).unwrap().ends_with('Z'));
    assert_eq!(
        header(garbage, "trace"),
        Some("t-1"),
        "original headers kept"
    );
    let rejected = &dead[1];
    assert_eq!(header(rejected, dlqh::ERROR_KIND), Some("validation"));
    assert_eq!(header(rejected, dlqh::SOURCE_OFFSET), Some("2"));
    // The consumer moved on: everything, poison included, is committed.
    assert_eq!(ctx.committed("g", &topic, 1), vec![4]);
    assert!(
        ctx.metrics
            .render()
            .contains("feedline_dead_lettered_total")
    );
}

/// Slow handler: lets a test shut the consumer down while batches are in flight.
#[derive(Clone, Default)]
struct Slow {
    seen: Seen,
    stop_after_first: Arc<AtomicBool>,
}

impl Handler for Slow {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        // The handler's slowness is the subject: shutdown comes while a batch is in it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.seen.lock().unwrap().extend(batch.iter().cloned());
        self.stop_after_first.store(true, Ordering::SeqCst);
        Ok(Outcome::ok())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_every_processed_message() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("shutdown", 2).await;
    for i in 0..500 {
        ctx.produce(
            &topic,
            &format!("k{}", i % 7),
            format!("m{i}").as_bytes(),
            &[],
        )
        .await;
    }
    let handler = Slow::default();
    let seen = handler.seen.clone();
    let started = handler.stop_after_first.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler);
    eventually("a first batch", PATIENCE, async || {
        started.load(Ordering::SeqCst)
    })
    .await;
    // Shut down while the next batch is in the handler: it must finish and be committed.
    token.cancel();
    task.await.unwrap().unwrap();

    let seen = seen.lock().unwrap();
    let mut processed = [0i64; 2];
    for m in seen.iter() {
        let p = m.partition() as usize;
        processed[p] = processed[p].max(m.offset() + 1);
    }
    assert!(seen.len() < 500, "the test stopped the consumer mid-stream");
    let committed = ctx.committed("g", &topic, 2);
    for p in 0..2 {
        let expect = if processed[p] == 0 {
            -1001
        } else {
            processed[p]
        };
        assert_eq!(
            committed[p], expect,
            "partition {p}: committed offset = next unprocessed"
        );
    }
}

/// A second member joins mid-run and the partitions are split (revoked, reassigned):
/// between the two members every message is handled, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_member_takes_over_partitions_without_losing_messages() {
    let ctx = TestCtx::new();
    let topic = ctx.topic("scale", 4).await;
    for i in 0..400 {
        ctx.produce(
            &topic,
            &format!("k{}", i % 13),
            format!("m{i}").as_bytes(),
            &[],
        )
        .await;
    }
    let one = Slow::default();
    let two = Collect {
        seen: one.seen.clone(),
    };
    let seen = one.seen.clone();
    let (t1, h1) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), one);
    eventually("first batches", PATIENCE, async || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let (t2, h2) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), two);
    for i in 400..600 {
        ctx.produce(
            &topic,
            &format!("k{}", i % 13),
            format!("m{i}").as_bytes(),
            &[],
        )
        .await;
    }
    let distinct = || {
        let seen = seen.lock().unwrap();
        seen.iter()
            .map(text)
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    eventually("all 600 messages", PATIENCE, async || distinct() >= 600).await;
    t1.cancel();
    t2.cancel();
    h1.await.unwrap().unwrap();
    h2.await.unwrap().unwrap();
    assert_eq!(distinct(), 600);
}

async fn produce_to(ctx: &TestCtx, topic: &str, partition: i32, payload: &str) {
    let mut msg = Outgoing::new(topic, Some(b"k"), payload.as_bytes());
    msg.partition = Some(partition);
    ctx.producer.send(msg).await.expect("produce");
}

/// The fetch side collects the next batch while the handler works. A rebalance that lands
/// while that batch is being collected must drop its messages of the revoked partitions:
/// their new owner reads them again from the committed offset, so keeping them would handle
/// them twice (or, for a partition that comes back, hand them over twice in one batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_drops_prefetched_messages_of_revoked_partitions() {
    let mut ctx = TestCtx::new();
    // Small batches, and a long wait so the second batch is still being collected when the
    // second member joins.
    ctx.settings.consumer.batch_max = 5;
    ctx.settings.consumer.batch_wait_ms = 8_000;
    let topic = ctx.topic("prefetch", 2).await;
    for i in 0..5 {
        produce_to(&ctx, &topic, i % 2, &format!("a{i}")).await;
    }
    let one = Collect::default();
    let seen_one = one.seen.clone();
    let (t1, h1) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), one);
    eventually("the first full batch", PATIENCE, async || {
        seen_one.lock().unwrap().len() >= 5
    })
    .await;
    eventually("its offsets committed", PATIENCE, async || {
        ctx.committed("g", &topic, 2).iter().sum::<i64>() == 5
    })
    .await;

    // Fewer than batch_max: member one holds them in its next batch, waiting for more.
    for i in 0..4 {
        produce_to(&ctx, &topic, i % 2, &format!("b{i}")).await;
    }
    let prefetched = ctx
        .metrics
        .consumer_prefetched
        .with_label_values(&[&ctx.name("g")]);
    eventually(
        "member one collecting the four in its batch",
        PATIENCE,
        async || prefetched.get() == 4,
    )
    .await;
    let two = Collect::default();
    let seen_two = two.seen.clone();
    let (t2, h2) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), two);

    let all = || {
        let mut all: Vec<String> = seen_one.lock().unwrap().iter().map(text).collect();
        all.extend(seen_two.lock().unwrap().iter().map(text));
        all.sort();
        all
    };
    // Member two getting some of them shows the rebalance landed while member one was still
    // collecting them (had member one handled them first, they would all be committed).
    // Both members hold a batch for up to batch_wait, so wait for both before counting.
    eventually(
        "all nine messages, some by member two",
        PATIENCE,
        async || {
            let mut all = all();
            all.dedup();
            all.len() >= 9 && !seen_two.lock().unwrap().is_empty()
        },
    )
    .await;
    // Everything committed: nothing is redelivered after this, so what the two members
    // handled until they stop is every delivery, duplicates included.
    eventually("all nine offsets committed", PATIENCE, async || {
        ctx.committed("g", &topic, 2).iter().sum::<i64>() == 9
    })
    .await;
    t1.cancel();
    t2.cancel();
    h1.await.unwrap().unwrap();
    h2.await.unwrap().unwrap();

    assert_eq!(
        all(),
        ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3"],
        "every message handled exactly once"
    );
}

/// Records each batch as it starts, then takes its time.
#[derive(Clone, Default)]
struct Sluggish {
    /// Each batch's payloads, recorded as it starts.
    batches: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl Handler for Sluggish {
    async fn handle(&self, batch: &[OwnedMessage]) -> Result<Outcome, HandlerError> {
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(text).collect());
        // The handler's slowness is the subject: the next batch is fetched behind it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        Ok(Outcome::ok())
    }
}

/// At shutdown the batch in the handler finishes and is committed; the batch prefetched
/// behind it is neither handled nor committed, so the next run starts right after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_the_prefetched_batch() {
    let mut ctx = TestCtx::new();
    ctx.settings.consumer.batch_max = 5;
    let topic = ctx.topic("prefetched", 1).await;
    for i in 0..20 {
        produce_to(&ctx, &topic, 0, &format!("m{i}")).await;
    }
    let handler = Sluggish::default();
    let batches = handler.batches.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler);
    eventually("a first batch", PATIENCE, async || {
        !batches.lock().unwrap().is_empty()
    })
    .await;
    let prefetched = ctx
        .metrics
        .consumer_prefetched
        .with_label_values(&[&ctx.name("g")]);
    eventually(
        "the next five fetched behind the first",
        PATIENCE,
        async || prefetched.get() == 5,
    )
    .await;
    token.cancel();
    task.await.unwrap().unwrap();

    let started: Vec<String> = batches.lock().unwrap().concat();
    assert_eq!(
        started,
        ["m0", "m1", "m2", "m3", "m4"],
        "only the batch in flight was handled"
    );
    assert_eq!(ctx.committed("g", &topic, 1), vec![5]);
}

/// Batches form naturally: what arrives while the handler works is handed over as one
/// batch the moment it is free, even with no batch wait at all (a batch that closed early
/// would leave the rest queued behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_arrive_while_the_handler_works_come_as_one_batch() {
    let mut ctx = TestCtx::new();
    ctx.settings.consumer.batch_wait_ms = 0;
    let topic = ctx.topic("natural", 1).await;
    // The first batch takes 800 ms: the ten are produced well within it.
    let handler = Sluggish::default();
    let batches = handler.batches.clone();
    let (token, task) = ctx.spawn_consumer("g", std::slice::from_ref(&topic), handler);
    produce_to(&ctx, &topic, 0, "first").await;
    eventually("the first batch in the handler", PATIENCE, async || {
        !batches.lock().unwrap().is_empty()
    })
    .await;
    for i in 0..10 {
        produce_to(&ctx, &topic, 0, &format!("m{i}")).await;
    }
    eventually("all eleven handled", PATIENCE, async || {
        batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() >= 11
    })
    .await;
    token.cancel();
    task.await.unwrap().unwrap();

    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(
        *batches.lock().unwrap(),
        vec![vec!["first".to_owned()], expected],
        "the ten that came during the first batch form the second"
    );
}
