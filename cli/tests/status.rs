//! `feedline status` against the real broker: the fleet the service directory knows, as a
//! table and as JSON, and exit 1 when a service has no ready instance.

mod common;

use std::time::Duration;

use feedline::CancellationToken;
use feedline_testkit::{PATIENCE, eventually};

#[tokio::test]
async fn status_shows_the_fleet_and_fails_when_a_service_has_no_ready_instance() {
    let env = common::start().await;
    let db = std::env::temp_dir().join(format!("{}view.db", env.prefix));
    let settings = env
        .settings
        .with_overrides(&format!(
            "service_name = \"order-view\"\n[database]\nurl = \"sqlite:{}\"\n[discovery]\nheartbeat_ms = 300\n",
            db.display()
        ))
        .unwrap();
    let token = CancellationToken::new();
    let (addr, view) = feedline_order_view::spawn(settings, token.clone())
        .await
        .unwrap();
    let url = format!("http://{addr}");

    // Ready once its group is joined and its lag known.
    let fleet = eventually("order-view listed as ready", PATIENCE, async || {
        let run = env.feedline(&["status", "--output", "json"]).await;
        let json = run.json();
        let ready = json["instances"].as_array()?.iter().any(|i| {
            i["service"] == "order-view" && i["url"] == url.as_str() && i["ready"] == true
        });
        (ready && run.code == 0).then_some(json)
    })
    .await;
    assert_eq!(fleet["healthy"], true, "{fleet:#}");
    assert_eq!(fleet["services"]["order-view"]["serving"], 1, "{fleet:#}");
    let instance = fleet["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "order-view")
        .unwrap();
    assert!(
        !instance["partitions"].as_array().unwrap().is_empty(),
        "its assigned partitions: {instance:#}"
    );
    assert!(instance["lag"].is_i64(), "its lag: {instance:#}");

    let table = env.feedline(&["status"]).await.ok();
    let header = table.stdout.lines().next().unwrap();
    for column in [
        "SERVICE",
        "INSTANCE",
        "URL",
        "VERSION",
        "READY",
        "LAG",
        "LAST SEEN",
        "UPTIME",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&url))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    assert!(
        row.starts_with("order-view") && row.contains(" yes "),
        "{row}"
    );

    // A service that must run but has no instance: exit 1, saying which.
    let missing = env.feedline(&["status", "--expect", "orders"]).await;
    assert_eq!(missing.code, 1, "{missing:#?}");
    assert!(
        missing.stderr.contains("orders: no ready instance"),
        "{missing:#?}"
    );

    // A clean stop leaves the directory at once (its tombstone), so order-view has no
    // instance any more.
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), view)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let after = env
        .feedline(&["status", "--expect", "order-view", "--output", "json"])
        .await;
    assert_eq!(after.code, 1, "{after:#?}");
    let json = after.json();
    assert_eq!(json["services"]["order-view"]["instances"], 0, "{json:#}");
}
