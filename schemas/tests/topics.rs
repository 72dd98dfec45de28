//! The topics as the real broker (started by `infra/up.sh`) creates them: the event topics
//! a read model is rebuilt from keep their events forever, the others the broker's default.

use feedline::Settings;
use feedline::admin::{Admin, Drift, TopicSpec};
use feedline::contracts::{ensure_topics, topic_specs};
use feedline_schemas::{CREDIT_EVENTS, EVENT_TOPICS, ORDER_COMMANDS, SCHEMAS_TOPIC, TOPICS};

fn settings(prefix: &str) -> Settings {
    let bootstrap =
        std::env::var("FEEDLINE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    cluster_settings(&bootstrap, prefix, -1)
}

fn cluster_settings(bootstrap: &str, prefix: &str, replication: i32) -> Settings {
    Settings::from_toml(&format!(
        r#"
        [kafka]
        bootstrap_servers = "{bootstrap}"
        topic_prefix = "{prefix}"
        replication_factor = {replication}
        default_partitions = 1
        [kafka.topic_config.customer-commands]
        "retention.ms" = "3600000"
        "#
    ))
    .unwrap()
}

#[tokio::test]
async fn created_event_topics_keep_their_events_forever() {
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let kafka = settings(&prefix).kafka;
    ensure_topics(&kafka).await.unwrap();
    let admin = Admin::new(&kafka).unwrap();

    for topic in EVENT_TOPICS {
        let config = admin.topic_config(&kafka.name(topic)).await.unwrap();
        assert_eq!(config["retention.ms"], "-1", "{topic}");
    }
    let commands = admin
        .topic_config(&kafka.name(ORDER_COMMANDS))
        .await
        .unwrap();
    assert_ne!(
        commands["retention.ms"], "-1",
        "commands keep the broker's default"
    );
    let customer_commands = admin
        .topic_config(&kafka.name("customer-commands"))
        .await
        .unwrap();
    assert_eq!(
        customer_commands["retention.ms"], "3600000",
        "a topic's own config"
    );

    let created: Vec<String> = admin.topics_with_prefix(&prefix).await.unwrap();
    assert_eq!(created.len(), TOPICS.len() + 2, "{created:?}");
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    admin.delete_topics(&names).await.unwrap();
}

/// A topic created before (or by someone else) keeps its config, and what differs from
/// feedline's is reported.
#[tokio::test]
async fn an_existing_topic_is_left_alone_and_its_drift_reported() {
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let kafka = settings(&prefix).kafka;
    let admin = Admin::new(&kafka).unwrap();
    let credit = kafka.name(CREDIT_EVENTS);
    admin
        .ensure_topics(&[TopicSpec::new(&credit, 1).retention_ms(3_600_000)])
        .await
        .unwrap();
    ensure_topics(&kafka).await.unwrap();
    let config = admin.topic_config(&credit).await.unwrap();
    assert_eq!(config["retention.ms"], "3600000", "left as it was");

    let drifts = admin.config_drift(&topic_specs(&kafka)).await.unwrap();
    assert_eq!(
        drifts,
        [Drift {
            topic: credit,
            key: "retention.ms".into(),
            wanted: "-1".into(),
            actual: Some("3600000".into()),
        }]
    );
    let created: Vec<String> = admin.topics_with_prefix(&prefix).await.unwrap();
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    admin.delete_topics(&names).await.unwrap();
}

/// On the three-broker cluster of `infra/up.sh --cluster`, named by `FEEDLINE_TEST_CLUSTER`
/// (e.g. `127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094`); without it there is nothing
/// to run this against (the single broker cannot hold three replicas).
#[tokio::test]
async fn on_a_cluster_three_replicas_need_two_in_sync() {
    let Ok(bootstrap) = std::env::var("FEEDLINE_TEST_CLUSTER") else {
        eprintln!("FEEDLINE_TEST_CLUSTER is not set: skipped");
        return;
    };
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let kafka = cluster_settings(&bootstrap, &prefix, 3).kafka;
    ensure_topics(&kafka).await.unwrap();
    let admin = Admin::new(&kafka).unwrap();
    for topic in TOPICS.iter().chain([&SCHEMAS_TOPIC]) {
        let config = admin.topic_config(&kafka.name(topic)).await.unwrap();
        assert_eq!(config["min.insync.replicas"], "2", "{topic}");
    }
    let created: Vec<String> = admin.topics_with_prefix(&prefix).await.unwrap();
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    admin.delete_topics(&names).await.unwrap();
}
