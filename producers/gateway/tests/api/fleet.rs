//! `GET /fleet` for admins only, and the static list of order-view replicas: a list whose
//! first replica is down still answers every read (retried on the other), and the dead one is
//! ejected.

use feedline_testkit::{PATIENCE, eventually};
use reqwest::StatusCode;

use crate::helpers::{JWT_SECRET, Options, TestApp, claims, closed_port, sign};
use crate::stub_order_view::{self, STUB_CUSTOMER};

#[tokio::test]
async fn fleet_is_for_admins_only() {
    let app = TestApp::spawn().await;
    let anonymous = app.send(app.http.get(app.at("/fleet"))).await;
    anonymous.assert_error(401, "invalid_token", None);
    // A tenant's reader (the demo client's tokens are always admin's).
    let reader = sign(JWT_SECRET.as_bytes(), &claims("feed:read", 300));
    let refused = app
        .send(app.http.get(app.at("/fleet")).bearer_auth(&reader))
        .await;
    refused.assert_error(403, "insufficient_scope", None);
    assert!(
        !refused.text.contains("127.0.0.1"),
        "no internal address for ordinary clients: {refused:#?}"
    );

    let admin = app.token(Some("admin")).await;
    let fleet = app
        .send(app.http.get(app.at("/fleet")).bearer_auth(&admin))
        .await;
    assert_eq!(fleet.status, StatusCode::OK, "{fleet:#?}");
    assert_eq!(fleet.header("cache-control"), "no-store");
    assert_eq!(fleet.body["discovery"], true, "on by default");
    assert!(fleet.body["instances"].is_array(), "{fleet:#?}");
    // Nothing announces order-view on this test's topics: the static list serves.
    let replicas = fleet.body["order_view"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{fleet:#?}");
    assert!(
        replicas[0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    // The gateway announces itself, and its own Directory lists it.
    let gateway = eventually("the gateway in its own directory", PATIENCE, async || {
        let fleet = app
            .send(app.http.get(app.at("/fleet")).bearer_auth(&admin))
            .await;
        fleet.body["instances"]
            .as_array()?
            .iter()
            .find(|i| i["service"] == "gateway")
            .cloned()
    })
    .await;
    assert_eq!(gateway["url"], app.url.as_str(), "{gateway:#}");
    assert_eq!(gateway["up"], true, "{gateway:#}");
    assert!(gateway["uptime_ms"].is_i64(), "{gateway:#}");
}

#[tokio::test]
async fn a_static_list_retries_on_the_other_replica_and_ejects_the_dead_one() {
    let dead = closed_port().await;
    let stub = stub_order_view::start(false).await;
    let app = TestApp::spawn_with(Options {
        order_view_url: Some(format!("{dead}, {stub}/")),
        gateway_toml: "discover_order_view = false".into(),
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;
    const READS: usize = 20;
    for _ in 0..READS {
        let answer = app
            .send(
                app.http
                    .get(app.at(&format!("/customers/{STUB_CUSTOMER}")))
                    .bearer_auth(&token),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
    }
    let retries = app.metric("feedline_gateway_upstream_retries_total").await;
    assert!(
        (1.0..=3.0).contains(&retries),
        "the dead replica was tried until ejected, then left alone: {retries} retries"
    );
    assert_eq!(
        app.metric("feedline_gateway_upstream_ejections_total")
            .await,
        1.0
    );
    assert_eq!(app.metric("feedline_gateway_upstream_ejected").await, 1.0);
    assert_eq!(app.metric("feedline_gateway_upstream_replicas").await, 2.0);

    let admin = app.token(Some("admin")).await;
    let fleet = app
        .send(app.http.get(app.at("/fleet")).bearer_auth(&admin))
        .await;
    assert_eq!(fleet.body["discovery"], false, "{fleet:#?}");
    let replicas = fleet.body["order_view"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{fleet:#?}");
    assert_eq!(replicas[0]["url"], dead.as_str());
    assert!(
        replicas[0]["ejected_for_ms"].as_u64() > Some(0),
        "{fleet:#?}"
    );
    assert_eq!(
        replicas[1]["url"],
        stub.as_str(),
        "without the trailing slash"
    );
    assert!(replicas[1]["ejected_for_ms"].is_null(), "{fleet:#?}");
}
