//! Tenancy end to end: the gateway in front of the real customers, orders and order-view
//! services, on the real broker. Two tenants' clients and an admin; neither tenant reads,
//! cancels, re-limits or orders for the other's customers, and the unfiltered listings
//! and feed carry only their own.

use std::collections::BTreeSet;
use std::time::Duration;

use feedline_testkit::{PATIENCE, Service, TestEnv, eventually, fresh_database};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Answer, Options, TestApp};

/// Clients `acme` and `globex` (each of its tenant, every scope but admin) besides the
/// demo client, which is an admin.
fn clients() -> String {
    let client = |id: &str| {
        format!(
            "[gateway.clients.{id}]\nsecret_sha256 = \"{}\"\n\
             scopes = [\"orders:write\", \"customers:write\", \"feed:read\"]\ntenant = \"{id}\"\n",
            feedline_gateway::auth::hash_secret(&format!("{id}-secret"))
        )
    };
    client("acme") + &client("globex")
}

struct World {
    gateway: TestApp,
    _services: Vec<Service>,
    _dir: tempfile::TempDir,
    _env: TestEnv,
}

async fn world() -> World {
    let env = TestEnv::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let customers = Service::start(
        feedline_customers::spawn,
        env.settings("customers", &fresh_database().await),
    )
    .await;
    let orders = Service::start(
        feedline_orders::spawn,
        env.settings("orders", &fresh_database().await),
    )
    .await;
    let view_db = format!("sqlite:{}", dir.path().join("view.db").display());
    let view = Service::start(
        feedline_order_view::spawn,
        env.settings("order-view", &view_db),
    )
    .await;
    let gateway = TestApp::spawn_with(Options {
        order_view_url: Some(format!("http://{}", view.addr)),
        join: Some((env.prefix.clone(), env.registry_url.clone())),
        extra_toml: clients(),
        ..Options::default()
    })
    .await;
    World {
        gateway,
        _services: vec![customers, orders, view],
        _dir: dir,
        _env: env,
    }
}

impl World {
    async fn get(&self, token: &str, path: &str) -> Answer {
        let app = &self.gateway;
        app.send(app.http.get(app.at(path)).bearer_auth(token))
            .await
    }

