//! Failover against real processes: two order-view replicas (the real binary, each its own
//! SQLite file, consuming the same topics), the gateway in-process, clients reading through
//! it without pause, and one replica killed with SIGKILL in the middle. No read may fail: the
//! gateway retries a failed read once on the other replica and ejects (or, with discovery,
//! drops) the dead one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use feedline_schemas::CUSTOMER_EVENTS;
use feedline_schemas::types::{CustomerEvent, CustomerEventPayload, CustomerRegistered};
use feedline_testkit::{PATIENCE, TestEnv, eventually, kafka_bootstrap, service_binary};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{Options, TestApp};

/// Every part's heartbeat: short, so a killed replica is counted down quickly.
const HEARTBEAT_MS: u64 = 500;
const CUSTOMERS: usize = 20;
const CLIENTS: usize = 8;
/// Reads after the kill before the load stops: long enough to cover the kill, the retries
/// and the ejection (or the Directory's verdict), and well past them.
const READS_AFTER_KILL: usize = 1500;

/// An order-view process, killed when dropped.
struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_replica(env: &TestEnv, dir: &Path, n: usize) -> Replica {
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("ov-{n}.log"))).expect("log file");
    let child = Command::new(service_binary("feedline-order-view"))
        .env_remove("FEEDLINE_CONFIG")
        .env("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap())
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &env.prefix)
        .env(
            "FEEDLINE_KAFKA__DEFAULT_PARTITIONS",
            env.partitions.to_string(),
        )
        .env("FEEDLINE_REGISTRY__URL", &env.registry_url)
        .env("FEEDLINE_HTTP__HOST", "127.0.0.1")
        .env("FEEDLINE_HTTP__PORT", port.to_string())
        .env(
            "FEEDLINE_DATABASE__URL",
            format!("sqlite:{}", dir.join(format!("ov-{n}.db")).display()),
        )
        .env("FEEDLINE_DISCOVERY__HEARTBEAT_MS", HEARTBEAT_MS.to_string())
        .env("FEEDLINE_CONSUMER__SESSION_TIMEOUT_MS", "6000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("order-view started");
    Replica {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn registered(customer: &Uuid) -> CustomerEvent {
    CustomerEvent::new(
        "test",
        Uuid::new_v4().to_string(),
        None,
        CustomerEventPayload::CustomerRegistered(CustomerRegistered {
            customer_id: customer.to_string(),
            name: format!("customer {customer}"),
            credit_limit_cents: 100_000,
            tenant: None,
        }),
    )
}

/// The world of one failover test: customers on the topics, both replicas serving them.
struct World {
    env: TestEnv,
    replicas: Vec<Replica>,
    customers: Vec<Uuid>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let env = TestEnv::start(3).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let replicas: Vec<Replica> = (0..2).map(|n| start_replica(&env, dir.path(), n)).collect();
    let customers: Vec<Uuid> = (0..CUSTOMERS).map(|_| Uuid::new_v4()).collect();
    let events: Vec<(Uuid, CustomerEvent)> =
        customers.iter().map(|id| (*id, registered(id))).collect();
    env.send_all(CUSTOMER_EVENTS, &events).await;
    let http = reqwest::Client::new();
    for replica in &replicas {
        for customer in &customers {
            let url = format!("{}/customers/{customer}", replica.url);
            eventually(&format!("{url} answered"), PATIENCE, async || {
                let response = http.get(&url).send().await.ok()?;
                (response.status() == StatusCode::OK).then_some(())
            })
            .await;
        }
    }
    World {
        env,
        replicas,
        customers,
        _dir: dir,
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Load {
    reads: AtomicUsize,
    failures: Mutex<Vec<String>>,
}

/// `CLIENTS` clients reading customers through the gateway until `stop`.
fn start_load(
    app: &TestApp,
    token: &str,
    customers: &[Uuid],
    stop: &Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let tasks = (0..CLIENTS)
        .map(|client| {
            let (load, stop) = (load.clone(), stop.clone());
            let http = app.http.clone();
            let token = token.to_owned();
            let urls: Vec<String> = customers
                .iter()
                .map(|id| app.at(&format!("/customers/{id}")))
                .collect();
            tokio::spawn(async move {
                let mut n = client;
                while !stop.load(Ordering::SeqCst) {
                    let url = &urls[n % urls.len()];
                    n += 1;
                    let outcome = match http.get(url).bearer_auth(&token).send().await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            r.text().await.err().map(|e| e.to_string())
                        }
                        Ok(r) => Some(format!(
                            "{}: {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(failure) = outcome {
                        load.failures.lock().unwrap().push(failure);
                    }
                    load.reads.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    (load, tasks)
}

async fn wait_for_reads(load: &Load, at_least: usize) {
    eventually(&format!("{at_least} reads"), PATIENCE, async || {
        (load.reads.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
}

/// The gateway's `/fleet`.
async fn fleet(app: &TestApp, admin: &str) -> Value {
    let answer = app
        .send(app.http.get(app.at("/fleet")).bearer_auth(admin))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
    answer.body
}

fn balanced_urls(fleet: &Value) -> Vec<String> {
    let mut urls: Vec<String> = fleet["order_view"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["url"].as_str().map(str::to_owned))
        .collect();
    urls.sort();
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_replica_of_a_static_list_fails_no_read() {
    let mut world = world().await;
    let urls = world
        .replicas
        .iter()
        .map(|r| r.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let app = TestApp::spawn_with(Options {
        join: Some((world.env.prefix.clone(), world.env.registry_url.clone())),
        order_view_url: Some(urls),
        gateway_toml: "discover_order_view = false".into(),
        extra_toml: format!("[discovery]\nheartbeat_ms = {HEARTBEAT_MS}"),
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = start_load(&app, &token, &world.customers, &stop);
    wait_for_reads(&load, 300).await;

    let mut killed = world.replicas.remove(0);
    killed.child.kill().expect("SIGKILL");
    killed.child.wait().expect("reaped");
    let at_kill = load.reads.load(Ordering::SeqCst);
    eventually("the dead replica ejected", PATIENCE, async || {
        (app.metric("feedline_gateway_upstream_ejected").await == 1.0).then_some(())
    })
    .await;
    wait_for_reads(&load, at_kill + READS_AFTER_KILL).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }

    let reads = load.reads.load(Ordering::SeqCst);
    let failures = load.failures.lock().unwrap().clone();
    let retries = app.metric("feedline_gateway_upstream_retries_total").await;
    let failed_attempts = app
        .metric("feedline_gateway_upstream_attempt_failures_total")
        .await;
    println!(
        "static list: {reads} reads ({} after the kill), {} failed, {retries} retries, \
         {failed_attempts} failed attempts",
        reads - at_kill,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(retries >= 1.0, "the dead replica's failures were retried");
    assert_eq!(
        app.metric("feedline_gateway_upstream_ejections_total")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_discovered_replica_fails_no_read_and_the_directory_counts_it_down() {
    let mut world = world().await;
    let app = TestApp::spawn_with(Options {
        join: Some((world.env.prefix.clone(), world.env.registry_url.clone())),
        // Unreachable: every read must go to the replicas the Directory found.
        order_view_url: None,
        extra_toml: format!("[discovery]\nheartbeat_ms = {HEARTBEAT_MS}"),
        ..Options::default()
    })
    .await;
    let admin = app.token(Some("admin")).await;
    let mut expected: Vec<String> = world.replicas.iter().map(|r| r.url.clone()).collect();
    expected.sort();
    eventually("both replicas discovered", PATIENCE, async || {
        (balanced_urls(&fleet(&app, &admin).await) == expected).then_some(())
    })
    .await;

    let token = app.token(None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (load, tasks) = start_load(&app, &token, &world.customers, &stop);
    wait_for_reads(&load, 300).await;

    let mut killed = world.replicas.remove(0);
    killed.child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    killed.child.wait().expect("reaped");
    let at_kill = load.reads.load(Ordering::SeqCst);
    let down_after = eventually("the killed replica counted down", PATIENCE, async || {
        let fleet = fleet(&app, &admin).await;
        let instance = fleet["instances"]
            .as_array()?
            .iter()
            .find(|i| i["url"] == killed.url.as_str())?
            .clone();
        (instance["up"] == false).then(|| killed_at.elapsed())
    })
    .await;
    eventually(
        "the killed replica dropped from the balancing",
        PATIENCE,
        async || {
            (balanced_urls(&fleet(&app, &admin).await) == [world.replicas[0].url.clone()])
                .then_some(())
        },
    )
    .await;
    wait_for_reads(&load, at_kill + READS_AFTER_KILL).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }

    let reads = load.reads.load(Ordering::SeqCst);
    let failures = load.failures.lock().unwrap().clone();
    let retries = app.metric("feedline_gateway_upstream_retries_total").await;
    println!(
        "discovery: {reads} reads ({} after the kill), {} failed, {retries} retries, \
         counted down after {} ms",
        reads - at_kill,
        failures.len(),
        down_after.as_millis()
    );
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(retries >= 1.0, "the dead replica's failures were retried");
    assert!(
        down_after <= Duration::from_millis(3 * HEARTBEAT_MS),
        "counted down after {down_after:?}, more than three heartbeats"
    );
}
