//! The SQLite file across restarts: a kept file keeps its state and its change numbers and
//! resumes where it stopped; a new file rebuilds the whole read model from the topics.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every change in the log, read as a client resuming from 0.
async fn change_log(app: &TestApp) -> Vec<Sse> {
    let mut feed = app.feed("", Some(0)).await;
    let mut out = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(500)).await {
        out.push(e);
    }
    out
}

/// The whole read model as the API shows it: every order and every customer.
async fn read_model(app: &TestApp, customers: &[String]) -> (Value, Vec<Value>) {
    let orders = app.ok("/orders?limit=500").await["orders"].clone();
    let mut sorted: Vec<Value> = orders.as_array().unwrap().clone();
    sorted.sort_by_key(|o| o["id"].as_str().unwrap().to_owned());
    let mut people = Vec::new();
    for c in customers {
        people.push(app.ok(&format!("/customers/{c}")).await);
    }
    (Value::Array(sorted), people)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_file_resumes_and_a_new_file_rebuilds_everything() {
    let env = TestEnv::start().await;
    let kept = env.db("kept");
    let app = env.spawn_app(&kept, "").await;
    let (ada, bob) = (new_id(), new_id());
    let customers = [ada.clone(), bob.clone()];
    env.send_customer(&registered(&ada, "Ada", 1000)).await;
    env.send_customer(&registered(&bob, "Bob", 1000)).await;
    let (o1, o2) = (new_id(), new_id());
    env.send_order(&created(&ada, &o1, 400)).await;
    env.send_credit(&reserved(&ada, &o1, 400, 400, 1000)).await;
    env.send_order(&approved(&ada, &o1, 400)).await;
    env.send_order(&created(&bob, &o2, 50)).await;
    app.until(&format!("/orders/{o1}"), |_, b| b["status"] == "APPROVED")
        .await;
    app.until(&format!("/orders/{o2}"), |s, _| s == 200).await;
    app.until(&format!("/customers/{ada}"), |_, b| {
        b["credit_reserved_cents"] == 400
    })
    .await;
    let before = change_log(&app).await;
    let last = before.last().unwrap().id.unwrap();
    app.stop().await;

    // Events while it is down.
    let o3 = new_id();
    env.send_order(&created(&bob, &o3, 70)).await;
    env.send_order(&cancelled(&ada, &o1, 400)).await;
    env.send_credit(&released(&ada, &o1, 400, 0)).await;

    let app = env.spawn_app(&kept, "").await;
    // State survived before anything new is applied: served from the file.
    assert_eq!(app.ok(&format!("/orders/{o2}")).await["total_cents"], 50);
    app.until(&format!("/orders/{o1}"), |_, b| b["status"] == "CANCELLED")
        .await;
    app.until(&format!("/orders/{o3}"), |s, _| s == 200).await;
    app.until(&format!("/customers/{ada}"), |_, b| {
        b["available_cents"] == 1000
    })
    .await;
    let after = change_log(&app).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "the old changes keep their numbers"
    );
    let new_ids: Vec<i64> = after[before.len()..]
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert_eq!(
        new_ids,
        ((last + 1)..=(last + 3)).collect::<Vec<_>>(),
        "numbering continues, and nothing was applied twice"
    );
    // A client that resumes across the restart gets exactly the new changes.
    let mut resumed = app.feed("", Some(last)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(resumed.next().await);
    }
    assert_eq!(got[..], after[before.len()..]);
    let model = read_model(&app, &customers).await;

    // A new, empty file next to it: a new consumer group, a full replay.
    let fresh = env.spawn_app(&env.db("fresh"), "").await;
    fresh
        .until(&format!("/orders/{o1}"), |_, b| b["status"] == "CANCELLED")
        .await;
    fresh.until(&format!("/orders/{o3}"), |s, _| s == 200).await;
    fresh
        .until(&format!("/customers/{ada}"), |_, b| {
            b["available_cents"] == 1000
        })
        .await;
    fresh
        .until(&format!("/customers/{bob}"), |_, b| b["name"] == "Bob")
        .await;
    assert_eq!(
        read_model(&fresh, &customers).await,
        model,
        "the rebuilt read model equals the one built live"
    );
    fresh.stop().await;
    app.stop().await;
}
