//! Tenancy against the real broker and registry: a request carrying the gateway's tenant
//! header sees only the customers of that tenant and their orders, in point look-ups,
//! listings, feed replays, snapshots and live changes; a request without it sees all.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

fn order_ids(page: &Value) -> BTreeSet<String> {
    page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids_of(events: &[Sse]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e.event == "order" || e.event == "customer")
        .map(|e| e.data["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_customers_and_orders() {
    let env = TestEnv::start().await;
    let app = env.spawn_app(&env.db("view"), "").await;
    let (ada, bob, cyd) = (new_id(), new_id(), new_id());
    let (early, a1, b1, c1) = (new_id(), new_id(), new_id(), new_id());

    // An order of ada's arrives before her registration: it takes her tenant later.
    env.send_order(&created(&ada, &early, 100)).await;
    env.send_customer(&registered_in(&ada, "Ada", 1000, "acme"))
        .await;
    env.send_customer(&registered_in(&bob, "Bob", 1000, "globex"))
        .await;
    // A customer of no tenant: admins only.
    env.send_customer(&registered(&cyd, "Cyd", 1000)).await;
    env.send_order(&created(&ada, &a1, 200)).await;
    env.send_order(&created(&bob, &b1, 300)).await;
    env.send_order(&created(&cyd, &c1, 400)).await;

    // Without the header (the gateway's admins and its own look-ups): everything.
    for order in [&a1, &b1, &c1] {
        app.until(&format!("/orders/{order}"), |s, _| s == 200)
            .await;
    }
    app.until(&format!("/orders/{early}"), |s, b| {
        s == 200 && b["tenant"] == "acme"
    })
    .await;
    let all = order_ids(&app.ok("/orders").await);
    assert!([&early, &a1, &b1, &c1].iter().all(|o| all.contains(*o)));

    // acme: its own rows, and 404 for anybody else's, as for rows that do not exist.
    let (status, body) = app.get_as("acme", &format!("/orders/{a1}")).await;
    assert_eq!((status, body["tenant"].as_str()), (200, Some("acme")));
    assert_eq!(
        app.get_as("acme", &format!("/customers/{ada}")).await.0,
        200
    );
    for path in [
        format!("/orders/{b1}"),
        format!("/orders/{c1}"),
        format!("/customers/{bob}"),
        format!("/customers/{cyd}"),
        format!("/customers/{bob}/orders"),
    ] {
        let (status, body) = app.get_as("acme", &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, listing) = app.get_as("acme", "/orders").await;
    assert_eq!(status, 200);
    assert_eq!(
        order_ids(&listing),
        BTreeSet::from([early.clone(), a1.clone()])
    );
    let (_, theirs) = app
        .get_as("acme", &format!("/orders?customer_id={bob}"))
        .await;
    assert!(order_ids(&theirs).is_empty(), "{theirs}");
    let (_, own) = app
        .get_as("acme", &format!("/customers/{ada}/orders"))
        .await;
    assert_eq!(order_ids(&own), BTreeSet::from([early.clone(), a1.clone()]));
    let (_, globex) = app.get_as("globex", "/orders").await;
    assert_eq!(order_ids(&globex), BTreeSet::from([b1.clone()]));

    // An empty tenant is refused, never read as "every tenant".
    let (status, body) = app.get_as(" ", "/orders").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "x-feedline-tenant");

    // The unfiltered feed: a snapshot (an id that is not ours asks for one) of acme only.
    let mut feed = app.feed_as("acme", "", Some("not-an-id")).await;
    let snapshot = feed.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let customers: BTreeSet<&str> = snapshot.data["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(customers, BTreeSet::from([ada.as_str()]));
    assert_eq!(
        order_ids(&snapshot.data),
        BTreeSet::from([early.clone(), a1.clone()])
    );

    // Live: another tenant's change goes first, then acme's; acme's feed carries only its own.
    let (b2, a2) = (new_id(), new_id());
    env.send_order(&created(&bob, &b2, 500)).await;
    app.until(&format!("/orders/{b2}"), |s, _| s == 200).await;
    env.send_order(&created(&ada, &a2, 600)).await;
    let live = feed.read_until(|e| e.data["id"] == a2.as_str()).await;
    assert_eq!(ids_of(&live), BTreeSet::from([a2.clone()]), "{live:?}");

    // A replay of the whole change log (resuming after change 0) is filtered the same way.
    let mut replay = app
        .feed_as("acme", "", Some(&format!("{}-0", app.generation)))
        .await;
    let replayed = replay.read_until(|e| e.data["id"] == a2.as_str()).await;
    assert!(
        replayed.iter().all(|e| e.data["tenant"] == "acme"),
        "{replayed:?}"
    );
    assert_eq!(
        ids_of(&replayed),
        BTreeSet::from([ada.clone(), early.clone(), a1.clone(), a2.clone()])
    );

    // An admin's feed (no header) carries every tenant's changes.
    let mut admin = app
        .feed_from("", Some(&format!("{}-0", app.generation)))
        .await;
    let everything = admin.read_until(|e| e.data["id"] == a2.as_str()).await;
    let seen = ids_of(&everything);
    for id in [&ada, &bob, &cyd, &b1, &b2, &c1] {
        assert!(seen.contains(id), "admin feed lacks {id}");
    }
    app.stop().await;
}
