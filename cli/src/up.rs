//! `feedline up`: the whole system on one machine. Starts the local infrastructure (unless
//! told not to), then the registry and every service in this process under one shutdown
//! root, registers the schemas, seeds demo customers and places a stream of demo orders
//! through the gateway. Ctrl-C stops everything, then the infrastructure it started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use feedline::{CancellationToken, Settings};
use serde_json::{Value, json};

use crate::system::System;

#[derive(Debug, clap::Args)]
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
}

/// Which infrastructure parts this run started, so only those are stopped.
struct Infra {
    dir: PathBuf,
    started: Vec<&'static str>,
}

impl Infra {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut started = Vec::new();
        for part in ["kafka", "postgres"] {
            let script = dir.join(format!("{part}.sh"));
            let running = std::process::Command::new("bash")
                .arg(&script)
                .arg("status")
                .output()
                .with_context(|| format!("cannot run {}", script.display()))?
                .status
                .success();
            if !running {
                started.push(part);
            }
        }
        eprintln!("starting Kafka and PostgreSQL (infra/up.sh)...");
        let status = std::process::Command::new("bash")
            .arg(dir.join("up.sh"))
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("infra/up.sh failed; see the messages above");
        }
        Ok(Infra {
            dir: dir.to_owned(),
            started,
        })
    }

    fn stop(&self) {
        for part in &self.started {
            let _ = std::process::Command::new("bash")
                .arg(self.dir.join(format!("{part}.sh")))
                .arg("stop")
                .status();
        }
    }
}

pub async fn up(config: Option<&Path>, args: UpArgs) -> anyhow::Result<bool> {
    // Warnings and the shutdown sequence only: the banner and the demo lines are the output.
    feedline::telemetry::init_with_default("warn,feedline::shutdown=info");
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
    let result = run_system(config, &args).await;
    if let Some(infra) = infra {
        eprintln!("stopping the infrastructure this run started...");
        infra.stop();
    }
    result.map(|()| true)
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
    print_banner(&system.addresses(), system.gateway);
    if args.rate > 0 {
        let base = format!("http://{}", system.gateway);
        let (rate, customers) = (args.rate, args.customers);
        system.spawn("demo", demo(base, customers, rate, token.clone()));
    }
    system.join(Duration::from_secs(8)).await
}

fn print_banner(addrs: &[(&'static str, SocketAddr)], gateway: SocketAddr) {
    println!();
    println!("feedline is up and ready (every part answers /health/ready).");
    println!("  dashboard   http://{gateway}/");
    println!("  live feed   http://{gateway}/feed   (Bearer token with scope feed:read)");
    println!("  API docs    http://{gateway}/openapi.json");
    for (name, addr) in addrs {
        println!("  {name:<11} http://{addr}/metrics   http://{addr}/health/ready");
    }
    println!(
        "  a token:    curl -s -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret http://{gateway}/auth/token"
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
