//! The live feed against the real broker: every change in order, resuming with
//! Last-Event-ID while events keep flowing, snapshots for clients too far behind, and slow
//! clients dropped without slowing anyone else.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn ids(events: &[Sse]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.id.expect("every change has an id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_in_order_and_a_resumed_client_misses_nothing() {
    let env = TestEnv::start().await;
    // A keep-alive each second: how the server notices soon that the resumer has gone.
    let keep_alive = "[order_view]\nfeed_keep_alive_secs = 1";
    let app = env.spawn_app(&env.db("view"), keep_alive).await;
    let customers = [new_id(), new_id(), new_id()];
    const ORDERS: usize = 150;
    let total = customers.len() + ORDERS;

    let mut watcher = app.feed("", None).await;
    let mut resumer = app.feed("", None).await;
    let ada = &customers[0];
    let mut only_ada = app.feed(&format!("?customer_id={ada}"), None).await;
    let ada_order = new_id();
    let mut only_one_order = app.feed(&format!("?order_id={ada_order}"), None).await;
    eventually("four subscribers", PATIENCE, async || {
        app.metric("feedline_order_view_feed_subscribers").await == 4.0
    })
    .await;

    for (i, c) in customers.iter().enumerate() {
        env.send_customer(&registered(c, &format!("customer {i}"), 1_000_000))
            .await;
    }
    // Registered before their orders arrive (else the orders' names change later, which
    // would be more changes than counted here).
    for c in &customers {
        app.until(&format!("/customers/{c}"), |s, _| s == 200).await;
    }
    // Events keep flowing while the resumer disconnects and comes back.
    let producer = {
        let env = std::sync::Arc::new(env);
        let customers = customers.clone();
        let ada_order = ada_order.clone();
        let env2 = env.clone();
        let (http, url) = (app.http.clone(), app.url.clone());
        let task = tokio::spawn(async move {
            for chunk in 0..ORDERS / 10 {
                let events: Vec<_> = (0..10)
                    .map(|i| {
                        let n = chunk * 10 + i;
                        let order = if n == 0 { ada_order.clone() } else { new_id() };
                        created(&customers[n % customers.len()], &order, n as i64 + 1)
                    })
                    .collect();
                env2.send_orders_fast(&events).await;
                // One chunk shown before the next is sent: the changes keep coming while
                // the resumer is away, not all at once before it left.
                let last = format!("{url}/orders/{}", order_id(&events[9]));
                until_ok(&http, &last).await;
            }
        });
        (env, task)
    };

    let mut first_part = Vec::new();
    for _ in 0..20 {
        first_part.push(resumer.next().await);
    }
    let last_seen = first_part.last().unwrap().id.unwrap();
    drop(resumer);
    eventually("the resumer gone", PATIENCE, async || {
        app.metric("feedline_order_view_feed_subscribers").await == 3.0
    })
    .await;
    let mut resumed = app.feed("", Some(last_seen)).await;
    let second_part = resumed.read_until(|e| e.id == Some(total as i64)).await;

    let watched = watcher.read_until(|e| e.id == Some(total as i64)).await;
    let expected: Vec<i64> = (1..=total as i64).collect();
    assert_eq!(ids(&watched), expected, "every change, in order, once");
    let kinds: Vec<&str> = watched.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "customer").count(),
        customers.len()
    );
    assert_eq!(kinds.iter().filter(|k| **k == "order").count(), ORDERS);

    let mut both = first_part.clone();
    both.extend(second_part);
    assert_eq!(
        ids(&both),
        expected,
        "the resumed client got no gap and no duplicate"
    );
    assert_eq!(both, watched, "and the same data");

    let ada_changes = ORDERS / customers.len() + 1;
    let mut ada_events = Vec::new();
    while ada_events.len() < ada_changes {
        ada_events.push(only_ada.next().await);
    }
    assert!(
        ada_events
            .iter()
            .all(|e| e.data["customer_id"] == json!(ada) || e.data["id"] == json!(ada))
    );
    assert!(ids(&ada_events).windows(2).all(|w| w[0] < w[1]));
    assert!(
        only_ada
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing of other customers"
    );
    let one = only_one_order.next().await;
    assert_eq!(one.event, "order");
    assert_eq!(one.data["id"], json!(ada_order));
    assert_eq!(one.data["customer_name"], "customer 0");

    let (env, task) = producer;
    task.await.unwrap();
    app.stop().await;
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_far_behind_gets_a_snapshot_then_live_changes() {
    let env = TestEnv::start().await;
    let app = env
        .spawn_app(
            &env.db("view"),
            "[order_view]\nchange_log_retain = 10\nfeed_keep_alive_secs = 1",
        )
        .await;
    let (ada, bob) = (new_id(), new_id());
    env.send_customer(&registered(&ada, "Ada", 10_000)).await;
    env.send_customer(&registered(&bob, "Bob", 10_000)).await;
    for c in [&ada, &bob] {
        app.until(&format!("/customers/{c}"), |s, _| s == 200).await;
    }
    let orders: Vec<_> = (0..30).map(|n| created(&ada, new_id(), n + 1)).collect();
    env.send_orders_fast(&orders).await;
    let bob_order = new_id();
    env.send_order(&created(&bob, &bob_order, 7)).await;
    app.until(&format!("/customers/{ada}/orders?limit=100"), |_, b| {
        b["orders"].as_array().is_some_and(|o| o.len() == 30)
    })
    .await;
    app.until(&format!("/orders/{bob_order}"), |s, _| s == 200)
        .await;
    let newest = 2 + 30 + 1;

    // Change 1 is long trimmed (only about the last 10 are kept).
    let mut far = app.feed("", Some(1)).await;
    let snapshot = far.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id, Some(newest));
    assert_eq!(snapshot.data["seq"], newest);
    assert_eq!(snapshot.data["customers"].as_array().unwrap().len(), 2);
    assert_eq!(snapshot.data["orders"].as_array().unwrap().len(), 31);

    let mut far_bob = app
        .feed(
            &format!("?last_event_id={}-2&customer_id={bob}", app.generation),
            None,
        )
        .await;
    let snapshot = far_bob.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.data["customers"][0]["name"], "Bob");
    assert_eq!(snapshot.data["customers"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot.data["orders"][0]["id"], json!(bob_order));
    assert_eq!(snapshot.data["orders"].as_array().unwrap().len(), 1);

    // An id this log never sent, of another generation (a rebuilt file, another replica),
    // from before ids had generations, or garbled: a snapshot too, never an error.
    let other = format!("{}-{}", "0".repeat(32), newest - 1);
    let never_sent = format!("{}-{}", app.generation, newest + 1000);
    for id in [never_sent.as_str(), other.as_str(), "5", "yesterday"] {
        let mut stranger = app.feed_from("", Some(id)).await;
        let snapshot = stranger.next().await;
        assert_eq!(snapshot.event, "snapshot", "{id}");
        assert_eq!(snapshot.id, Some(newest), "{id}");
        assert_eq!(
            snapshot.generation.as_deref(),
            Some(app.generation.as_str())
        );
        assert_eq!(snapshot.data["generation"], json!(app.generation));
    }
    let mut by_parameter = app.feed("?last_event_id=yesterday", None).await;
    assert_eq!(by_parameter.next().await.event, "snapshot");

    // Within the retained log: the backlog, no snapshot.
    let mut near = app.feed("", Some(newest - 5)).await;
    let backlog: Vec<Sse> = {
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(near.next().await);
        }
        out
    };
    assert_eq!(ids(&backlog), ((newest - 4)..=newest).collect::<Vec<_>>());
    assert!(backlog.iter().all(|e| e.event != "snapshot"));

    // Then live changes, to all of them.
    let bob_next = new_id();
    env.send_order(&created(&bob, &bob_next, 8)).await;
    for client in [&mut far, &mut far_bob, &mut near] {
        let live = client.next().await;
        assert_eq!(live.id, Some(newest + 1));
        assert_eq!(live.data["id"], json!(bob_next));
    }
    assert!(
        app.metric("feedline_order_view_feed_snapshots_total").await >= 7.0,
        "counted"
    );

    // Idle feeds get keep-alive comments.
    assert!(far.next_within(Duration::from_millis(1500)).await.is_none());
    assert!(far.comments >= 1, "a keep-alive comment arrived");
    app.stop().await;
}

