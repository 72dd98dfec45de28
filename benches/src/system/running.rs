//! A run's system: fresh databases, a random topic prefix and every service (in this
//! process or each its own child process), with a client of the gateway's HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::{CancellationToken, Settings};
use feedline_gateway::client::send_command;
use feedline_launcher::System;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::effective;
use crate::Load;
use crate::common;
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
pub(super) struct Running {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
    pub(super) bearer: String,
    orders_db: PgPool,
    admin: PgPool,
    databases: Vec<String>,
    view_file: String,
    /// The broker and the run's topic prefix, to delete its topics at the end.
    kafka: feedline::config::KafkaSettings,
    prefix: String,
    services: Services,
    /// Each service's settings as it runs with them, by name ([`effective::describe`]).
    pub(super) effective: BTreeMap<String, Value>,
    /// 503 `overloaded` answers (the gateway's back-pressure), each retried after its
    /// `Retry-After`.
    pub(super) refused: AtomicU64,
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

pub(super) async fn start(settings: &Settings, load: &Load) -> anyhow::Result<Running> {
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
            match effective::of_processes(&config.extra) {
                Ok(effective) => Processes::start(&config, &http)
                    .await
                    .context("the services did not start as processes")
                    .map(|p| (p.gateway, Services::Processes(p), effective)),
                Err(e) => Err(e),
            }
        }
        Mode::InProcess => {
            let token = CancellationToken::new();
            let urls = (orders_url, customers_url, view_url);
            in_process(settings, &pg, urls, &prefix, &extra, token.clone())
                .await
                .map(|(system, effective)| {
                    let gateway = system.gateway;
                    let done = tokio::spawn(system.join(Duration::from_secs(10)));
                    (gateway, Services::InProcess { token, done }, effective)
                })
        }
    };
    let (gateway, services, effective) = match launched {
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
        effective,
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
/// layered over its defaults; with the settings each service was given, by name.
async fn in_process(
    settings: &Settings,
    pg: &str,
    (orders_url, customers_url, view_url): (String, String, String),
    prefix: &str,
    extra: &str,
    token: CancellationToken,
) -> anyhow::Result<(System, BTreeMap<String, Value>)> {
    let given = Arc::new(Mutex::new(BTreeMap::new()));
    let record = given.clone();
    let (kafka, pg, prefix, extra) = (
        settings.kafka.bootstrap_servers.clone(),
        pg.to_owned(),
        prefix.to_owned(),
        extra.to_owned(),
    );
    let load_settings = move |defaults: &str| -> anyhow::Result<Settings> {
        let s = effective::layered(defaults, &extra)?;
        let db = match s.service_name.as_str() {
            "orders" => orders_url.clone(),
            "customers" => customers_url.clone(),
            "order-view" => view_url.clone(),
            _ => pg.clone(),
        };
        let s = s.with_overrides(&format!(
            "[kafka]\nbootstrap_servers = \"{kafka}\"\ntopic_prefix = \"{prefix}\"\n\
             [http]\nport = 0\n[database]\nurl = \"{db}\"\n"
        ))?;
        // Recorded as given; the launcher's own layers on top (the registry's URL, the
        // gateway's order-view URL, dev mode) are not what the metadata records.
        if effective::SERVICES
            .iter()
            .any(|(name, _)| *name == s.service_name)
        {
            record
                .lock()
                .expect("poisoned")
                .insert(s.service_name.clone(), effective::describe(&s));
        }
        Ok(s)
    };
    let system = System::start(load_settings, token)
        .await
        .context("the system did not start")?;
    let given = std::mem::take(&mut *given.lock().expect("poisoned"));
    Ok((system, given))
}

impl Running {
    /// A bearer token for the demo client.
    pub(super) async fn token(&self) -> anyhow::Result<String> {
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
    pub(super) async fn customers(&self, n: usize) -> anyhow::Result<Vec<String>> {
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
    pub(super) async fn place(&self, customer: &str) -> anyhow::Result<String> {
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
    pub(super) async fn settled(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
                .fetch_one(&self.orders_db)
                .await?,
        )
    }

    /// The child processes, when the services run as processes: name and pid.
    pub(super) fn pids(&self) -> Vec<(&'static str, u32)> {
        match &self.services {
            Services::Processes(p) => p.services.iter().map(|s| (s.name, s.pid)).collect(),
            Services::InProcess { .. } => Vec::new(),
        }
    }

    /// Stops the services and drops the databases; returns what went wrong with a child
    /// process during the run (a service that exited by itself).
    pub(super) async fn stop(self) -> Vec<String> {
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
