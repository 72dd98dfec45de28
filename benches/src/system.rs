//! `e2e` and `saga`: the whole of feedline (the registry and every service, a random topic
//! prefix, fresh PostgreSQL databases and a fresh SQLite file), driven through the gateway's
//! HTTP API. The services run either in this process (`feedline_cli::system::System`, on
//! port 0) or each as its own child process (`crate::processes`), which is what per-service
//! memory needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::{CancellationToken, Settings};
use feedline_gateway::client::send_command;
use feedline_launcher::System;
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::Load;
use crate::common::{
    self, LATENCY_COLUMNS, Machine, Meter, Percentiles, RunResult, Series, Table, Target,
};
use crate::processes::{Mode, Processes, RunConfig};

/// Starts an in-process schema registry on port 0 with `settings`' broker and prefix.
pub async fn start_registry(
    settings: &Settings,
    token: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let registry = Settings::from_toml(feedline_registry::DEFAULTS)?.with_overrides(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{}\"\n[http]\nport = 0\n[registry_server]\ndev_mode = true\n",
        settings.kafka.bootstrap_servers, settings.kafka.topic_prefix
    ))?;
    let running = feedline_registry::spawn(registry, token)
        .await
        .context("failed to start the schema registry")?;
    let addr = running.addr;
    tokio::spawn(running.handle);
    Ok(addr)
}

/// The running system and a client of its gateway.
struct Running {
    base: String,
    http: reqwest::Client,
    bearer: String,
    orders_db: PgPool,
    admin: PgPool,
    databases: Vec<String>,
    view_file: String,
    /// The broker and the run's topic prefix, to delete its topics at the end.
    kafka: feedline::config::KafkaSettings,
    prefix: String,
    services: Services,
    /// 503 `overloaded` answers (the gateway's back-pressure), each retried after its
    /// `Retry-After`.
    refused: AtomicU64,
}

