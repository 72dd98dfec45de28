//! Instances are stateless: a restart rebuilds the same state from `_schemas`, and two
//! instances on one topic agree on every id, even when they race.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Waits until both instances hold the same state (the other instance applies a write a few
/// milliseconds after the writing one answered).
async fn converge(a: &TestRegistry, b: &TestRegistry) {
    eventually(
        "the instances to converge",
        Duration::from_secs(10),
        async || {
            let (a, b) = (a.fingerprint(), b.fingerprint());
            if a == b {
                Ok(())
            } else {
                Err(format!("states:\n{a}\n---\n{b}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_rebuilds_the_same_state() {
    let first = TestRegistry::start().await;
    let prefix = first.prefix.clone();
    let a1 = first.register("a-value", &record("A", &[ID])).await;
    let a2 = first
        .register("a-value", &record("A", &[ID, EMAIL_DEFAULT]))
        .await;
    assert_eq!(first.register("b-value", &record("A", &[ID])).await, a1);
    let gone = first.register("gone-value", &record("Gone", &[ID])).await;
    first.set_level(None, "FULL").await;
    first.set_level(Some("b-value"), "NONE").await;
    first.delete("/subjects/a-value/versions/1").await.ok();
    // The highest id is deleted for good: it must still never come back.
    first.delete("/subjects/gone-value").await.ok();
    first
        .delete("/subjects/gone-value?permanent=true")
        .await
        .ok();
    assert!(gone > a2);
    let before = first.fingerprint();
    let subjects = first.get("/subjects?deleted=true").await.ok().clone();
    first.stop().await;

    let second = TestRegistry::on(&prefix).await;
    assert_eq!(second.fingerprint(), before);
    assert_eq!(second.get("/subjects?deleted=true").await.ok(), &subjects);
    assert_eq!(
        second.get("/subjects/a-value/versions").await.ok(),
        &json!([2])
    );
    assert_eq!(
        second.get("/subjects/a-value/versions/2").await.ok()["id"],
        json!(a2)
    );
    assert_eq!(
        second
            .get(&format!("/schemas/ids/{a1}/versions"))
            .await
            .ok(),
        &json!([{"subject": "b-value", "version": 1}])
    );
    assert_eq!(
        second.get("/config").await.ok(),
        &json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(
        second.get("/config/b-value").await.ok(),
        &json!({"compatibilityLevel": "NONE"})
    );
    second
        .get(&format!("/schemas/ids/{gone}"))
        .await
        .error(404, 40403);
    let fresh = second.register("c-value", &record("C", &[ID])).await;
    assert_eq!(
        fresh,
        gone + 1,
        "ids continue after the highest ever handed out"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_agree_on_every_id() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::on(&a.prefix).await;
    let schema = record("Shared", &[ID]);
    let id = a.register("shared-value", &schema).await;
    // B answers with A's registration: same id for the same schema, under any subject.
    assert_eq!(b.register("shared-value", &schema).await, id);
    assert_eq!(b.register("other-value", &schema).await, id);
    converge(&a, &b).await;
    assert_eq!(
        a.get(&format!("/schemas/ids/{id}/subjects")).await.ok(),
        &json!(["other-value", "shared-value"])
    );
    // A config written on one is read on the other.
    b.set_level(Some("shared-value"), "FULL").await;
    converge(&a, &b).await;
    assert_eq!(
        a.get("/config/shared-value").await.ok(),
        &json!({"compatibilityLevel": "FULL"})
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_never_share_an_id() {
    let a = Arc::new(TestRegistry::start().await);
    let b = Arc::new(TestRegistry::on(&a.prefix).await);
    const PER_SIDE: usize = 20;

    // The shared subject must accept unrelated records.
    a.set_level(Some("race-value"), "NONE").await;

    // 20 tasks per instance, each registering a different schema; half of them share a
    // subject (racing for its versions), half use subjects of their own (racing for ids).
    let mut tasks = Vec::new();
    for (side, reg) in [("a", &a), ("b", &b)] {
        for i in 0..PER_SIDE {
            let reg = Arc::clone(reg);
            let name = format!("R{side}{i}");
            let subject = if i % 2 == 0 {
                "race-value".to_owned()
            } else {
                format!("race-{side}-{i}-value")
            };
            tasks.push(tokio::spawn(async move {
                // Each schema is a new record name, so NONE keeps them all compatible.
                let schema = record(&name, &[ID]);
                let answer = reg
                    .post(
                        &format!("/subjects/{subject}/versions"),
                        &json!({ "schema": schema }),
                    )
                    .await;
                (schema, subject, answer.ok()["id"].as_u64().expect("id"))
            }));
        }
    }
    // Also race the SAME schema on both instances: one id for it.
    let same = record("Same", &[ID]);
    let (same_a, same_b) = tokio::join!(a.register("same-a", &same), b.register("same-b", &same));
    assert_eq!(same_a, same_b);

    let mut id_of: HashMap<String, u64> = HashMap::new();
    let mut schema_of: BTreeMap<u64, String> = BTreeMap::new();
    for task in tasks {
        let (schema, _subject, id) = task.await.expect("task");
        if let Some(other) = schema_of.insert(id, schema.clone()) {
            panic!("id {id} handed to two schemas:\n{other}\n{schema}");
        }
        id_of.insert(schema, id);
    }
    assert_eq!(schema_of.len(), 2 * PER_SIDE);
    assert!(!schema_of.contains_key(&same_a));

    converge(&a, &b).await;
    // Both instances serve every id with the schema it was handed out for.
    for (id, schema) in &schema_of {
        for reg in [&a, &b] {
            let served = reg.get(&format!("/schemas/ids/{id}")).await;
            let text = served.ok()["schema"].as_str().unwrap().to_owned();
            assert_eq!(
                serde_json::from_str::<Value>(&text).unwrap(),
                serde_json::from_str::<Value>(schema).unwrap()
            );
        }
    }
    // The shared subject got one version per registration, numbered without gaps.
    let versions = a.get("/subjects/race-value/versions").await.ok().clone();
    assert_eq!(versions, json!((1..=PER_SIDE as u64).collect::<Vec<_>>()));
    let a = Arc::into_inner(a).expect("tasks done");
    let b = Arc::into_inner(b).expect("tasks done");
    a.stop().await;
    b.stop().await;
}

/// Counts what the instance's reader ignored, from its metrics.
async fn rejected(reg: &TestRegistry) -> u64 {
    let metrics = reg.get("/metrics").await.text;
    metrics
        .lines()
        .find(|l| l.starts_with("feedline_registry_records_rejected_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_another_writer_lose_to_earlier_ones_everywhere() {
    use feedline::{Metrics, Outgoing, Producer};
    use feedline_registry::record::{Record, SchemaValue};

    let a = TestRegistry::start().await;
    let first = record("First", &[ID]);
    let id = a.register("taken-value", &first).await;

    // Another writer (plain producer, no fencing) claims the same id for a different schema,
    // and the same subject version for a different id: both come later in the log, so both
    // lose, on every instance alike.
    let settings = settings(&a.prefix);
    let producer = Producer::new(&settings.kafka, Metrics::new("intruder")).expect("producer");
    let topic = settings.kafka.name(feedline_registry::TOPIC);
    let claim = |subject: &str, id: u64, schema: String| Record::Schema {
        subject: subject.into(),
        version: 1,
        value: Some(SchemaValue {
            subject: subject.into(),
            version: 1,
            id: id as u32,
            schema_type: None,
            references: vec![],
            schema,
            deleted: false,
        }),
    };
    for record in [
        claim("intruder-value", id, record("Intruder", &[ID])),
        claim("taken-value", id + 1, record("Squatter", &[ID])),
    ] {
        let (key, value) = record.encode();
        producer
            .send(Outgoing::new(&topic, Some(&key), value.as_deref().unwrap()))
            .await
            .expect("produced");
    }

    let b = TestRegistry::on(&a.prefix).await;
    eventually(
        "instance a to apply the records",
        Duration::from_secs(10),
        async || rejected(&a).await >= 2,
    )
    .await;
    assert_eq!(rejected(&b).await, 2);
    converge(&a, &b).await;
    for reg in [&a, &b] {
        reg.get("/subjects/intruder-value/versions")
            .await
            .error(404, 40401);
        assert_eq!(
            reg.get("/subjects/taken-value/versions/1").await.ok()["id"],
            json!(id)
        );
        reg.get(&format!("/schemas/ids/{}", id + 1))
            .await
            .error(404, 40403);
    }
    // Writing goes on from the state everyone agrees on.
    assert_eq!(
        b.register("next-value", &record("Next", &[ID])).await,
        id + 1
    );
    a.stop().await;
    b.stop().await;
}
