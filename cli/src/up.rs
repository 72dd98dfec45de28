//! `feedline up`: the whole system on one machine. Starts the local infrastructure (unless
//! told not to), then the registry and every service, each as its own process (or all in
//! this one with `--in-process`), registers the schemas, seeds demo customers and places a
//! stream of demo orders through the gateway. Ctrl-C stops everything, then the
//! infrastructure it started.
//!
//! - [`plan`]: which processes, with which ports and environment
//! - [`children`]: one process kept running: output, restarts, stop
//! - [`supervisor`]: all of them, started and stopped in order
//! - [`infra`]: the local Kafka and PostgreSQL

mod children;
mod infra;
mod plan;
mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use feedline::{CancellationToken, Settings};
use serde_json::{Value, json};

use children::Output;
use feedline_launcher::System;
use infra::Infra;
use supervisor::{Processes, Started};

const SERVICES_HELP: &str = "\
Each service runs as its own process (feedline-registry, feedline-orders, ...), found beside
this feedline binary: build them with `cargo build --bins`. A process that exits is restarted
(after 1 s, doubling to 30 s). Ctrl-C stops the gateway, order-view, customers, orders and
the registry in that order, then the infrastructure this run started.

Configuration: --config and the FEEDLINE_* variables reach every service. A variable for one
service only: FEEDLINE_UP__<SERVICE>__<NAME>, which that service's processes see as
FEEDLINE_<NAME>, e.g. FEEDLINE_UP__ORDERS__DATABASE__URL=postgres://.../orders_test
(SERVICE: REGISTRY, ORDERS, CUSTOMERS, ORDER_VIEW, GATEWAY).

Ports: each service's configured port plus --port-offset; replica N of a service listens
100 * (N - 1) above replica 1 (order-view: 8093, 8193, ...). Replica N > 1 of a service with
a SQLite database gets its own file beside the configured one (order-view-2.db, ...).";

/// How long a service process may take to stop after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
#[command(after_long_help = SERVICES_HELP)]
pub struct UpArgs {
    /// Do not start Kafka and PostgreSQL (use the configured ones).
    #[arg(long)]
    no_infra: bool,
    /// Demo orders per second through the gateway; 0 for none.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Demo customers to register first.
    #[arg(long, default_value_t = 20)]
    customers: u32,
    /// Run a service as N processes, e.g. order-view=2 (repeat, or separate with commas).
    #[arg(long, value_name = "SERVICE=N", value_delimiter = ',', value_parser = plan::parse_replicas)]
    replicas: Vec<plan::Replicas>,
    /// Added to every service's port, to run beside another system on this machine.
    #[arg(long, value_name = "N", default_value_t = 0)]
    port_offset: u16,
    /// Write each process's output to DIR/<service>-<n>.log instead of the console.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Run every service in this one process, as tasks (no replicas, no restarts).
    #[arg(long, conflicts_with_all = ["replicas", "port_offset", "logs"])]
    in_process: bool,
}

pub async fn up(config: Option<&Path>, args: UpArgs) -> anyhow::Result<bool> {
    // Warnings and the shutdown sequence only: the banner and the demo lines are the output.
    feedline::telemetry::init_with_default("warn,feedline::shutdown=info");
    // Before the infrastructure: a missing binary or a bad port fails at once.
    let children = if args.in_process {
        Vec::new()
    } else {
        plan::plan(&plan::Options {
            config,
            replicas: &args.replicas,
            port_offset: args.port_offset,
            bin_dir: &plan::bin_dir()?,
        })?
    };
    let infra = if args.no_infra {
        None
    } else {
        let dir = Path::new("infra");
        if !dir.join("up.sh").exists() {
            bail!(
                "infra/up.sh not found: run `feedline up` from the repository root, or pass --no-infra"
            );
        }
        Some(Infra::start(dir)?)
    };
    let result = if args.in_process {
        run_system(config, &args).await
    } else {
        run_processes(config, &args, children).await
    };
    if let Some(infra) = infra {
        eprintln!("stopping the infrastructure this run started...");
        infra.stop();
    }
    result.map(|()| true)
}

