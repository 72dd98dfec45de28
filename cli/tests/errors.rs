//! What a user sees when something is wrong: one `error:` line naming the problem (the
//! input line, the field, the topic, the unreachable service), never a panic, and an exit
//! code a script can trust (1 for errors, 2 for usage).

mod common;

use std::time::{Duration, Instant};

use common::{customer, lines, order_created, start};

#[track_caller]
fn one_clear_error(run: &common::Run, expected: &str) {
    assert_eq!(run.code, 1, "{run:?}");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {run:?}");
    assert!(errors[0].contains(expected), "{expected:?} in {run:?}");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_schema_mismatches_name_the_line_and_the_field() {
    let env = start().await;
    let topic = env.order_topic(1).await;
    let good = order_created(&customer(), 1);
    let mut wrong_type = order_created(&customer(), 2);
    wrong_type["payload"]["total_cents"] = "abc".into();

    let input = format!("{good}\n{good}\n{{\"event_id\": oops\n{good}\n");
    let run = env.feedline_with(&["produce", &topic], Some(&input)).await;
    one_clear_error(&run, "error: line 3: invalid JSON");
    assert!(run.stdout.starts_with("sent 2 failed 1"), "{run:?}");
    assert!(run.stdout.contains("stopped at line 3"), "{run:?}");

    let input = format!("{good}\n\n{wrong_type}\n{good}\n");
    let run = env.feedline_with(&["produce", &topic], Some(&input)).await;
    one_clear_error(
        &run,
        r#"error: line 3: payload.total_cents: expected long, found "abc""#,
    );
    assert!(run.stdout.starts_with("sent 1 failed 1"), "{run:?}");

    // --on-error skip sends the rest and says exactly what was not sent; the exit code
    // still tells a script that something was left out.
    let run = env
        .feedline_with(
            &["produce", &topic, "--on-error", "skip", "--output", "json"],
            Some(&input),
        )
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    let summary = run.json();
    assert_eq!(summary["sent"], 2);
    assert_eq!(summary["not_sent"][0]["at"], "line 3");
    assert!(
        run.stderr.contains("line 3: payload.total_cents"),
        "{run:?}"
    );

    let run = env.feedline(&["consume", &topic]).await.ok();
    assert_eq!(run.json_lines().len(), 2 + 1 + 2);

    // A missing key field is the line's fault too.
    let run = env
        .feedline_with(
            &["produce", &topic, "--key-field", "payload.nope"],
            Some(&lines(&[good])),
        )
        .await;
    one_clear_error(&run, "line 1: key field payload.nope is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topics_and_subjects_are_named() {
    let env = start().await;
    let missing = format!("{}missing", env.prefix);
    let input = format!("{}\n", order_created(&customer(), 1));
    let run = env
        .feedline_with(&["produce", &missing], Some(&input))
        .await;
    one_clear_error(&run, &format!("topic {missing} does not exist"));
    for args in [
        vec!["consume", &missing],
        vec!["topics", "describe", &missing],
        vec!["dlq", "inspect", &missing],
    ] {
        let run = env.feedline(&args).await;
        one_clear_error(&run, &missing);
        assert!(run.stderr.contains("does not exist"), "{run:?}");
    }
    // A topic without a registered schema needs --schema.
    let bare = env.topic("bare", 1).await;
    let run = env.feedline_with(&["produce", &bare], Some(&input)).await;
    one_clear_error(
        &run,
        &format!("no schema is registered under {bare}-value; pass --schema"),
    );
    let run = env
        .feedline_with(
            &["produce", &bare, "--schema", "/nonexistent.avsc"],
            Some(&input),
        )
        .await;
    one_clear_error(&run, "cannot read /nonexistent.avsc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_within_the_timeout() {
    let env = start().await;
    let input = format!("{}\n", order_created(&customer(), 1));
    for args in [
        vec!["produce", "t"],
        vec!["consume", "t"],
        vec!["topics", "list"],
        vec!["topics", "create", "t"],
        vec!["groups", "list"],
        vec!["groups", "describe", "g"],
        vec!["dlq", "redrive", "t"],
    ] {
        let mut args = args.clone();
        args.extend(["--bootstrap-servers", "127.0.0.1:1", "--timeout", "2"]);
        let started = Instant::now();
        let run = env.feedline_with(&args, Some(&input)).await;
        one_clear_error(&run, "error: cannot reach Kafka at 127.0.0.1:1 within 2 s");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_one_clear_error() {
    let env = start().await;
    let topic = env.order_topic(1).await;
    let input = format!("{}\n", order_created(&customer(), 1));
    env.feedline_with(&["produce", &topic], Some(&input))
        .await
        .ok();
    for args in [vec!["produce", &topic], vec!["consume", &topic]] {
        let mut args = args.clone();
        args.extend(["--registry-url", "http://127.0.0.1:1"]);
        // The flag overrides the harness's FEEDLINE_REGISTRY__URL.
        let run = env.feedline_with(&args, Some(&input)).await;
        one_clear_error(&run, "schema registry unreachable at http://127.0.0.1:1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let env = start().await;
    for args in [
        vec!["produce"],
        vec!["consume", "t", "--follow", "--until-end"],
        vec!["consume", "t", "--offset", "x"],
        vec!["consume", "t", "--from-time", "yesterday"],
        vec!["produce", "t", "--rate", "0"],
        vec!["produce", "t", "--header", "novalue"],
        vec!["produce", "t", "--key", "a", "--key-field", "b"],
        vec!["frobnicate"],
        vec!["consume", "t", "--timeout", "-1"],
    ] {
        let run = env.feedline(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
    for args in [
        vec!["--help"],
        vec!["produce", "--help"],
        vec!["consume", "--help"],
        vec!["dlq", "redrive", "--help"],
    ] {
        let run = env.feedline(&args).await.ok();
        assert!(
            run.stdout.contains("Example"),
            "{args:?} has examples: {run:?}"
        );
    }
}
