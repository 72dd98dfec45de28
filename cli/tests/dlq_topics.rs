//! Dead letters written by the platform's own `dead_letter`, inspected and redriven by the
//! CLI; and the topic commands.

mod common;

use common::{customer, lines, order_created, read_all, start};
use feedline::Rejection;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// A topic with two real messages, and its DLQ holding a message that never decoded and
/// then those two (rejected for validation).
async fn topic_with_dead_letters(env: &common::Env) -> (String, Vec<OwnedMessage>) {
    let topic = env.order_topic(1).await;
    let dlq = format!("{topic}.dlq");
    env.feedline(&["topics", "create", &dlq, "--partitions", "1"])
        .await
        .ok();
    let values = vec![
        order_created(&customer(), 100),
        order_created(&customer(), 200),
    ];
    env.feedline_with(
        &[
            "produce",
            &topic,
            "--key-field",
            "payload.customer_id",
            "--header",
            "trace=t1",
        ],
        Some(&lines(&values)),
    )
    .await
    .ok();
    let originals = read_all(&topic, 1);
    assert_eq!(originals.len(), 2);
    let producer = env.producer();
    // The undecodable one first, so a filtered redrive leaves a letter before the others.
    let garbage = OwnedMessage::new(
        Some(b"not avro".to_vec()),
        Some(b"k9".to_vec()),
        topic.clone(),
        rdkafka::Timestamp::CreateTime(1),
        0,
        99,
        None,
    );
    feedline::dlq::dead_letter(
        &producer,
        "orders-service",
        &garbage,
        &Rejection::new("framing", "bad magic byte 0x6e: not Confluent-framed Avro"),
    )
    .await
    .unwrap();
    for msg in &originals {
        feedline::dlq::dead_letter(
            &producer,
            "orders-service",
            msg,
            &Rejection::new("validation", "customer unknown"),
        )
        .await
        .unwrap();
    }
    (topic, originals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_inspect_shows_why_where_from_and_the_decoded_original() {
    let env = start().await;
    let (topic, originals) = topic_with_dead_letters(&env).await;
    let run = env
        .feedline(&["dlq", "inspect", &topic, "--output", "json"])
        .await
        .ok();
    let letters = run.json_lines();
    assert_eq!(letters.len(), 3, "{run:?}");
    let first = &letters[1];
    assert_eq!(first["dlq"], format!("{topic}.dlq/0/1"));
    assert_eq!(first["error"], "customer unknown");
    assert_eq!(first["error_kind"], "validation");
    assert_eq!(first["source"]["topic"], topic.as_str());
    assert_eq!(first["source"]["partition"], 0);
    assert_eq!(first["source"]["offset"], 0);
    assert_eq!(first["group"], "orders-service");
    assert_eq!(first["headers"], serde_json::json!({"trace": "t1"}));
    assert_eq!(
        first["key"].as_str().unwrap().as_bytes(),
        originals[0].key().unwrap()
    );
    assert_eq!(first["value"]["payload"]["total_cents"], 100);
    let last = &letters[0];
    assert_eq!(last["error_kind"], "framing");
    assert_eq!(last["source"]["offset"], 99);
    assert_eq!(last["value_base64"], "bm90IGF2cm8=");
    assert!(
        last["value_error"]
            .as_str()
            .unwrap()
            .contains("not Confluent-framed")
    );

    // The DLQ's own name works too, and so does the human output and a filter.
    let run = env
        .feedline(&[
            "dlq",
            "inspect",
            &format!("{topic}.dlq"),
            "--filter",
            "dlq.error.kind=framing",
        ])
        .await
        .ok();
    assert!(
        run.stdout.contains("reason (framing): bad magic byte"),
        "{run:?}"
    );
    assert!(run.stdout.contains("1 dead letters in"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_sends_each_letter_once_and_dry_run_sends_nothing() {
    let env = start().await;
    let (topic, originals) = topic_with_dead_letters(&env).await;

    let run = env
        .feedline(&["dlq", "redrive", &topic, "--dry-run", "--output", "json"])
        .await
        .ok();
    let plans = run.json_lines();
    assert_eq!(plans.len(), 3, "{run:?}");
    assert_eq!(plans[1]["to"], topic.as_str());
    assert_eq!(
        plans[1]["headers"]["dlq.redriven.from"],
        format!("{topic}.dlq/0/1")
    );
    assert_eq!(read_all(&topic, 1).len(), 2, "a dry run sends nothing");

    // Only the validation failures first: the framing one stays for later.
    let run = env
        .feedline(&[
            "dlq",
            "redrive",
            &topic,
            "--filter",
            "dlq.error.kind=validation",
        ])
        .await
        .ok();
    assert!(run.stdout.starts_with("redrove 2 dead letters"), "{run:?}");
    let run = env
        .feedline(&[
            "dlq",
            "redrive",
            &topic,
            "--filter",
            "dlq.error.kind=validation",
        ])
        .await
        .ok();
    assert!(run.stdout.starts_with("redrove 0 dead letters"), "{run:?}");
    assert!(
        run.stdout
            .contains("1 left in the DLQ, 2 redriven by earlier runs"),
        "{run:?}"
    );
    let now = read_all(&topic, 1);
    assert_eq!(now.len(), 4);
    for (copy, original) in now[2..].iter().zip(&originals) {
        assert_eq!(copy.payload(), original.payload());
        assert_eq!(copy.key(), original.key());
        let headers = feedline_cli::message::headers(copy);
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["trace", "dlq.redriven.from"],
            "dlq.* headers are dropped"
        );
        assert_eq!(
            headers[1].1.as_deref(),
            Some(format!("{topic}.dlq/0/{}", original.offset() + 1).as_bytes())
        );
    }
    // What consume shows of a redriven copy.
    let run = env
        .feedline(&["consume", &topic, "--meta", "--offset", "2", "--count", "1"])
        .await
        .ok();
    assert_eq!(
        run.json_lines()[0]["headers"]["dlq.redriven.from"],
        format!("{topic}.dlq/0/1")
    );

    // Without the filter the one left behind goes too, and only it; then nothing.
    let run = env.feedline(&["dlq", "redrive", &topic]).await.ok();
    assert!(run.stdout.starts_with("redrove 1 dead letters"), "{run:?}");
    assert!(run.stdout.contains("2 redriven by earlier runs"), "{run:?}");
    let run = env
        .feedline(&["dlq", "redrive", &format!("{topic}.dlq")])
        .await
        .ok();
    assert!(run.stdout.starts_with("redrove 0 dead letters"), "{run:?}");
    let now = read_all(&topic, 1);
    assert_eq!(now.len(), 5);
    assert_eq!(now[4].payload(), Some(&b"not avro"[..]));
    let run = env
        .feedline(&["dlq", "redrive", &topic, "--dry-run"])
        .await
        .ok();
    assert!(run.stdout.starts_with("would redrive 0"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_list_and_describe() {
    let env = start().await;
    let name = format!(
        "{}plain-{}",
        env.prefix,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    env.feedline(&[
        "topics",
        "create",
        &name,
        "--partitions",
        "4",
        "--topic-config",
        "retention.ms=3600000",
    ])
    .await
    .ok();
    // Creating again is fine: existing topics are left as they are.
    env.feedline(&["topics", "create", &name, "--partitions", "4"])
        .await
        .ok();

    let run = env
        .feedline(&["topics", "list", "--output", "json"])
        .await
        .ok();
    let listed = run.json();
    let found = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} in {listed}"));
    assert_eq!(found["partitions"], 4);
    let run = env.feedline(&["topics", "list"]).await.ok();
    assert!(
        run.stdout.lines().any(|l| l == format!("{name}\t4")),
        "{run:?}"
    );
    assert!(!run.stdout.contains("__consumer_offsets"));

    let run = env
        .feedline(&["topics", "describe", &name, "--output", "json"])
        .await
        .ok();
    let described = run.json();
    let partitions = described["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 4);
    for (i, p) in partitions.iter().enumerate() {
        assert_eq!(p["partition"], i);
        assert!(p["leader"].as_i64().unwrap() >= 0);
        assert!(!p["replicas"].as_array().unwrap().is_empty());
        assert!(!p["isr"].as_array().unwrap().is_empty());
        assert_eq!((p["low"].as_i64(), p["high"].as_i64()), (Some(0), Some(0)));
    }
    assert_eq!(described["configs"]["retention.ms"]["value"], "3600000");
    assert_eq!(described["configs"]["retention.ms"]["default"], false);
    let run = env.feedline(&["topics", "describe", &name]).await.ok();
    assert!(
        run.stdout.contains("retention.ms = 3600000  (set)"),
        "{run:?}"
    );

    // Without a name: every system topic, under the configured prefix.
    let run = env.feedline(&["topics", "create"]).await.ok();
    for topic in feedline_schemas::TOPICS {
        assert!(
            run.stdout
                .lines()
                .any(|l| l == format!("{}{topic}", env.prefix)),
            "{run:?}"
        );
    }
}