/// Every service as a child process, supervised, until Ctrl-C or SIGTERM.
async fn run_processes(
    config: Option<&Path>,
    args: &UpArgs,
    children: Vec<plan::Child>,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    feedline::shutdown::cancel_on_signal(token.clone());
    let output = match &args.logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
            Output::Files(dir.clone())
        }
        None => Output::Console {
            width: children.iter().map(|c| c.label.len()).max().unwrap_or(0),
        },
    };
    let gateway = children
        .iter()
        .find(|c| c.part == "gateway")
        .map(|c| c.url.clone())
        .context("no gateway to start")?;
    let mut processes = Processes::default();
    let started = processes
        .start(children, config, &output, GRACE, &token)
        .await;
    if let Ok(Started::Ready) = started {
        let mut rows: Vec<String> = processes
            .running
            .iter()
            .map(|c| {
                let pid = c.pid().map_or("-".into(), |p| p.to_string());
                let url = &c.url;
                format!(
                    "  {:<12} {url}/metrics   {url}/health/ready   pid {pid}",
                    c.label
                )
            })
            .collect();
        if let Some(dir) = &args.logs {
            rows.push(format!("  logs        {}/<service>-<n>.log", dir.display()));
        }
        print_banner(&gateway, &rows);
        let demo = (args.rate > 0).then(|| {
            let (rate, customers) = (args.rate, args.customers);
            let token = token.clone();
            tokio::spawn(async move {
                if let Err(e) = demo(gateway, customers, rate, token).await {
                    eprintln!("the demo stopped: {e:#}");
                }
            })
        });
        token.cancelled().await;
        if let Some(demo) = demo {
            // An order in flight could hold the gateway's stop; the demo's work is done.
            demo.abort();
        }
    }
    processes.stop().await;
    started.map(|_| ())
}

async fn run_system(config: Option<&Path>, args: &UpArgs) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    feedline::shutdown::cancel_on_signal(token.clone());
    let load = |defaults: &str| -> anyhow::Result<Settings> {
        Settings::load(defaults, config).context("failed to load configuration")
    };
    let mut system = System::start(load, token.clone()).await?;
    system
        .ready(Duration::from_secs(60))
        .await
        .context("the system did not become ready")?;
    let rows: Vec<String> = system
        .addresses()
        .iter()
        .map(|(name, addr)| {
            format!("  {name:<11} http://{addr}/metrics   http://{addr}/health/ready")
        })
        .collect();
    print_banner(&format!("http://{}", system.gateway), &rows);
    if args.rate > 0 {
        let base = format!("http://{}", system.gateway);
        let (rate, customers) = (args.rate, args.customers);
        system.spawn("demo", demo(base, customers, rate, token.clone()));
    }
    system.join(Duration::from_secs(8)).await
}

fn print_banner(gateway: &str, rows: &[String]) {
    println!();
    println!("feedline is up and ready (every part answers /health/ready).");
    println!("  dashboard   {gateway}/");
    println!("  live feed   {gateway}/feed   (Bearer token with scope feed:read)");
    println!("  API docs    {gateway}/openapi.json");
    for row in rows {
        println!("{row}");
    }
    println!(
        "  a token:    curl -s -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret {gateway}/auth/token"
    );
    println!(
        "DEV MODE: the gateway accepts the demo client (demo/demo-secret) and signs with the published development secret unless gateway.jwt_secret is set; never expose it."
    );
    println!("Press Ctrl-C to stop everything.");
    println!();
}

/// Registers demo customers, then places orders at `rate` per second with random totals,
/// cancelling one in ten, and prints a summary line every five seconds.
async fn demo(
    base: String,
    customers: u32,
    rate: u32,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let bearer = demo_token(&http, &base).await?;
    let mut ids = Vec::new();
    for i in 0..customers {
        let body = json!({"name": format!("Demo customer {}", i + 1), "credit_limit": format!("{}.00", 200 + 50 * (i % 8))});
        let created: Value = post(&http, &base, "/customers", &bearer, &body).await?;
        ids.push(
            created["customer_id"]
                .as_str()
                .context("customer_id in the answer")?
                .to_owned(),
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut report = tokio::time::interval(Duration::from_secs(5));
    let (mut placed, mut failed) = (0u64, 0u64);
    let mut last_order = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return Ok(()),
            _ = report.tick() => {
                println!("demo: {placed} orders placed ({failed} refused)");
            }
            _ = tick.tick() => {
                let customer = &ids[rand::random_range(0..ids.len())];
                let total = format!("{}.{:02}", rand::random_range(5..80), rand::random_range(0..100));
                match post(&http, &base, "/orders", &bearer, &json!({"customer_id": customer, "total": total})).await {
                    Ok(answer) => {
                        placed += 1;
                        if placed % 10 == 0 && let Some(id) = last_order.take() {
                            let _ = post(&http, &base, &format!("/orders/{id}/cancel"), &bearer, &json!({})).await;
                        }
                        last_order = answer["order_id"].as_str().map(str::to_owned);
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(error = format!("{e:#}"), "demo order refused");
                    }
                }
            }
        }
    }
}

async fn demo_token(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{base}/auth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo-secret"}))
        .send()
        .await?
        .error_for_status()
        .context("the gateway refused the demo client")?
        .json()
        .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the answer")
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    bearer: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = feedline_gateway::client::send_command(
        http.post(format!("{base}{path}"))
            .bearer_auth(bearer)
            .json(body),
    )
    .await?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{path} answered {status}: {answer}");
    }
    Ok(answer)
}

/// The workspace binary of `service` (`feedline-<service>`) beside this `feedline`, or an
/// error saying how to build it.
pub fn service_binary(service: &str) -> anyhow::Result<std::path::PathBuf> {
    plan::binary(&plan::bin_dir()?, service)
}
