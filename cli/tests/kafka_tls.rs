//! The saga over SASL_SSL (SCRAM-SHA-512), every service's Kafka settings loaded from the
//! checked-in `deploy/production.example.toml` the way a deployment loads them: the file
//! named by FEEDLINE_CONFIG, with the site's addresses, paths and password from
//! FEEDLINE_KAFKA__* environment variables. So what the README shows is what runs here.
//!
//! The environment of a running test binary cannot be changed safely (other tests' threads
//! read it), so the test runs itself again as a child process with those variables set.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::system::{Launch, demo_bearer};
use feedline::config::SecurityProtocol;
use feedline::{CancellationToken, Settings};
use feedline_testkit::{PATIENCE, eventually, kafka_tls};
use serde_json::{Value, json};

const TEST: &str = "the_saga_runs_over_sasl_ssl_with_the_production_example";
/// Set in the child process, which runs the saga.
const CHILD: &str = "FEEDLINE_TEST_TLS_SAGA_CHILD";

#[test]
fn the_saga_runs_over_sasl_ssl_with_the_production_example() {
    if std::env::var_os(CHILD).is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(saga());
    }
    let tls = kafka_tls();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/production.example.toml");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST])
        .env(CHILD, "1")
        .env("FEEDLINE_CONFIG", &example)
        .env("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", &tls.sasl_bootstrap)
        .env("FEEDLINE_KAFKA__SSL_CA_LOCATION", tls.ca())
        .env("FEEDLINE_KAFKA__SASL_USERNAME", tls.scram_username())
        .env("FEEDLINE_KAFKA__SASL_PASSWORD", tls.scram_password())
        // The test broker is a single node.
        .env("FEEDLINE_KAFKA__REPLICATION_FACTOR", "1")
        .output()
        .expect("the test binary runs again");
    assert!(
        child.status.success(),
        "the saga over SASL_SSL failed:\n{}\n{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}

/// The child's part: the whole system in-process, its settings from FEEDLINE_CONFIG and the
/// environment, plus only what keeps this run apart from others (topic prefix, databases,
/// ports), then one customer's approved and rejected orders through the gateway.
async fn saga() {
    feedline::telemetry::init();
    let loaded = Settings::load("", None).expect("the production example loads");
    assert_eq!(loaded.kafka.security_protocol, SecurityProtocol::SaslSsl);
    assert_eq!(loaded.kafka.bootstrap_servers, kafka_tls().sasl_bootstrap);

    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let system = Launch::on_own_broker("")
        .await
        .start_from(
            |defaults| Ok(Settings::load(defaults, None)?),
            token.clone(),
        )
        .await;
    let base = format!("http://{}", system.gateway);
    tokio::spawn(system.join(Duration::from_secs(10)));

    let http = reqwest::Client::new();
    let bearer = demo_bearer(&http, &base).await;
    let post = async |path: &str, body: Value| -> Value {
        let response = http
            .post(format!("{base}{path}"))
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{path}: {body}");
        body
    };

    let customer = post(
        "/customers?wait=10s",
        json!({"name": "Grace Hopper", "credit_limit": "100.00"}),
    )
    .await["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = post(
        "/orders?wait=15s",
        json!({"customer_id": customer, "total": "60.00"}),
    )
    .await;
    assert_eq!(first["status"], "APPROVED", "{first}");
    let second = post(
        "/orders?wait=15s",
        json!({"customer_id": customer, "total": "50.00"}),
    )
    .await;
    assert_eq!(
        second["status"], "REJECTED",
        "60 + 50 exceeds the limit of 100: {second}"
    );

    eventually("the view to show the reservation", PATIENCE, async || {
        let view: Value = http
            .get(format!("{base}/customers/{customer}"))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        (view["credit_reserved_cents"] == 6000).then_some(())
    })
    .await;
}

/// `feedline ARGS` with the Kafka settings in `env` (FEEDLINE_KAFKA__*), as a user sets them.
fn feedline(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_feedline"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("feedline runs")
}

#[test]
fn the_cli_talks_mutual_tls_when_the_environment_says_so() {
    let tls = kafka_tls();
    let topic = format!("tls{}-cli", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let env = [
        (
            "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS",
            tls.ssl_bootstrap.clone(),
        ),
        ("FEEDLINE_KAFKA__SECURITY_PROTOCOL", "ssl".into()),
        (
            "FEEDLINE_KAFKA__SSL_CA_LOCATION",
            tls.ca().display().to_string(),
        ),
        (
            "FEEDLINE_KAFKA__SSL_CERTIFICATE_LOCATION",
            tls.client_certificate().display().to_string(),
        ),
        (
            "FEEDLINE_KAFKA__SSL_KEY_LOCATION",
            tls.client_key().display().to_string(),
        ),
        (
            "FEEDLINE_KAFKA__SSL_KEY_PASSWORD",
            tls.client_key_password(),
        ),
    ];
    let created = feedline(&["topics", "create", &topic, "--partitions", "1"], &env);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let listed = feedline(&["topics", "list"], &env);
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && stdout.contains(&topic),
        "{stdout}"
    );
    // Without the key the broker's listener refuses the connection.
    let refused = feedline(&["topics", "list", "--timeout", "5"], &env[..3]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot reach Kafka"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn the_cli_names_the_key_of_an_incomplete_sasl_setting() {
    let out = feedline(
        &["topics", "list"],
        &[
            ("FEEDLINE_KAFKA__SECURITY_PROTOCOL", "sasl_ssl".into()),
            ("FEEDLINE_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kafka.sasl_username"), "{stderr}");
}