    /// Registers a customer and waits until its own client sees it.
    async fn register(&self, token: &str, name: &str) -> String {
        let answer = self
            .gateway
            .post_json(
                "/customers",
                token,
                &json!({"name": name, "credit_limit": "100.00"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{answer:#?}");
        let id = answer.body["customer_id"].as_str().unwrap().to_owned();
        let path = format!("/customers/{id}");
        eventually(&format!("{name} in order-view"), PATIENCE, async || {
            (self.get(token, &path).await.status == StatusCode::OK).then_some(())
        })
        .await;
        id
    }

    /// Places an order and waits for its outcome.
    async fn order(&self, token: &str, customer: &str) -> String {
        let answer = self
            .gateway
            .post_json(
                "/orders?wait=10s",
                token,
                &json!({"customer_id": customer, "total": "10.00"}),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        assert_eq!(answer.body["status"], "APPROVED", "{answer:#?}");
        answer.body["order_id"].as_str().unwrap().to_owned()
    }
}

fn order_ids(page: &Value) -> BTreeSet<String> {
    page["orders"]
        .as_array()
        .unwrap_or_else(|| panic!("a listing: {page}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The first event of the gateway's feed for `token`, asking for a snapshot (an id that
/// is none of order-view's).
async fn snapshot(app: &TestApp, token: &str, spoofed_tenant: Option<&str>) -> Value {
    let mut request = app
        .http
        .get(app.at("/feed"))
        .bearer_auth(token)
        .header("last-event-id", "not-an-id");
    if let Some(tenant) = spoofed_tenant {
        request = request.header("x-feedline-tenant", tenant);
    }
    let mut response = request.send().await.expect("feed connected");
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    let block = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(end) = text.find("\n\n") {
                let block = text[..end].to_owned();
                if block.lines().any(|l| l.starts_with("data:")) {
                    return block;
                }
                text.drain(..end + 2);
                continue;
            }
            let chunk = response
                .chunk()
                .await
                .expect("feed chunk")
                .expect("feed open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("a snapshot in time");
    assert!(block.contains("event: snapshot"), "{block}");
    let data: String = block
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect();
    serde_json::from_str(&data).expect("snapshot JSON")
}

fn customer_ids(snapshot: &Value) -> BTreeSet<String> {
    snapshot["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_neither_sees_nor_touches_another_tenants_customers() {
    let world = world().await;
    let app = &world.gateway;
    let acme = app.token_for("acme", "acme-secret", None).await;
    let globex = app.token_for("globex", "globex-secret", None).await;
    let admin = app.token(None).await;

    let ada = world.register(&acme, "Ada").await;
    let bob = world.register(&globex, "Bob").await;
    let registered = world.get(&acme, &format!("/customers/{ada}")).await;
    assert_eq!(registered.body["tenant"], "acme");
    let ada_order = world.order(&acme, &ada).await;
    let bob_order = world.order(&globex, &bob).await;

    // Reads of another tenant's rows: 404, as rows that do not exist.
    for path in [
        format!("/customers/{bob}"),
        format!("/customers/{bob}/orders"),
        format!("/orders/{bob_order}"),
    ] {
        world
            .get(&acme, &path)
            .await
            .assert_error(404, "not_found", None);
    }
    // Listings: only acme's, whatever the query asks.
    let listing = world.get(&acme, "/orders").await;
    assert_eq!(
        order_ids(&listing.body),
        BTreeSet::from([ada_order.clone()])
    );
    let theirs = world
        .get(&acme, &format!("/orders?customer_id={bob}"))
        .await;
    assert!(order_ids(&theirs.body).is_empty(), "{theirs:#?}");
    // A tenant header from the client is not passed on: globex stays globex.
    let spoofed = app
        .send(
            app.http
                .get(app.at("/orders"))
                .bearer_auth(&globex)
                .header("x-feedline-tenant", "acme"),
        )
        .await;
    assert_eq!(
        order_ids(&spoofed.body),
        BTreeSet::from([bob_order.clone()])
    );

    // Commands on another tenant's customer or order: 403 naming it.
    app.post_json(
        "/orders",
        &acme,
        &json!({"customer_id": bob, "total": "1.00"}),
    )
    .await
    .assert_error(403, "forbidden", Some("customer_id"));
    app.send(
        app.http
            .put(app.at(&format!("/customers/{bob}/credit-limit")))
            .bearer_auth(&acme)
            .json(&json!({"credit_limit": "1000000.00"})),
    )
    .await
    .assert_error(403, "forbidden", Some("id"));
    let cancel = app
        .post_json(&format!("/orders/{bob_order}/cancel"), &acme, &json!({}))
        .await;
    cancel.assert_error(403, "forbidden", Some("id"));
    assert!(
        cancel.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&bob_order)
    );
    // A customer nobody registered (or not shown yet): 404 with Retry-After.
    let unknown = app
        .post_json(
            "/orders",
            &acme,
            &json!({"customer_id": Uuid::new_v4(), "total": "1.00"}),
        )
        .await;
    unknown.assert_error(404, "unknown_customer", Some("customer_id"));
    assert_eq!(unknown.header("retry-after"), "1");
    // A tenant registers customers of its own tenant only.
    app.post_json(
        "/customers",
        &acme,
        &json!({"name": "Eve", "credit_limit": "1.00", "tenant": "globex"}),
    )
    .await
    .assert_error(403, "forbidden", Some("tenant"));

    // The unfiltered feed's snapshot: acme's customers and orders only, spoofing or not.
    for spoof in [None, Some("globex")] {
        let snap = snapshot(app, &acme, spoof).await;
        assert_eq!(customer_ids(&snap), BTreeSet::from([ada.clone()]));
        assert_eq!(order_ids(&snap), BTreeSet::from([ada_order.clone()]));
    }

    // Nothing of bob's changed through acme's attempts.
    let bob_now = world.get(&globex, &format!("/customers/{bob}")).await;
    assert_eq!(bob_now.body["credit_limit_cents"], 10_000, "{bob_now:#?}");
    assert_eq!(
        world
            .get(&globex, &format!("/orders/{bob_order}"))
            .await
            .body["status"],
        "APPROVED"
    );

    // The admin sees both and may act on either.
    let all = world.get(&admin, "/orders").await;
    let ids = order_ids(&all.body);
    assert!(
        ids.contains(&ada_order) && ids.contains(&bob_order),
        "{all:#?}"
    );
    let snap = snapshot(app, &admin, Some("acme")).await;
    assert!(customer_ids(&snap).is_superset(&BTreeSet::from([ada.clone(), bob.clone()])));
    let cancelled = app
        .post_json(
            &format!("/orders/{bob_order}/cancel?wait=10s"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:#?}");
    assert_eq!(cancelled.body["status"], "CANCELLED");
    // And registers customers for a tenant of its choosing.
    let answer = app
        .post_json(
            "/customers?wait=10s",
            &admin,
            &json!({"name": "Fay", "credit_limit": "5.00", "tenant": "globex"}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
    assert_eq!(answer.body["customer"]["tenant"], "globex");
    let fay = answer.body["customer_id"].as_str().unwrap();
    assert_eq!(
        world
            .get(&globex, &format!("/customers/{fay}"))
            .await
            .status,
        StatusCode::OK
    );
    world
        .get(&acme, &format!("/customers/{fay}"))
        .await
        .assert_error(404, "not_found", None);
}
