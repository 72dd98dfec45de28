//! `feedline produce` and `feedline consume` through the real broker and the project's
//! registry: what goes in as JSON comes out as the same JSON, with its key, headers,
//! partition and offset, from wherever reading was told to start.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{customer, lines, order_created, start};
use feedline_testkit::{PATIENCE, eventually};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What consume prints for an envelope that was produced without its optional field.
fn with_defaults(mut v: serde_json::Value) -> serde_json::Value {
    v["causation_id"] = serde_json::Value::Null;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_with_meta_key_field_and_headers() {
    let env = start().await;
    let topic = env.topic("meta", 3).await;
    // The schema comes from a file and is registered on first use.
    let avsc = std::env::temp_dir().join(format!("{topic}.avsc"));
    std::fs::write(
        &avsc,
        feedline_schemas::envelope_schema("order-events").unwrap(),
    )
    .unwrap();
    let (alice, bob) = (customer(), customer());
    let values = vec![
        order_created(&alice, 1250),
        order_created(&bob, 99),
        order_created(&alice, 5),
    ];
    let run = env
        .feedline_with(
            &[
                "produce",
                &topic,
                "--schema",
                avsc.to_str().unwrap(),
                "--key-field",
                "payload.customer_id",
                "--header",
                "source=test",
                "--header",
                "run=1",
            ],
            Some(&lines(&values)),
        )
        .await
        .ok();
    assert!(run.stdout.starts_with("sent 3 failed 0 to "), "{run:?}");

    let run = env
        .feedline(&["consume", &topic, "--from-beginning", "--meta"])
        .await
        .ok();
    let got = run.json_lines();
    assert_eq!(got.len(), 3, "{run:?}");
    let mut partition_of = std::collections::HashMap::new();
    for line in &got {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            run.stdout.lines().next().unwrap().find("\"key\""),
            Some(1),
            "key comes first: {}",
            run.stdout
        );
        assert!(
            keys.contains(&"timestamp") && keys.contains(&"offset"),
            "{line}"
        );
        assert_eq!(line["headers"], json!({"source": "test", "run": "1"}));
        assert_eq!(line["key"], line["value"]["payload"]["customer_id"]);
        // One key, one partition.
        let p = partition_of
            .entry(line["key"].as_str().unwrap().to_owned())
            .or_insert(line["partition"].clone());
        assert_eq!(*p, line["partition"]);
    }
    let mut sent: Vec<_> = values.into_iter().map(with_defaults).collect();
    let mut received: Vec<_> = got.iter().map(|l| l["value"].clone()).collect();
    let by_event = |v: &serde_json::Value| v["event_id"].as_str().unwrap().to_owned();
    sent.sort_by_key(by_event);
    received.sort_by_key(by_event);
    assert_eq!(sent, received);

    // Avro's JSON encoding names the union branch; --pretty indents.
    let run = env
        .feedline(&["consume", &topic, "--avro-json", "--pretty", "--count", "1"])
        .await
        .ok();
    assert!(run.stdout.starts_with("{\n"), "{run:?}");
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        value["payload"]["feedline.orders.OrderCreated"]["total_cents"].is_number(),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_repeats_a_single_value_and_partition_pins_it() {
    let env = start().await;
    let topic = env.order_topic(3).await;
    let value = order_created(&customer(), 7);
    env.feedline_with(
        &[
            "produce",
            &topic,
            "--count",
            "5",
            "--partition",
            "2",
            "--key",
            "k1",
        ],
        Some(&format!("{value}\n")),
    )
    .await
    .ok();
    let run = env
        .feedline(&["consume", &topic, "--partition", "2", "--meta"])
        .await
        .ok();
    let got = run.json_lines();
    assert_eq!(got.len(), 5, "{run:?}");
    assert!(got.iter().all(|l| l["key"] == "k1" && l["partition"] == 2));
    assert_eq!(
        got.iter()
            .map(|l| l["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    let run = env
        .feedline(&["consume", &topic, "--partition", "0"])
        .await
        .ok();
    assert_eq!(run.stdout, "");
    let run = env.feedline(&["consume", &topic, "--partition", "9"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no partition 9"), "{run:?}");

    // A JSON array is input too, and --count stops early.
    let array = json!([
        order_created(&customer(), 1),
        order_created(&customer(), 2),
        order_created(&customer(), 3)
    ]);
    let run = env
        .feedline_with(
            &["produce", &topic, "--count", "2"],
            Some(&array.to_string()),
        )
        .await
        .ok();
    assert!(run.stdout.starts_with("sent 2 failed 0"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_times_choose_where_reading_starts() {
    let env = start().await;
    let topic = env.order_topic(1).await;
    let first: Vec<_> = (0..5).map(|i| order_created(&customer(), i)).collect();
    env.feedline_with(&["produce", &topic], Some(&lines(&first)))
        .await
        .ok();
    // Every message so far was acknowledged, so stamped, before `since`; the later ones are
    // sent once the clock has passed it.
    let since_time = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    let since = since_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    eventually("the clock past `since`", PATIENCE, async || {
        chrono::Utc::now() > since_time
    })
    .await;
    let later: Vec<_> = (5..8).map(|i| order_created(&customer(), i)).collect();
    env.feedline_with(&["produce", &topic], Some(&lines(&later)))
        .await
        .ok();

    let totals = |run: &common::Run| -> Vec<i64> {
        run.json_lines()
            .iter()
            .map(|v| v["payload"]["total_cents"].as_i64().unwrap())
            .collect()
    };
    let run = env
        .feedline(&["consume", &topic, "--from-time", &since])
        .await
        .ok();
    assert_eq!(totals(&run), [5, 6, 7], "{run:?}");
    let run = env
        .feedline(&["consume", &topic, "--offset", "6"])
        .await
        .ok();
    assert_eq!(totals(&run), [6, 7]);
    let run = env
        .feedline(&["consume", &topic, "--offset", "-2"])
        .await
        .ok();
    assert_eq!(totals(&run), [6, 7]);
    let run = env
        .feedline(&["consume", &topic, "--from-beginning", "--count", "2"])
        .await
        .ok();
    assert_eq!(totals(&run), [0, 1]);
    let run = env.feedline(&["consume", &topic]).await.ok();
    assert_eq!(
        totals(&run).len(),
        8,
        "the default reads everything up to now"
    );

    // --follow waits for new messages from the end it announces; --count ends it.
    let mut follower = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"))
        .args(["consume", &topic, "--follow", "--count", "1"])
        .args(["--registry-url", &env.registry])
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &env.prefix)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(follower.stderr.take().unwrap()).lines();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.starts_with("following ") {
                return;
            }
        }
        panic!("consume --follow ended before it said it was following");
    })
    .await
    .expect("consume --follow says it is following");
    env.feedline_with(
        &["produce", &topic],
        Some(&format!("{}\n", order_created(&customer(), 42))),
    )
    .await
    .ok();
    let out = tokio::time::timeout(PATIENCE, follower.wait_with_output())
        .await
        .expect("--follow --count 1 ends after one message")
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["payload"]["total_cents"], 42,
        "--follow starts at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commits_what_it_printed_and_resumes_and_shows_its_lag() {
    let env = start().await;
    let topic = env.order_topic(2).await;
    let group = format!("{}audit", env.prefix);
    let values: Vec<_> = (0..4).map(|i| order_created(&customer(), i)).collect();
    env.feedline_with(
        &["produce", &topic, "--key-field", "payload.customer_id"],
        Some(&lines(&values)),
    )
    .await
    .ok();

    let run = env
        .feedline(&["consume", &topic, "--group", &group, "--count", "3"])
        .await
        .ok();
    let mut seen: HashSet<i64> = run
        .json_lines()
        .iter()
        .map(|v| v["payload"]["total_cents"].as_i64().unwrap())
        .collect();
    assert_eq!(seen.len(), 3, "{run:?}");
    let run = env
        .feedline(&["consume", &topic, "--group", &group])
        .await
        .ok();
    let rest = run.json_lines();
    assert_eq!(
        rest.len(),
        1,
        "the second run resumes after the first: {run:?}"
    );
    seen.insert(rest[0]["payload"]["total_cents"].as_i64().unwrap());
    assert_eq!(seen, (0..4).collect());
    let run = env
        .feedline(&["consume", &topic, "--group", &group])
        .await
        .ok();
    assert_eq!(run.stdout, "", "nothing left for the group");

    let more: Vec<_> = (10..13).map(|i| order_created(&customer(), i)).collect();
    env.feedline_with(&["produce", &topic], Some(&lines(&more)))
        .await
        .ok();
    let run = env
        .feedline(&["groups", "describe", &group, "--output", "json"])
        .await
        .ok();
    let described = run.json();
    assert_eq!(described["lag"], 3, "{described}");
    let rows: Vec<_> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["topic"] == topic.as_str())
        .collect();
    assert_eq!(rows.len(), 2, "{described}");
    // A partition none of the random keys hashed to has no commit (null): it counts as 0.
    let committed: i64 = rows
        .iter()
        .map(|r| r["committed"].as_i64().unwrap_or(0))
        .sum();
    let end: i64 = rows.iter().map(|r| r["end"].as_i64().unwrap()).sum();
    assert_eq!((committed, end), (4, 7));
    let run = env.feedline(&["groups", "describe", &group]).await.ok();
    assert!(run.stdout.contains("total lag 3"), "{run:?}");

    // A member that stays: describe shows it with its partitions, and Ctrl-C leaves the
    // group after committing what it printed.
    let mut member = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"))
        // --from-beginning: a partition none of the first four keys hashed to has no
        // commit, and --follow alone would start it at its end.
        .args([
            "consume",
            &topic,
            "--group",
            &group,
            "--follow",
            "--from-beginning",
        ])
        .env("FEEDLINE_REGISTRY__URL", &env.registry)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let described = eventually("the member in the group, caught up", PATIENCE, async || {
        let described = env
            .feedline(&["groups", "describe", &group, "--output", "json"])
            .await
            .ok()
            .json();
        if described["lag"] == 0 && described["members"].as_array().unwrap().len() == 1 {
            Ok(described)
        } else {
            Err(described)
        }
    })
    .await;
    let m = &described["members"][0];
    assert_eq!(m["client_id"], "feedline-cli");
    assert!(m["host"].as_str().unwrap().contains("127.0.0.1"), "{m}");
    assert_eq!(m["assignment"][0]["topic"], topic.as_str());
    assert_eq!(m["assignment"][0]["partitions"], json!([0, 1]));
    assert!(
        described["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["member"] == m["id"])
    );
    let run = env.feedline(&["groups", "describe", &group]).await.ok();
    assert!(
        run.stdout.contains("MEMBER") && run.stdout.contains("feedline-cli"),
        "{run:?}"
    );
    std::process::Command::new("kill")
        .args(["-INT", &member.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), member.wait())
        .await
        .expect("Ctrl-C stops --follow")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut printed = String::new();
    tokio::io::AsyncReadExt::read_to_string(member.stdout.as_mut().unwrap(), &mut printed)
        .await
        .unwrap();
    assert_eq!(printed.lines().count(), 3, "{printed}");
    let described = env
        .feedline(&["groups", "describe", &group, "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(described["lag"], 0, "{described}");
    assert_eq!(described["members"], json!([]), "{described}");

    let run = env
        .feedline(&["groups", "list", "--output", "json"])
        .await
        .ok();
    assert!(
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group"] == group.as_str()),
        "{run:?}"
    );
    let run = env
        .feedline(&["groups", "describe", "no-such-group-anywhere"])
        .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: group no-such-group-anywhere does not exist"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_by_field_path_and_headers() {
    let env = start().await;
    let topic = env.order_topic(2).await;
    let (alice, bob) = (customer(), customer());
    let values = vec![
        order_created(&alice, 10),
        order_created(&bob, 20),
        order_created(&alice, 30),
    ];
    env.feedline_with(
        &["produce", &topic, "--header", "tenant=blue"],
        Some(&lines(&values)),
    )
    .await
    .ok();
    let filter = format!("payload.customer_id={alice}");
    let run = env
        .feedline(&["consume", &topic, "--filter", &filter])
        .await
        .ok();
    let mut totals: Vec<i64> = run
        .json_lines()
        .iter()
        .map(|v| v["payload"]["total_cents"].as_i64().unwrap())
        .collect();
    totals.sort();
    assert_eq!(totals, [10, 30]);
    let run = env
        .feedline(&[
            "consume",
            &topic,
            "--filter",
            &filter,
            "--filter",
            "payload.total_cents=30",
        ])
        .await
        .ok();
    assert_eq!(run.json_lines().len(), 1);
    let run = env
        .feedline(&["consume", &topic, "--filter", "tenant=blue"])
        .await
        .ok();
    assert_eq!(run.json_lines().len(), 3);
    let run = env
        .feedline(&["consume", &topic, "--filter", "tenant=red"])
        .await
        .ok();
    assert_eq!(run.stdout, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_are_not_avro_print_as_base64_with_a_warning() {
    let env = start().await;
    let topic = env.order_topic(1).await;
    let producer = env.producer();
    let mut unknown_id = vec![0, 0x7f, 0xff, 0xff, 0xff];
    unknown_id.extend_from_slice(b"\x02");
    for payload in [&b"{\"plain\": \"json\"}"[..], &unknown_id] {
        producer
            .send(feedline::Outgoing::new(&topic, None, payload))
            .await
            .unwrap();
    }
    env.feedline_with(
        &["produce", &topic],
        Some(&format!("{}\n", order_created(&customer(), 1))),
    )
    .await
    .ok();
    let run = env.feedline(&["consume", &topic]).await.ok();
    let got = run.json_lines();
    assert_eq!(got.len(), 3, "{run:?}");
    assert_eq!(got[0], json!({"value_base64": "eyJwbGFpbiI6ICJqc29uIn0="}));
    assert_eq!(got[1], json!({"value_base64": "AH////8C"}));
    assert_eq!(got[2]["payload"]["total_cents"], 1);
    assert!(run.stderr.contains("bad magic byte 0x7b"), "{run:?}");
    assert!(
        run.stderr.contains("schema id 2147483647 is not known"),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 2, "{run:?}");
    let run = env
        .feedline(&["consume", &topic, "--meta", "--offset", "0", "--count", "1"])
        .await
        .ok();
    assert_eq!(
        run.json_lines()[0]["value_base64"],
        "eyJwbGFpbiI6ICJqc29uIn0="
    );
}

/// `sent N failed M to T in S s: R msgs/s, B MB/s`
fn parse_summary(line: &str) -> Option<(u64, u64, f64, f64, f64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [
            "sent",
            sent,
            "failed",
            failed,
            "to",
            _,
            "in",
            secs,
            "s:",
            rate,
            "msgs/s,",
            mb,
            "MB/s",
        ] => Some((
            sent.parse().ok()?,
            failed.parse().ok()?,
            secs.parse().ok()?,
            rate.parse().ok()?,
            mb.parse().ok()?,
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_records_report_their_rate() {
    let env = start().await;
    let topic = env.order_topic(3).await;
    let run = env
        .feedline_with(
            &["produce", &topic, "--count", "100000", "--key", "load"],
            Some(&format!("{}\n", order_created(&customer(), 1))),
        )
        .await
        .ok();
    let summary = run.stdout.lines().next().unwrap();
    let (sent, failed, secs, rate, mb) =
        parse_summary(summary).unwrap_or_else(|| panic!("unparseable summary: {summary}"));
    assert_eq!((sent, failed), (100_000, 0));
    assert!(secs > 0.0 && rate > 0.0 && mb > 0.0, "{summary}");
    eprintln!("{summary}");

    let run = env
        .feedline(&["topics", "describe", &topic, "--output", "json"])
        .await
        .ok();
    let described = run.json();
    let total: i64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["messages"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 100_000);

    let run = env
        .feedline_with(
            &["produce", &topic, "--count", "10", "--output", "json"],
            Some(&format!("{}\n", order_created(&customer(), 1))),
        )
        .await
        .ok();
    let summary = run.json();
    assert_eq!(summary["sent"], 10);
    assert!(summary["msgs_per_sec"].as_f64().unwrap() > 0.0);
}
