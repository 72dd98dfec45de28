//! Feed ids across read models: two replicas (each its own SQLite file, consuming the same
//! topics) and a rebuilt file number their changes each in their own way, so an id of one
//! must never resume on another. It gets a snapshot, then the live changes: no gap, no
//! duplicate.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Reads `n` events.
async fn take(client: &mut SseClient, n: usize) -> Vec<Sse> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(client.next().await);
    }
    out
}

/// Waits until `app` lists `n` orders of `customer`.
async fn until_orders(app: &TestApp, customer: &str, n: usize) {
    app.until(
        &format!("/customers/{customer}/orders?limit=500"),
        |_, b| b["orders"].as_array().is_some_and(|o| o.len() == n),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_replica_gets_a_snapshot_then_every_change_once_in_order() {
    let env = Arc::new(TestEnv::start().await);
    let a = env.spawn_app(&env.db("a"), "").await;
    let b = env.spawn_app(&env.db("b"), "").await;
    assert_ne!(a.generation, b.generation, "each file draws its own");
    let ada = new_id();
    env.send_customer(&registered(&ada, "Ada", 1_000_000)).await;
    for app in [&a, &b] {
        app.until(&format!("/customers/{ada}"), |s, _| s == 200)
            .await;
    }

    // A client of replica A follows the first orders.
    let filter = format!("?customer_id={ada}");
    let mut on_a = a.feed(&filter, None).await;
    eventually("a subscriber on A", PATIENCE, async || {
        a.metric("feedline_order_view_feed_subscribers").await == 1.0
    })
    .await;
    const FIRST: usize = 5;
    let first: Vec<_> = (0..FIRST)
        .map(|n| created(&ada, new_id(), n as i64 + 1))
        .collect();
    env.send_orders_fast(&first).await;
    let seen_on_a = take(&mut on_a, FIRST).await;
    assert!(
        seen_on_a
            .iter()
            .all(|e| e.generation.as_deref() == Some(a.generation.as_str()))
    );
    let last_on_a = seen_on_a.last().unwrap().raw_id().unwrap();
    drop(on_a);
    // B has numbered at least as many changes: A's last number is one of B's too.
    until_orders(&b, &ada, FIRST).await;

    // Orders keep coming while the client moves to B, and after.
    const MORE: usize = 60;
    let producer = {
        let (env, ada) = (env.clone(), ada.clone());
        let (http, url) = (b.http.clone(), b.url.clone());
        tokio::spawn(async move {
            for chunk in 0..MORE / 10 {
                let events: Vec<_> = (0..10)
                    .map(|i| created(&ada, new_id(), (FIRST + chunk * 10 + i) as i64 + 1))
                    .collect();
                env.send_orders_fast(&events).await;
                // One chunk shown on B before the next is sent: the orders keep coming
                // while the client moves, not all at once before it did.
                let last = format!("{url}/orders/{}", order_id(&events[9]));
                until_ok(&http, &last).await;
            }
        })
    };
    let mut on_b = b.feed_from(&filter, Some(&last_on_a)).await;
    let snapshot = on_b.next().await;
    assert_eq!(snapshot.event, "snapshot", "A's id means nothing on B");
    assert_eq!(snapshot.generation.as_deref(), Some(b.generation.as_str()));
    let snapshot_seq = snapshot.id.unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for order in snapshot.data["orders"].as_array().unwrap() {
        *seen
            .entry(order["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(seen.len() >= FIRST, "the snapshot has what A had shown");
    assert_eq!(snapshot.data["customers"][0]["name"], "Ada");

    let live = take(&mut on_b, FIRST + MORE - seen.len()).await;
    producer.await.unwrap();
    for change in &live {
        assert_eq!(change.event, "order");
        assert_eq!(change.generation.as_deref(), Some(b.generation.as_str()));
        *seen
            .entry(change.data["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let seqs: Vec<i64> = live.iter().map(|e| e.id.unwrap()).collect();
    let expected: Vec<i64> = (snapshot_seq + 1..).take(live.len()).collect();
    assert_eq!(
        seqs, expected,
        "B's changes after the snapshot, in order, none missing"
    );
    assert_eq!(
        seen.len(),
        FIRST + MORE,
        "every order, in the snapshot or live"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "none twice: {:?}",
        seen.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(
        on_b.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );

    // On its own replica an id still resumes: the changes after it, no snapshot.
    let own = live[live.len() - 3].raw_id().unwrap();
    let mut resumed = b.feed_from(&filter, Some(&own)).await;
    let rest = take(&mut resumed, 2).await;
    assert_eq!(rest[..], live[live.len() - 2..]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_read_model_answers_an_old_id_with_a_snapshot() {
    let env = TestEnv::start().await;
    let file = env.db("view");
    let app = env.spawn_app(&file, "").await;
    let old_generation = app.generation.clone();
    let ada = new_id();
    let mut feed = app.feed("", None).await;
    eventually("a subscriber", PATIENCE, async || {
        app.metric("feedline_order_view_feed_subscribers").await == 1.0
    })
    .await;
    env.send_customer(&registered(&ada, "Ada", 1_000_000)).await;
    // Registered before the orders arrive (else their names change later: more changes).
    app.until(&format!("/customers/{ada}"), |s, _| s == 200)
        .await;
    let orders: Vec<_> = (0..3).map(|n| created(&ada, new_id(), n + 1)).collect();
    for order in &orders {
        env.send_order(order).await;
    }
    let seen = take(&mut feed, 4).await;
    let old_id = seen.last().unwrap().raw_id().unwrap();
    drop(feed);
    app.stop().await;

    // A restart of the same file keeps the generation: the id still resumes.
    let app = env.spawn_app(&file, "").await;
    assert_eq!(app.generation, old_generation);
    let mut resumed = app.feed_from("", Some(&old_id)).await;
    assert!(
        resumed
            .next_within(Duration::from_millis(500))
            .await
            .is_none(),
        "caught up: nothing to send, and no snapshot"
    );
    app.stop().await;

    // The file is rebuilt from the topics: the same changes, numbered alike, in a new
    // generation.
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", file.display());
        if std::path::Path::new(&path).exists() {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let rebuilt = env.spawn_app(&file, "").await;
    assert_ne!(rebuilt.generation, old_generation);
    until_orders(&rebuilt, &ada, 3).await;

    let mut client = rebuilt.feed_from("", Some(&old_id)).await;
    let snapshot = client.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(
        snapshot.generation.as_deref(),
        Some(rebuilt.generation.as_str())
    );
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let mut expected: Vec<String> = orders
        .iter()
        .map(|e| match &e.payload {
            feedline_schemas::types::OrderEventPayload::OrderCreated(p) => p.order_id.clone(),
            _ => unreachable!(),
        })
        .collect();
    expected.sort();
    assert_eq!(ids(&snapshot.data["orders"]), expected);

    // Then live changes, of the new generation.
    let next = new_id();
    env.send_order(&created(&ada, &next, 9)).await;
    let live = client.next().await;
    assert_eq!(live.data["id"], next.as_str());
    assert_eq!(live.id, Some(snapshot.id.unwrap() + 1));
    assert_eq!(live.generation, snapshot.generation);
    rebuilt.stop().await;
}