/// An HTTP/1.1 feed client on a raw socket with a tiny receive buffer, which reads nothing
/// until told to.
struct StuckClient {
    reader: BufReader<tokio::net::TcpStream>,
}

impl StuckClient {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(b"GET /feed HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .unwrap();
        StuckClient {
            reader: BufReader::new(stream),
        }
    }

    /// Reads the chunked body until `marker` shows up in it; returns the body so far.
    async fn read_until(&mut self, marker: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
        }
        let mut body = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            assert!(size > 0, "stream ended before {marker:?}");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.unwrap();
            body.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
            if let Some(at) = body.find(marker)
                && body[at..].contains("\n\n")
            {
                return body;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_with_lagged_while_another_keeps_receiving() {
    let env = TestEnv::start().await;
    let app = env
        .spawn_app(
            &env.db("view"),
            "[order_view]\nfeed_client_buffer = 1024\nfeed_broadcast_capacity = 8192",
        )
        .await;
    let ada = new_id();
    // Large changes fill the slow client's socket quickly.
    let long_name = "A".repeat(2000);
    const ORDERS: usize = 2500;
    let total = ORDERS as i64 + 1;

    let mut slow = StuckClient::connect(app.addr).await;
    let mut fast = app.feed("", None).await;
    eventually("two subscribers", PATIENCE, async || {
        app.metric("feedline_order_view_feed_subscribers").await == 2.0
    })
    .await;

    env.send_customer(&registered(&ada, &long_name, 1_000_000))
        .await;
    app.until(&format!("/customers/{ada}"), |s, _| s == 200)
        .await;
    let orders: Vec<_> = (0..ORDERS)
        .map(|n| created(&ada, new_id(), n as i64 + 1))
        .collect();
    let send = env.send_orders_fast(&orders);
    let read = fast.read_until(|e| e.id == Some(total));
    let (_, received) = tokio::join!(send, read);
    assert_eq!(
        ids(&received),
        (1..=total).collect::<Vec<_>>(),
        "the fast client got everything"
    );
    eventually("the slow client dropped", PATIENCE, async || {
        app.metric("feedline_order_view_feed_lagged_total").await >= 1.0
    })
    .await;

    // The slow client, reading at last, gets what was buffered and then `lagged` with the
    // id to resume from: no gap before it.
    let body = tokio::time::timeout(PATIENCE, slow.read_until("event: lagged"))
        .await
        .expect("lagged in time");
    let events = parse_events(&body[..body.rfind("\n\n").unwrap() + 2]);
    let lagged = events.last().unwrap();
    assert_eq!(lagged.event, "lagged");
    let resume = lagged.id.unwrap();
    assert_eq!(
        lagged.data["last_event_id"],
        json!(lagged.raw_id().unwrap())
    );
    let got = ids(&events[..events.len() - 1]);
    assert_eq!(got, (1..=resume).collect::<Vec<_>>());
    assert!(resume < total, "it really fell behind");

    // Resuming from there gets the rest.
    let mut again = app.feed("", Some(resume)).await;
    let rest = again.read_until(|e| e.id == Some(total)).await;
    assert_eq!(ids(&rest), ((resume + 1)..=total).collect::<Vec<_>>());
    app.stop().await;
}
