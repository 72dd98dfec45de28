//! Admission control against the real broker: commands are refused with 503 while the
//! orders group lags behind `order-commands`, and accepted again once it caught up.

use std::time::Duration;

use feedline_schemas::ORDER_COMMANDS;
use feedline_testkit::kafka_bootstrap;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Answer, Options, TestApp};

async fn place(app: &TestApp, token: &str) -> Answer {
    app.post_json(
        "/orders",
        token,
        &json!({"customer_id": Uuid::new_v4().to_string(), "total": "1.00"}),
    )
    .await
}

/// Posts orders until one is answered with `status` (each 202 adds to the backlog).
async fn place_until(app: &TestApp, token: &str, status: u16) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = place(app, token).await;
        if answer.status == status {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {status} in time; last answer {answer:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Consumes `order-commands` to its end as the orders service's group, and commits.
async fn catch_up_as_orders(app: &TestApp) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", app.settings.kafka.name("orders"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&app.settings.kafka.name(ORDER_COMMANDS)])
        .unwrap();
    let partitions = 3;
    let mut at_end = std::collections::HashSet::new();
    while at_end.len() < partitions {
        match tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("order-commands read in time")
        {
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
            }
            Err(e) => panic!("consumer error: {e}"),
            Ok(_) => {}
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
}

/// A gateway that refuses past a backlog of 4, read every 100 ms, after a 100 ms hold,
/// watching the groups `watched` (TOML) names.
async fn spawn_watching(watched: &str) -> TestApp {
    TestApp::spawn_with(Options {
        extra_toml: format!(
            "[gateway.admission]\nmax_backlog = 4\ncheck_interval_ms = 100\nmax_hold_ms = 100\n{watched}"
        ),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn commands_are_refused_while_the_services_lag_and_accepted_after() {
    let app = spawn_watching(
        r#"
        [gateway.admission.groups]
        orders = ["order-commands"]
        customers = []
        "#,
    )
    .await;
    let token = app.token(Some("orders:write")).await;

    // Nothing consumes order-commands: the backlog grows with every accepted order.
    let refused = place_until(&app, &token, 503).await;
    refused.assert_error(503, "overloaded", None);
    assert_eq!(refused.header("retry-after"), "1");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"feedline_gateway_commands_refused_total{service="gateway"} 1"#),
        "{metrics}"
    );

    // Bad input is still told apart from overload.
    let bad = app
        .post_json(
            "/orders",
            &token,
            &json!({"customer_id": "x", "total": "1"}),
        )
        .await;
    assert_eq!(bad.status, 422, "{bad:#?}");

    catch_up_as_orders(&app).await;
    place_until(&app, &token, 202).await;
    app.stop().await;
}

/// Groups named per replica count through their prefix while they have members: a joined
/// member that consumes nothing holds commands back, and once it left, its group no longer
/// counts (a replica that is gone must not block the gateway).
#[tokio::test]
async fn groups_under_a_prefix_count_while_they_have_members() {
    let app = spawn_watching(
        r#"
        [gateway.admission.groups]
        orders = []
        customers = []
        [gateway.admission.group_prefixes]
        "replica." = ["order-commands"]
        "#,
    )
    .await;
    let token = app.token(Some("orders:write")).await;

    // A replica's group joins and never consumes (its member polls, so it stays in the group).
    let member: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", app.settings.kafka.name("replica.one"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .create()
        .unwrap();
    member
        .subscribe(&[&app.settings.kafka.name(ORDER_COMMANDS)])
        .unwrap();
    let member = std::sync::Arc::new(member);
    let polling = tokio::spawn({
        let member = member.clone();
        async move {
            loop {
                // Keeps the member alive; what it receives is not committed.
                let _ = tokio::time::timeout(Duration::from_millis(200), member.recv()).await;
            }
        }
    });

    let refused = place_until(&app, &token, 503).await;
    refused.assert_error(503, "overloaded", None);

    // The replica leaves: its group has no members and stops counting.
    polling.abort();
    let _ = polling.await;
    let member = std::sync::Arc::try_unwrap(member).ok().unwrap();
    member.unsubscribe();
    drop(member);
    place_until(&app, &token, 202).await;
    app.stop().await;
}