/// The services of a run, wherever they run.
#[derive(Debug)]
enum Services {
    InProcess {
        token: CancellationToken,
        done: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    Processes(Processes),
}

async fn start(settings: &Settings, load: &Load) -> anyhow::Result<Running> {
    let pg = load.database_url.clone();
    let admin = PgPool::connect(&pg)
        .await
        .context("failed to connect to PostgreSQL")?;
    let base_url = pg[..pg.rfind('/').context("database url without a name")?].to_owned();
    let mut databases = Vec::new();
    for _ in 0..2 {
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        databases.push(name);
    }
    let (orders_url, customers_url) = (
        format!("{base_url}/{}", databases[0]),
        format!("{base_url}/{}", databases[1]),
    );
    let view_file = std::env::temp_dir()
        .join(format!("bench-view-{}.db", uuid::Uuid::new_v4().simple()))
        .display()
        .to_string();
    let view_url = format!("sqlite:{view_file}");
    let prefix = format!("bench{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let kafka = settings.kafka.bootstrap_servers.clone();
    let extra = load.service_config.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let orders_db = PgPool::connect(&orders_url).await?;
    let started = Instant::now();
    let launched = match load.services {
        Mode::Processes => {
            let config = RunConfig {
                bootstrap_servers: kafka,
                topic_prefix: prefix.clone(),
                orders_db: orders_url,
                customers_db: customers_url,
                view_db: view_url,
                extra,
            };
            Processes::start(&config, &http)
                .await
                .context("the services did not start as processes")
                .map(|p| (p.gateway, Services::Processes(p)))
        }
        Mode::InProcess => {
            let token = CancellationToken::new();
            let urls = (orders_url, customers_url, view_url);
            in_process(settings, &pg, urls, &prefix, &extra, token.clone())
                .await
                .map(|system| {
                    let gateway = system.gateway;
                    let done = tokio::spawn(system.join(Duration::from_secs(10)));
                    (gateway, Services::InProcess { token, done })
                })
        }
    };
    let (gateway, services) = match launched {
        Ok(launched) => launched,
        Err(e) => {
            // A child that did start was killed when `Processes` was dropped.
            orders_db.close().await;
            drop_storage(&admin, &databases, &view_file).await;
            common::drop_topics(&settings.kafka, &prefix).await;
            return Err(e);
        }
    };
    eprintln!(
        "system started ({:?}) in {:.1} s, gateway on {gateway}",
        load.services,
        started.elapsed().as_secs_f64(),
    );
    let mut run = Running {
        base: format!("http://{gateway}"),
        http,
        bearer: String::new(),
        orders_db,
        admin,
        databases,
        view_file,
        kafka: settings.kafka.clone(),
        prefix,
        services,
        refused: AtomicU64::new(0),
    };
    match run.token().await {
        Ok(bearer) => run.bearer = bearer,
        Err(e) => {
            run.stop().await;
            return Err(e);
        }
    }
    Ok(run)
}

/// Drops the run's PostgreSQL databases and its SQLite file.
async fn drop_storage(admin: &PgPool, databases: &[String], view_file: &str) {
    for db in databases {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(admin)
            .await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{view_file}{suffix}"));
    }
}

/// Every service in this process, each with its database, the run's prefix and `extra`
/// layered over its defaults.
async fn in_process(
    settings: &Settings,
    pg: &str,
    (orders_url, customers_url, view_url): (String, String, String),
    prefix: &str,
    extra: &str,
    token: CancellationToken,
) -> anyhow::Result<System> {
    let (kafka, pg, prefix, extra) = (
        settings.kafka.bootstrap_servers.clone(),
        pg.to_owned(),
        prefix.to_owned(),
        extra.to_owned(),
    );
    let load_settings = move |defaults: &str| -> anyhow::Result<Settings> {
        let s = Settings::from_toml(defaults)?;
        let db = match s.service_name.as_str() {
            "orders" => orders_url.clone(),
            "customers" => customers_url.clone(),
            "order-view" => view_url.clone(),
            _ => pg.clone(),
        };
        Ok(s.with_overrides(&format!(
            "[kafka]\nbootstrap_servers = \"{kafka}\"\ntopic_prefix = \"{prefix}\"\n\
             [http]\nport = 0\n[database]\nurl = \"{db}\"\n"
        ))?
        .with_overrides(&extra)?)
    };
    System::start(load_settings, token)
        .await
        .context("the system did not start")
}

impl Running {
    /// A bearer token for the demo client.
    async fn token(&self) -> anyhow::Result<String> {
        let answer: Value = self
            .http
            .post(format!("{}/auth/token", self.base))
            .json(&json!({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["access_token"]
            .as_str()
            .context("no access token")?
            .to_owned())
    }

    /// Registers `n` customers with a limit no bench order reaches; waits until the view
    /// knows each.
    async fn customers(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let ids = futures::stream::iter(0..n)
            .map(|i| async move {
                let response = send_command(
                    self.http
                        .post(format!("{}/customers?wait=20s", self.base))
                        .bearer_auth(&self.bearer)
                        .json(&json!({"name": format!("bench customer {i}"), "credit_limit": "1000000000.00"})),
                )
                .await?;
                anyhow::ensure!(response.status() == 200, "customer registration answered {}", response.status());
                let body: Value = response.json().await?;
                Ok(body["customer_id"].as_str().context("no customer_id")?.to_owned())
            })
            .buffer_unordered(16)
            .collect::<Vec<anyhow::Result<String>>>()
            .await;
        ids.into_iter().collect()
    }

    /// Places one order; returns its id once the gateway answered 202. A `503` with
    /// `Retry-After` (back-pressure) is waited out and retried, as a well-behaved client
    /// does: the accept latency of that order includes the wait. Each attempt sends a new
    /// `Idempotency-Key` (a 503 accepted nothing); a timed-out attempt is sent again with
    /// its key by `send_command`.
    async fn place(&self, customer: &str) -> anyhow::Result<String> {
        let response = loop {
            let response = send_command(
                self.http
                    .post(format!("{}/orders", self.base))
                    .bearer_auth(&self.bearer)
                    .json(&json!({"customer_id": customer, "total": "1.00"})),
            )
            .await?;
            if response.status() != 503 {
                break response;
            }
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .context("503 without Retry-After")?;
            self.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        };
        anyhow::ensure!(
            response.status() == 202,
            "POST /orders answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        Ok(body["order_id"].as_str().context("no order_id")?.to_owned())
    }

    /// Orders in a final state, counted in the order service's own database.
    async fn settled(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
                .fetch_one(&self.orders_db)
                .await?,
        )
    }

    /// The child processes, when the services run as processes: name and pid.
    fn pids(&self) -> Vec<(&'static str, u32)> {
        match &self.services {
            Services::Processes(p) => p.services.iter().map(|s| (s.name, s.pid)).collect(),
            Services::InProcess { .. } => Vec::new(),
        }
    }

    /// Stops the services and drops the databases; returns what went wrong with a child
    /// process during the run (a service that exited by itself).
    async fn stop(self) -> Vec<String> {
        let died = match self.services {
            Services::InProcess { token, done } => {
                token.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(15), done).await;
                Vec::new()
            }
            Services::Processes(processes) => processes.stop().await,
        };
        self.orders_db.close().await;
        drop_storage(&self.admin, &self.databases, &self.view_file).await;
        common::drop_topics(&self.kafka, &self.prefix).await;
        died
    }
}

/// When each order first appeared on the feed, and when in a final state.
#[derive(Debug, Default)]
struct Seen {
    first: HashMap<String, Instant>,
    last: HashMap<String, Instant>,
    /// Times the feed dropped this client (too far behind) and it resumed from its last id.
    resumed: u64,
}

impl Seen {
    /// Records an `order` event's data (the order's row) that arrived at `now`.
    fn order(&mut self, data: &str, now: Instant, finals: &AtomicU64) {
        #[derive(serde::Deserialize)]
        struct OrderRow<'a> {
            id: &'a str,
            status: &'a str,
        }
        let Ok(row) = serde_json::from_str::<OrderRow>(data) else {
            return;
        };
        self.first.entry(row.id.to_owned()).or_insert(now);
        if row.status != "PENDING" && !self.last.contains_key(row.id) {
            self.last.insert(row.id.to_owned(), now);
            finals.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens `GET /feed`, resuming after `last_id` when there is one.
async fn open_feed(run: &Running, last_id: Option<&str>) -> Result<reqwest::Response, String> {
    let mut request = run
        .http
        .get(format!("{}/feed", run.base))
        .bearer_auth(&run.bearer);
    if let Some(id) = last_id {
        request = request.header("Last-Event-ID", id);
    }
    match request.send().await {
        Ok(response) if response.status() == 200 => Ok(response),
        Ok(response) => Err(format!("GET /feed answered {}", response.status())),
        Err(e) => Err(format!("GET /feed failed: {e}")),
    }
}

/// Reads the whole live feed through the gateway, timing each order's changes on arrival.
/// When the feed drops the client (it fell behind), the client reconnects with
/// `Last-Event-ID` as any SSE client does, and gets what it missed; the task ends only
/// when a reconnect fails.
async fn watch_feed(
    run: &Arc<Running>,
    finals: Arc<AtomicU64>,
) -> anyhow::Result<(Arc<Mutex<Seen>>, tokio::task::JoinHandle<String>)> {
    let first = open_feed(run, None).await.map_err(anyhow::Error::msg)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    let run = run.clone();
    let reader = tokio::spawn(async move {
        let mut response = first;
        let mut last_id: Option<String> = None;
        loop {
            let mut stream = response.bytes_stream();
            let mut buffer: Vec<u8> = Vec::new();
            let (mut is_order, mut data) = (false, String::new());
            while let Some(Ok(chunk)) = stream.next().await {
                let now = Instant::now();
                buffer.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(end) = buffer[start..].iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&buffer[start..start + end])
                        .trim_end_matches('\r')
                        .to_owned();
                    start += end + 1;
                    if line.is_empty() {
                        if is_order {
                            shared.lock().expect("poisoned").order(&data, now, &finals);
                        }
                        is_order = false;
                        data.clear();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        is_order = v.trim() == "order";
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        last_id = Some(v.trim().to_owned());
                    }
                }
                buffer.drain(..start);
            }
            shared.lock().expect("poisoned").resumed += 1;
            response = match open_feed(&run, last_id.as_deref()).await {
                Ok(response) => response,
                Err(e) => return format!("the feed ended and could not be resumed: {e}"),
            };
        }
    });
    Ok((seen, reader))
}

/// Stops the feed client; what to note about it, if anything.
async fn stop_feed(reader: tokio::task::JoinHandle<String>, seen: &Mutex<Seen>) -> Option<String> {
    let ended = if reader.is_finished() {
        reader.await.ok()
    } else {
        reader.abort();
        // Awaited so that its handle on the running system is gone before the system stops.
        let _ = reader.await;
        None
    };
    match (ended, seen.lock().expect("poisoned").resumed) {
        (Some(why), _) => Some(format!(
            "The feed client stopped early ({why}): the feed latencies above cover only what arrived before that."
        )),
        (None, 0) => None,
        (None, n) => Some(format!(
            "order-view dropped the bench's feed client {n} time(s), more than `feed_client_buffer` changes behind (it shares the 2 cores with the system); it resumed each time with `Last-Event-ID`, so the orders of those moments show late on the feed."
        )),
    }
}

/// What one load phase against the gateway measured.
#[derive(Debug)]
struct Phase {
    accepted: u64,
    seconds: f64,
    /// POST → 202, from the scheduled time in the open loop.
    accept: Percentiles,
    /// 202 → the order's first change (PENDING) on the feed.
    visible: Percentiles,
    /// 202 → the order's final state (APPROVED/REJECTED) on the feed.
    settled: Percentiles,
    missing: usize,
    errors: u64,
    accept_series: Vec<f64>,
}

/// Accept time by order id, and the POST → 202 latencies.
type Accepted = (HashMap<String, Instant>, Histogram<u64>);

/// How a load phase offers its orders.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Open loop at this many orders per second; `None` is a closed loop of `clients`.
    rate: Option<f64>,
    clients: usize,
    /// Seconds of warm-up (not measured), then seconds measured.
    warm: f64,
    seconds: f64,
}

/// Drives `POST /orders` for `seconds` after `warm` seconds of warm-up: at `rate` per second
/// (open loop) or from `clients` concurrent clients (closed loop); then waits for the feed.
async fn drive(
    run: &Arc<Running>,
    customers: &Arc<Vec<String>>,
    seen: &Arc<Mutex<Seen>>,
    label: &str,
    shape: Shape,
) -> anyhow::Result<Phase> {
    let Shape {
        rate,
        clients,
        warm,
        seconds,
    } = shape;
    let accepted: Arc<Mutex<Accepted>> =
        Arc::new(Mutex::new((HashMap::new(), common::histogram())));
    let errors = Arc::new(AtomicU64::new(0));
    let meter = Arc::new(Meter::start(label));
    let t0 = Instant::now();
    let measure_from = t0 + Duration::from_secs_f64(warm);
    let end = measure_from + Duration::from_secs_f64(seconds);
    let one = {
        let (run, customers, accepted, errors, meter) = (
            run.clone(),
            customers.clone(),
            accepted.clone(),
            errors.clone(),
            meter.clone(),
        );
        move |i: usize, at: Instant| {
            let (run, customers, accepted, errors, meter) = (
                run.clone(),
                customers.clone(),
                accepted.clone(),
                errors.clone(),
                meter.clone(),
            );
            async move {
                match run.place(&customers[i % customers.len()]).await {
                    Ok(id) => {
                        let now = Instant::now();
                        if at >= measure_from {
                            meter.add(1);
                            let mut a = accepted.lock().expect("poisoned");
                            common::record(&mut a.1, now - at);
                            a.0.insert(id, now);
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("  order failed: {e:#}");
                        }
                    }
                }
            }
        }
    };
    match rate {
        Some(rate) => {
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0usize;
            loop {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                tasks.spawn(one(i, at));
                i += 1;
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
        None => {
            let mut tasks = tokio::task::JoinSet::new();
            for c in 0..clients {
                let one = one.clone();
                tasks.spawn(async move {
                    let mut i = c;
                    loop {
                        let at = Instant::now();
                        if at >= end {
                            return;
                        }
                        one(i, at).await;
                        i += clients;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let accept_series = meter.finish();
    let seconds = (Instant::now().min(end) - measure_from)
        .as_secs_f64()
        .max(1e-3);
    // Let the saga finish for what was accepted.
    let (ids, accept_hist) = {
        let a = accepted.lock().expect("poisoned");
        (a.0.clone(), a.1.clone())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = {
            let s = seen.lock().expect("poisoned");
            ids.keys().filter(|id| !s.last.contains_key(*id)).count()
        };
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut visible, mut settled) = (common::histogram(), common::histogram());
    let mut missing = 0;
    {
        let s = seen.lock().expect("poisoned");
        for (id, at) in &ids {
            match (s.first.get(id), s.last.get(id)) {
                (Some(first), Some(last)) => {
                    common::record(&mut visible, first.saturating_duration_since(*at));
                    common::record(&mut settled, last.saturating_duration_since(*at));
                }
                _ => missing += 1,
            }
        }
    }
    let phase = Phase {
        accepted: ids.len() as u64,
        seconds,
        accept: Percentiles::of(&accept_hist),
        visible: Percentiles::of(&visible),
        settled: Percentiles::of(&settled),
        missing,
        errors: errors.load(Ordering::Relaxed),
        accept_series,
    };
    eprintln!(
        "{label}: {} accepted in {:.1} s ({:.0}/s); 202 → feed p50 {:.2} p99 {:.2} ms; → final p99 {:.2} ms; {} never settled, {} errors",
        phase.accepted,
        phase.seconds,
        phase.accepted as f64 / phase.seconds,
        phase.visible.p50,
        phase.visible.p99,
        phase.settled.p99,
        phase.missing,
        phase.errors
    );
    Ok(phase)
}

/// Kafka's own produce → consume latency on the same broker, with feedline's client
/// settings: raw rdkafka, the same rate, one hop. Returns the latencies and the messages
/// sent per second.
async fn kafka_hop(
    settings: &Settings,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<(Percentiles, Vec<f64>)> {
    let topic = format!("bench-hop-{}", uuid::Uuid::new_v4().simple());
    let admin = feedline::admin::Admin::new(&settings.kafka)?;
    admin
        .ensure_topics(&[feedline::admin::TopicSpec::new(&topic, 6)])
        .await?;
    let producer: rdkafka::producer::FutureProducer = settings.kafka.producer_config().create()?;
    let consumer: StreamConsumer = settings
        .kafka
        .consumer_config(
            &format!("bench-hop-{}", uuid::Uuid::new_v4().simple()),
            &settings.consumer,
        )
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..6 {
        tpl.add_partition_offset(&topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let base = Instant::now();
    let n = (rate * seconds) as usize;
    let warm = (rate as usize).min(n / 5);
    let reader = tokio::spawn(async move {
        let mut hist = common::histogram();
        let mut got = 0;
        while got < n {
            let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await
            else {
                break;
            };
            let sent = msg
                .payload()
                .and_then(|p| p.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            let index = msg
                .key()
                .and_then(|k| k.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            if index as usize >= warm {
                common::record(
                    &mut hist,
                    base.elapsed().saturating_sub(Duration::from_nanos(sent)),
                );
            }
            got += 1;
        }
        hist
    });
    // Fetching from "end" takes a moment to resolve.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let meter = Meter::start("kafka hop (raw rdkafka)");
    let t0 = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let at = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let stamp = (base.elapsed().as_nanos() as u64).to_le_bytes();
        let key = (i as u64).to_le_bytes();
        let record = FutureRecord::to(&topic).key(&key[..]).payload(&stamp[..]);
        acks.push(producer.send_result(record).map_err(|(e, _)| e)?);
        while let Some(Some(_)) = futures::FutureExt::now_or_never(acks.next()) {}
        meter.add(1);
    }
    while acks.next().await.is_some() {}
    let sent = meter.finish();
    let hist = reader.await?;
    admin.delete_topics(&[&topic]).await?;
    Ok((Percentiles::of(&hist), sent))
}

/// Messages Kafka's EndToEndLatency tool sends in a full run: at its ~2–10 ms a round trip
/// on this machine, 6–30 s plus the JVM's start; enough that its p99.9 is not the first,
/// JVM-warming message.
const LATENCY_TOOL_MESSAGES: usize = 3_000;
/// The mean `OrderEvent` envelope, as in the produce scenario.
const RECORD_BYTES: usize = 213;

pub async fn e2e(
    settings: &Settings,
    load: &Load,
    clients: usize,
    latency_tool: &str,
) -> anyhow::Result<RunResult> {
    let rate = load
        .rate
        .unwrap_or(if load.smoke { 100.0 } else { 1_000.0 });
    let seconds = load.duration.unwrap_or(if load.smoke { 3 } else { 30 }) as f64;
    let warm = load.warmup.unwrap_or(if load.smoke { 1 } else { 5 }) as f64;
    // The baseline gets the same client settings as the services.
    let client_settings = settings.with_overrides(&load.service_config)?;
    let (hop, hop_series) = kafka_hop(&client_settings, rate, seconds.min(10.0) + 1.0).await?;
    eprintln!(
        "kafka hop at {rate}/s: p50 {:.2} p99 {:.2} ms",
        hop.p50, hop.p99
    );
    // The JVM takes seconds to start and the tool ~10 s to run: CI proves the Rust paths.
    let tool = if load.smoke {
        Err(anyhow::anyhow!("smoke run"))
    } else if latency_tool.is_empty() {
        Err(anyhow::anyhow!("no command given (--latency-tool)"))
    } else {
        crate::kafka_latency::run(
            latency_tool,
            &client_settings,
            LATENCY_TOOL_MESSAGES,
            RECORD_BYTES,
        )
        .await
    };
    match &tool {
        Ok(t) => eprintln!(
            "kafka EndToEndLatency, {} messages one at a time: avg {:.2}, p50 {}, p99 {}, p99.9 {} ms",
            t.messages, t.avg, t.p50, t.p99, t.p999
        ),
        Err(e) => eprintln!("kafka EndToEndLatency skipped: {e:#}"),
    }

    let run = Arc::new(start(settings, load).await?);
    let outcome = async {
        let customers = Arc::new(run.customers(if load.smoke { 4 } else { 100 }).await?);
        let finals = Arc::new(AtomicU64::new(0));
        let (seen, reader) = watch_feed(&run, finals).await?;
        let fixed = drive(
            &run,
            &customers,
            &seen,
            "e2e fixed rate",
            Shape {
                rate: Some(rate),
                clients: 0,
                warm,
                seconds,
            },
        )
        .await?;
        let max_seconds = (seconds / 2.0).max(2.0);
        let max = drive(
            &run,
            &customers,
            &seen,
            "e2e closed loop",
            Shape {
                rate: None,
                clients,
                warm: warm.min(2.0),
                seconds: max_seconds,
            },
        )
        .await?;
        let feed_state = stop_feed(reader, &seen).await;
        anyhow::Ok((fixed, max, feed_state))
    }
    .await;
    let refused = run.refused.load(Ordering::Relaxed);
    let died = Arc::into_inner(run)
        .context("run still shared")?
        .stop()
        .await;
    let (fixed, max, feed_state) = outcome?;
    let where_services = match load.services {
        Mode::InProcess => "whole system in one process",
        Mode::Processes => "every service its own process",
    };

    let mut result = RunResult::new(
        if load.service_config.is_empty() {
            "e2e"
        } else {
            "e2e-tuned"
        },
        load.smoke,
        Machine::describe(),
        json!({"rate": rate, "seconds": seconds, "warm_up_seconds": warm, "clients": clients,
               "partitions": 6, "order_view_batch_max": 5000,
               "in_process": load.services == Mode::InProcess,
               "service_config": load.service_config,
               "latency_tool_messages": tool.as_ref().ok().map(|t| t.messages)}),
    );
    let mut columns = vec!["orders/s", "never settled"];
    columns.extend(LATENCY_COLUMNS);
    let mut table = Table::new(
        format!(
            "e2e: {where_services}, orders through the gateway; {seconds:.0} s at {rate:.0}/s, then {:.0} s closed loop with {clients} clients",
            (seconds / 2.0).max(2.0)
        ),
        &columns,
    );
    let row = |table: &mut Table, name: &str, p: &Phase, lat: &Percentiles| {
        let mut v = vec![Some(p.accepted as f64 / p.seconds), Some(p.missing as f64)];
        v.extend(lat.cells());
        table.row(name, v);
    };
    let mut base_row = vec![Some(rate), None];
    base_row.extend(hop.cells());
    table.row(
        "Kafka produce → consume, one hop, raw rdkafka, same settings (baseline)",
        base_row,
    );
    match &tool {
        Ok(t) => table.row(
            "Kafka's EndToEndLatency tool (Java clients), one message at a time (baseline)",
            vec![
                Some(t.messages as f64 / t.seconds),
                None,
                Some(t.p50),
                None,
                Some(t.p99),
                Some(t.p999),
                None,
            ],
        ),
        Err(e) => result
            .notes
            .push(format!("Kafka's EndToEndLatency baseline skipped: {e:#}.")),
    }
    row(
        &mut table,
        "fixed rate: POST → 202 (from the scheduled time)",
        &fixed,
        &fixed.accept,
    );
    row(
        &mut table,
        "fixed rate: 202 → order visible on the feed (PENDING)",
        &fixed,
        &fixed.visible,
    );
    row(
        &mut table,
        "fixed rate: 202 → final state on the feed",
        &fixed,
        &fixed.settled,
    );
    row(&mut table, "closed loop: POST → 202", &max, &max.accept);
    row(
        &mut table,
        "closed loop: 202 → order visible on the feed",
        &max,
        &max.visible,
    );
    row(
        &mut table,
        "closed loop: 202 → final state on the feed",
        &max,
        &max.settled,
    );
    result.tables.push(table);
    result.ratios.push((
        "fixed rate: 202 → visible p99 / one Kafka hop p99".into(),
        fixed.visible.p99 / hop.p99.max(1e-9),
    ));
    result.ratios.push((
        "fixed rate: 202 → final p99 / one Kafka hop p99".into(),
        fixed.settled.p99 / hop.p99.max(1e-9),
    ));
    result.targets.push(Target::new(
        &format!("e2e p99 (202 → visible on the feed) at {rate:.0}/s"),
        10.0,
        fixed.visible.p99,
        "ms",
        false,
    ));
    result.targets.push(Target::new(
        &format!("e2e p99 (202 → final state on the feed) at {rate:.0}/s"),
        10.0,
        fixed.settled.p99,
        "ms",
        false,
    ));
    result.notes.push(format!(
        "Visible = the order's first change (PENDING: gateway → order-commands → orders → order-events → order-view → SSE, 2 Kafka hops after the 202); final = APPROVED/REJECTED (4 more hops through customers and orders). Errors: fixed {}, closed loop {}; 503 `overloaded` answers retried after Retry-After: {}.",
        fixed.errors, max.errors, refused
    ));
    if let Ok(t) = &tool {
        result.notes.push(format!(
            "Kafka's EndToEndLatency (`infra/kafka.sh tool end-to-end-latency`, Java clients, acks=all, {} B records, one partition) is a closed loop of ONE message at a time, not {rate:.0}/s: it sends, waits for the ack and for its consumer to receive the message, commits synchronously, then sends the next; it forces linger.ms=0 and fetch.max.wait.ms=0. Its percentiles are whole milliseconds, truncated (0 means under 1 ms), and it reports no p90 or max; mean {:.2} ms over {} messages, the first of which carries the JVM's warm-up. Its orders/s column is messages over the tool's wall time, JVM start included ({:.1} s).",
            RECORD_BYTES, t.avg, t.messages, t.seconds
        ));
        result.ratios.push((
            "fixed rate: 202 → visible p99 / Kafka EndToEndLatency p99".into(),
            fixed.visible.p99 / t.p99.max(1.0),
        ));
    }
    for d in died {
        result.notes.push(format!("A service died: {d}"));
    }
    result.notes.extend(feed_state);
    result.series.push(Series {
        name: format!("raw rdkafka hop, sent/s at {rate:.0}/s"),
        per_second: hop_series,
    });
    result.series.push(Series {
        name: "fixed-rate accepted/s".into(),
        per_second: fixed.accept_series,
    });
    result.series.push(Series {
        name: "closed-loop accepted/s".into(),
        per_second: max.accept_series,
    });
    Ok(result)
}

/// Resident memory of each sampled process every [`common::MEMORY_SAMPLE_SECONDS`]: one
/// column per process, `None` where it could not be read (the process had gone).
#[derive(Debug, Default)]
struct Memory {
    names: Vec<String>,
    samples: Vec<(Instant, Vec<Option<f64>>)>,
}

impl Memory {
    /// Samples `targets` (label, pid or "self") until the returned task is aborted.
    fn sample(targets: Vec<(String, String)>) -> (Arc<Mutex<Memory>>, tokio::task::JoinHandle<()>) {
        let memory = Arc::new(Mutex::new(Memory {
            names: targets.iter().map(|t| t.0.clone()).collect(),
            samples: Vec::new(),
        }));
        let shared = memory.clone();
        let task = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(common::MEMORY_SAMPLE_SECONDS));
            loop {
                tick.tick().await;
                let row = targets
                    .iter()
                    .map(|(_, pid)| common::rss_mib(pid))
                    .collect();
                shared
                    .lock()
                    .expect("poisoned")
                    .samples
                    .push((Instant::now(), row));
            }
        });
        (memory, task)
    }

    /// Mean and max of column `i` over the samples taken in `from..=until`.
    fn stats(&self, i: usize, from: Instant, until: Instant) -> Option<(f64, f64)> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= from && *at <= until)
            .filter_map(|(_, row)| row[i])
            .collect();
        let max = values.iter().copied().reduce(f64::max)?;
        Some((values.iter().sum::<f64>() / values.len() as f64, max))
    }

    fn series(&self, i: usize) -> Vec<f64> {
        self.samples
            .iter()
            .map(|(_, row)| row[i].unwrap_or(f64::NAN))
            .collect()
    }
}

/// 50 MB in the decimal megabytes; VmRSS is in KiB.
const MB_PER_MIB: f64 = 1.048_576;

pub async fn saga(settings: &Settings, load: &Load, clients: usize) -> anyhow::Result<RunResult> {
    let seconds = load.duration.unwrap_or(if load.smoke { 3 } else { 60 }) as f64;
    let warm = load.warmup.unwrap_or(if load.smoke { 1 } else { 5 }) as f64;
    let rss_start = common::rss_mib("self").unwrap_or(0.0);
    let run = Arc::new(start(settings, load).await?);
    let mut targets: Vec<(String, String)> = run
        .pids()
        .into_iter()
        .map(|(name, pid)| (name.to_owned(), pid.to_string()))
        .collect();
    targets.push((
        match load.services {
            Mode::Processes => "bench process (load generator, feed client; not a service)",
            Mode::InProcess => "the one process: all five services and the load generator",
        }
        .to_owned(),
        "self".to_owned(),
    ));
    let (memory, sampler) = Memory::sample(targets);
    let started = Instant::now();
    let mut marks = (started, started);
    let outcome = async {
        // Idle: the services started and nothing asked of them yet.
        tokio::time::sleep(Duration::from_secs_f64(4.0 * common::MEMORY_SAMPLE_SECONDS)).await;
        let idle_until = Instant::now();
        let customers = Arc::new(run.customers(if load.smoke { 4 } else { 200 }).await?);
        let finals = Arc::new(AtomicU64::new(0));
        let (seen, reader) = watch_feed(&run, finals).await?;
        // Settled orders counted over the measured window only (after the warm-up).
        let window = {
            let run = run.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(warm)).await;
                let (before, t0) = (run.settled().await?, Instant::now());
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                let after = run.settled().await?;
                anyhow::Ok((after - before, t0.elapsed().as_secs_f64()))
            })
        };
        let load_from = Instant::now();
        let phase = drive(
            &run,
            &customers,
            &seen,
            "saga",
            Shape {
                rate: load.rate,
                clients,
                warm,
                seconds,
            },
        )
        .await?;
        // Under load: from the first order until the backlog settled (or drive gave up
        // waiting for it); what the services hold then is what load costs them.
        marks = (idle_until, load_from);
        let (settled, window_seconds) = window.await??;
        let feed_state = stop_feed(reader, &seen).await;
        anyhow::Ok((phase, settled, window_seconds, feed_state))
    }
    .await;
    let load_until = Instant::now();
    sampler.abort();
    let _ = sampler.await;
    let refused = run.refused.load(Ordering::Relaxed);
    let died = Arc::into_inner(run)
        .context("run still shared")?
        .stop()
        .await;
    let (phase, settled, total_seconds, feed_state) = outcome?;
    let (idle_until, load_from) = marks;
    let memory = std::mem::take(&mut *memory.lock().expect("poisoned"));

    let accepted_rate = phase.accepted as f64 / phase.seconds;
    // Orders that reached a final state during the measured window, counted in the order
    // service's database.
    let settled_rate = settled as f64 / total_seconds;
    let processes = load.services == Mode::Processes;
    let mut result = RunResult::new(
        match (load.rate.is_some(), load.service_config.is_empty()) {
            (false, true) => "saga",
            (true, true) => "saga-open-loop",
            (_, false) => "saga-tuned",
        },
        load.smoke,
        Machine::describe(),
        json!({"clients": clients, "seconds": seconds, "warm_up_seconds": warm, "rate": load.rate,
               "in_process": !processes, "partitions": 6, "service_config": load.service_config,
               "memory_sample_seconds": common::MEMORY_SAMPLE_SECONDS}),
    );
    let mut table = Table::new(
        format!(
            "saga: {}, {} for {seconds:.0} s",
            if processes {
                "every service its own process"
            } else {
                "every service in this process"
            },
            load.rate.map_or(
                format!("{clients} gateway clients in a closed loop"),
                |r| format!("orders offered at {r:.0}/s (open loop)")
            )
        ),
        &[
            "orders/s",
            "ratio to accepted",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
    );
    let a = &phase.accept;
    table.row(
        "accepted by the gateway (POST → 202) (baseline)",
        vec![
            Some(accepted_rate),
            Some(1.0),
            Some(a.p50),
            Some(a.p99),
            Some(a.max),
        ],
    );
    let s = &phase.settled;
    table.row(
        "settled (APPROVED/REJECTED in the orders database; latency 202 → final state on the feed)",
        vec![
            Some(settled_rate),
            Some(settled_rate / accepted_rate.max(1e-9)),
            (s.count > 0).then_some(s.p50),
            (s.count > 0).then_some(s.p99),
            (s.count > 0).then_some(s.max),
        ],
    );
    result.tables.push(table);

    let mut table = Table::new(
        if processes {
            "saga: resident memory (VmRSS) of each service, each its own process (MiB)"
        } else {
            "saga: resident memory (VmRSS) of the one process running all services (MiB)"
        },
        &[
            "idle after start MiB",
            "mean under load MiB",
            "max under load MiB",
        ],
    );
    for (i, name) in memory.names.iter().enumerate() {
        let idle = memory.stats(i, started, idle_until);
        let busy = memory.stats(i, load_from, load_until);
        table.row(
            name.clone(),
            vec![idle.map(|s| s.0), busy.map(|s| s.0), busy.map(|s| s.1)],
        );
        let is_service = processes && i + 1 < memory.names.len();
        if is_service && let Some((_, max)) = busy {
            result.targets.push(Target::new(
                &format!("{name}: resident memory, max under load"),
                50.0,
                max * MB_PER_MIB,
                "MB",
                false,
            ));
        }
        result.series.push(Series::memory(name, memory.series(i)));
    }
    result.tables.push(table);
    if !processes && let Some((_, max)) = memory.stats(0, load_from, load_until) {
        result.targets.push(Target::new(
            "resident memory, all five parts together (target is ≤ 50 MB per service: 5 × 50)",
            250.0,
            max * MB_PER_MIB,
            "MB",
            false,
        ));
    }
    result.ratios.push((
        "settled / accepted, orders/s".into(),
        settled_rate / accepted_rate.max(1e-9),
    ));
    result.targets.push(Target::new(
        "orders/s reaching a final state",
        5_000.0,
        settled_rate,
        "orders/s",
        true,
    ));
    result.notes.push(format!(
        "{} orders accepted and {settled} settled in the {total_seconds:.1} s measured after the warm-up; {} of the accepted never reached a final state on the feed within 30 s, {} errors; {} answers were 503 `overloaded` (the gateway's back-pressure), each retried after its Retry-After.",
        phase.accepted, phase.missing, phase.errors, refused
    ));
    result.notes.push(if processes {
        format!(
            "Memory: VmRSS of each child process every {} s; idle = the first 2 s after every service answered /health; under load = from the first order until every accepted order settled, or 30 s after the last one (warm-up and drain included). Targets compare in MB (10⁶ B) as the issue states them; the table is in MiB.",
            common::MEMORY_SAMPLE_SECONDS
        )
    } else {
        format!(
            "Memory is the whole process (registry, gateway, orders, customers, order-view and the load generator; {rss_start:.0} MiB before start): per-service figures need `--services processes`."
        )
    });
    for d in died {
        result.notes.push(format!("A service died: {d}"));
    }
    result.notes.extend(feed_state);
    result.series.insert(
        0,
        Series {
            name: "accepted/s".into(),
            per_second: phase.accept_series,
        },
    );
    Ok(result)
}
