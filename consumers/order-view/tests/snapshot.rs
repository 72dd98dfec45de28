//! Feed snapshots are capped: an unfiltered snapshot of a large read model must not be read
//! into memory whole. It holds the newest orders up to the cap, says it was truncated, and
//! names the listing cursor that pages on to the rest.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const CAP: usize = 3;

fn ids(orders: &Value, key: &str) -> Vec<String> {
    orders
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o[key].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfiltered_snapshot_is_capped_and_pages_on_through_the_listing() {
    let env = TestEnv::start().await;
    let app = env
        .spawn_app(
            &env.db("view"),
            &format!("[order_view]\nfeed_snapshot_max_rows = {CAP}"),
        )
        .await;
    let customers: Vec<String> = (0..CAP + 1).map(|_| new_id()).collect();
    for (n, customer) in customers.iter().enumerate() {
        env.send_customer(&registered(customer, &format!("c{n}"), 1_000_000))
            .await;
    }
    let ada = &customers[0];
    let orders: Vec<String> = (0..CAP + 2).map(|_| new_id()).collect();
    for (n, order) in orders.iter().enumerate() {
        env.send_order(&created(ada, order, n as i64 + 1)).await;
    }
    app.until(&format!("/customers/{ada}/orders?limit=500"), |_, b| {
        b["orders"]
            .as_array()
            .is_some_and(|o| o.len() == orders.len())
    })
    .await;
    for customer in &customers {
        app.until(&format!("/customers/{customer}"), |s, _| s == 200)
            .await;
    }

    // An id of no generation of this read model: a snapshot.
    let mut client = app.feed_from("", Some("elsewhere-1")).await;
    let snapshot = client.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let data = &snapshot.data;
    assert_eq!(data["truncated"], true, "{data}");
    assert_eq!(data["customers"].as_array().unwrap().len(), CAP, "{data}");
    let first = ids(&data["orders"], "id");
    assert_eq!(first.len(), CAP, "{data}");
    let cursor = data["next_cursor"].as_str().expect("a cursor").to_owned();

    // The listing, from the cursor on, has exactly the orders the snapshot left out.
    let rest = app.ok(&format!("/orders?cursor={cursor}&limit=500")).await;
    let rest = ids(&rest["orders"], "id");
    assert_eq!(rest.len(), orders.len() - CAP, "{rest:?}");
    let seen: BTreeSet<String> = first.iter().chain(&rest).cloned().collect();
    let all: BTreeSet<String> = orders.iter().cloned().collect();
    assert_eq!(
        seen, all,
        "every order once, in the snapshot or on the next pages"
    );

    // A filtered snapshot under the cap is whole and says so.
    let mut one = app
        .feed_from(
            &format!("?customer_id={}", customers[1]),
            Some("elsewhere-1"),
        )
        .await;
    let small = one.next().await;
    assert_eq!(small.event, "snapshot");
    assert_eq!(small.data["truncated"], false, "{}", small.data);
    assert_eq!(small.data["next_cursor"], Value::Null);
    assert_eq!(small.data["customers"].as_array().unwrap().len(), 1);
}
