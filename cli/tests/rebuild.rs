//! `feedline view rebuild` with every part real: the system in-process (order-view's first
//! generation among it), orders flowing and reads going through the gateway the whole time,
//! the new generation a real process the command starts. The rebuild ends with the new
//! view equal to the orders database, and no read failing while reads move to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use feedline::{CancellationToken, Settings};
use feedline_launcher::System;
use feedline_testkit::{PATIENCE, eventually, fresh_database, kafka_bootstrap, service_binary};
use serde_json::{Value, json};
use sqlx::PgPool;

/// What every part of this test runs with: a short heartbeat, lag reported every second.
const TUNING: [(&str, &str); 3] = [
    ("FEEDLINE_DISCOVERY__HEARTBEAT_MS", "500"),
    ("FEEDLINE_DISCOVERY__CAUGHT_UP_LAG", "50"),
    ("FEEDLINE_KAFKA__STATISTICS_INTERVAL_MS", "1000"),
];

struct Client {
    base: String,
    http: reqwest::Client,
    bearer: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = feedline_gateway::client::send_command(
            self.http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.bearer)
                .json(&body),
        )
        .await
        .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.bearer)
            .send()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_load_catches_up_and_takes_reads_without_a_failed_read() {
    feedline::telemetry::init();
    let orders_url = fresh_database().await;
    let customers_url = fresh_database().await;
    let orders_db = orders_url.clone();
    let dir = std::env::temp_dir();
    let old_view = format!(
        "sqlite:{}",
        dir.join(format!("rebuild-old-{}.db", uuid::Uuid::new_v4().simple()))
            .display()
    );
    let new_view = dir.join(format!("rebuild-new-{}.db", uuid::Uuid::new_v4().simple()));
    let prefix = format!("rb{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // TUNING, for the parts in this process.
    let tuning = "[discovery]\nheartbeat_ms = 500\ncaught_up_lag = 50\n[kafka]\nstatistics_interval_ms = 1000\n";
    let (kafka, load_prefix) = (kafka_bootstrap(), prefix.clone());
    let load = move |defaults: &str| -> anyhow::Result<Settings> {
        let settings = Settings::from_toml(defaults)?;
        let db = match settings.service_name.as_str() {
            "orders" => orders_url.clone(),
            "customers" => customers_url.clone(),
            "order-view" => old_view.clone(),
            _ => "postgres://unused/unused".to_owned(),
        };
        Ok(settings
            .with_overrides(&format!(
                "[kafka]\nbootstrap_servers = \"{kafka}\"\ntopic_prefix = \"{load_prefix}\"\ndefault_partitions = 3\n\
                 [consumer]\nsession_timeout_ms = 6000\ndrain_timeout_ms = 3000\n\
                 [http]\nport = 0\n[database]\nurl = \"{db}\"\nmax_connections = 5\n"
            ))?
            .with_overrides(tuning)?)
    };
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let system = System::start(load, token.clone())
        .await
        .expect("system starts");
    system
        .ready(Duration::from_secs(60))
        .await
        .expect("system ready");
    let (registry, gateway) = (system.registry, system.gateway);
    tokio::spawn(system.join(Duration::from_secs(10)));

    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("http://{gateway}/auth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = Arc::new(Client {
        base: format!("http://{gateway}"),
        http,
        bearer: answer["access_token"].as_str().unwrap().to_owned(),
    });

    // History for the new generation to replay: customers and settled orders.
    let mut customers = Vec::new();
    for i in 0..4 {
        let (status, body) = client
            .post(
                "/customers?wait=15s",
                json!({"name": format!("c{i}"), "credit_limit": "100000.00"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        customers.push(body["customer_id"].as_str().unwrap().to_owned());
    }
    let mut settled = Vec::new();
    for i in 0..40 {
        let customer = &customers[i % customers.len()];
        let (status, body) = client
            .post(
                "/orders?wait=15s",
                json!({"customer_id": customer, "total": "10.00"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        settled.push(body["order_id"].as_str().unwrap().to_owned());
    }

    // Orders keep flowing, and reads of what exists keep going, through the gateway.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop, customers) = (client.clone(), stop.clone(), customers.clone());
        tokio::spawn(async move {
            let mut placed = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let customer = &customers[placed % customers.len()];
                let (status, body) = client
                    .post("/orders", json!({"customer_id": customer, "total": "1.00"}))
                    .await;
                assert!(status == 200 || status == 202, "{status} {body}");
                placed += 1;
            }
            placed
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|n| {
            let (client, stop, reads) = (client.clone(), stop.clone(), reads.clone());
            let paths: Vec<String> = settled
                .iter()
                .map(|id| format!("/orders/{id}"))
                .chain(customers.iter().map(|id| format!("/customers/{id}")))
                .collect();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = n;
                while !stop.load(Ordering::Relaxed) {
                    let path = &paths[i % paths.len()];
                    match client.get(path).await {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => failures.push(format!("{path}: {}", r.status())),
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                failures
            })
        })
        .collect();

    let mut rebuild = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"));
    rebuild
        .args(["view", "rebuild", "--within", "120", "--database"])
        .arg(format!("sqlite:{}", new_view.display()))
        .arg("--binary")
        .arg(service_binary("feedline-order-view"))
        .env("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap())
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &prefix)
        .env("FEEDLINE_REGISTRY__URL", format!("http://{registry}"))
        .envs(TUNING)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(150), rebuild.output())
        .await
        .expect("the rebuild ended in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("has caught up and serves reads"),
        "{stdout}"
    );
    let pid: i32 = stdout
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    let port: u16 = stdout
        .split("port ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {stdout}"));
    let _new_generation = Stop(pid);

    // Reads go on beside the switch for a while, then the load stops.
    let after = reads.load(Ordering::Relaxed) + 200;
    eventually("reads after the switch", PATIENCE, async || {
        (reads.load(Ordering::Relaxed) >= after).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let placed = writer.await.unwrap();
    assert!(placed > 0, "orders kept flowing during the rebuild");
    for reader in readers {
        let failures = reader.await.unwrap();
        assert!(failures.is_empty(), "failed reads: {failures:?}");
    }

    // The new generation holds what the orders database holds, every order in its state.
    let view = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let db = PgPool::connect(&orders_db).await.unwrap();
    eventually(
        "the new view equal to the orders database",
        PATIENCE,
        async || {
            let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders")
                .fetch_all(&db)
                .await
                .ok()?;
            for (id, status) in &rows {
                let body: Value = view
                    .get(format!("{base}/orders/{id}"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let seen = feedline_gateway::orderview::order_status(&body)?;
                if &seen != status {
                    return None;
                }
            }
            Some(rows.len())
        },
    )
    .await;
}

/// Stops the new generation (SIGTERM) when the test ends, however it ends.
struct Stop(i32);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .status();
    }
}
