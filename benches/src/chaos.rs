//! `chaos`: the whole system under a steady load while faults are injected on a schedule,
//! then checked from its own state. Every service runs as its own process (two replicas of
//! orders, customers and order-view); the faults are real (SIGKILL of a service or of a
//! broker's JVM, Kafka and PostgreSQL stopped and started), so the harness runs against a
//! Kafka and a PostgreSQL of its own that it may restart: by default the 3-broker cluster
//! (`FEEDLINE_STATE=/tmp/feedline-chaos infra/kafka.sh start --cluster`) and a second
//! PostgreSQL on 15432 (`FEEDLINE_PG_PORT=15432 infra/postgres.sh start`); `./dev chaos`
//! starts both. It refuses the shared broker on 9092 and the shared PostgreSQL on 5432.
//!
//! What it reports: the faults injected; the orders accepted (202), lost, duplicated and
//! stuck; the time to recover per kind of fault; and the checks, each read from the
//! databases and topics. The exit status is non-zero when any check fails.

mod check;
mod faults;
mod feed;
mod load;
mod poison;
mod report;
mod services;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::Settings;
use feedline::codec::RegistryClient;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use self::faults::{FaultKind, InfraCommands, Injection};
use self::services::{Fleet, Kind};

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The Kafka the harness runs against and may restart: never the shared broker.
    #[arg(
        long,
        default_value = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    )]
    kafka: String,
    /// The PostgreSQL the harness creates its databases in and may restart.
    #[arg(
        long,
        default_value = "postgres://feedline:feedline@127.0.0.1:15432/feedline"
    )]
    postgres: String,
    /// Orders to offer in a full run (at `--rate`, default 100/s); `--duration` overrides it.
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// Customers registered at the start; the load cycles over them.
    #[arg(long, default_value_t = 50)]
    customers: usize,
    /// Customers followed by an SSE feed client each.
    #[arg(long, default_value_t = 3)]
    feed_clients: usize,
    /// The faults, in schedule order (the schedule cycles through them). Poison first: it
    /// must cost nothing but the poison, and every later fault shows the system's recovery
    /// with it in the topics. The slow ones (broker, kafka) come late so a smoke run gets to
    /// the quick ones first.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "poison,orders,customers,order-view,gateway,registry,postgres,broker,kafka"
    )]
    faults: Vec<FaultKind>,
    /// Seconds from one fault's start to the next one's (default 30; 6 for --smoke).
    #[arg(long)]
    fault_interval: Option<f64>,
    /// Seconds a killed or stopped thing stays down (default 5; 2 for --smoke).
    #[arg(long)]
    down: Option<f64>,
    /// Commands that act on the harness's Kafka and PostgreSQL, run with `bash -c` in the
    /// repository root with FEEDLINE_STATE and FEEDLINE_PG_PORT set; empty skips that fault.
    #[arg(long, default_value = "infra/kafka.sh stop --cluster")]
    kafka_stop_cmd: String,
    #[arg(long, default_value = "infra/kafka.sh start --cluster")]
    kafka_start_cmd: String,
    /// `{n}` is the broker (1..3).
    #[arg(
        long,
        default_value = "kill -9 \"$(cat \"$FEEDLINE_STATE/kafka/cluster/broker-{n}/kafka.pid\")\""
    )]
    broker_kill_cmd: String,
    #[arg(long, default_value = "infra/kafka.sh start-broker {n}")]
    broker_start_cmd: String,
    #[arg(long, default_value = "infra/postgres.sh stop")]
    postgres_stop_cmd: String,
    #[arg(long, default_value = "infra/postgres.sh start")]
    postgres_start_cmd: String,
    /// FEEDLINE_STATE for those commands: where the harness's own Kafka and PostgreSQL live.
    #[arg(long, default_value = "/tmp/feedline-chaos")]
    infra_state: PathBuf,
    /// Topic replication factor the services create topics with (-1: the broker's default,
    /// 3 on the cluster).
    #[arg(long, default_value_t = -1)]
    replication_factor: i32,
    /// Run against a Kafka on 9092 or a PostgreSQL on 5432 anyway (they are shared on the
    /// development machines, and this harness restarts what it runs against).
    #[arg(long)]
    allow_shared_infra: bool,
    /// Keep the run's databases, topics and SQLite files even when every check passed.
    #[arg(long)]
    keep: bool,
}

/// A smoke run (CI) ends within three minutes whatever state the system is in: faults that
/// could not end in time are not started, the load stops early, the checks wait less.
const SMOKE_BUDGET: Duration = Duration::from_secs(170);

/// Sizes and timings of one run.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    rate: f64,
    seconds: f64,
    warm_up: f64,
    interval: f64,
    down: f64,
    give_up: f64,
    drain: f64,
    customers: usize,
    feed_clients: usize,
    faults: Vec<FaultKind>,
    smoke: bool,
    /// TOML layered over every service's settings (`--service-config`).
    service_config: String,
}

impl Plan {
    fn new(args: &ChaosArgs, load: &crate::Load) -> Plan {
        let rate = load.rate.unwrap_or(100.0);
        let smoke = load.smoke;
        let seconds = match (load.duration, smoke) {
            (Some(d), _) => d as f64,
            (None, true) => 100.0,
            (None, false) => args.orders as f64 / rate,
        };
        Plan {
            rate,
            seconds,
            warm_up: load
                .warmup
                .map_or(if smoke { 8.0 } else { 20.0 }, |w| w as f64),
            interval: args
                .fault_interval
                .unwrap_or(if smoke { 6.0 } else { 30.0 }),
            down: args.down.unwrap_or(if smoke { 2.0 } else { 5.0 }),
            // A CI run must end within 3 minutes whatever state the system is in.
            give_up: if smoke { 20.0 } else { 90.0 },
            drain: if smoke { 25.0 } else { 120.0 },
            customers: if smoke { 20 } else { args.customers },
            feed_clients: args.feed_clients,
            faults: args.faults.clone(),
            smoke,
            service_config: load.service_config.clone(),
        }
    }
}

/// One sample of progress, as the clients and the orders database saw it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    pub t: f64,
    pub accepted: u64,
    /// Orders in a final state in the orders database; `None` while it cannot be read.
    pub settled: Option<i64>,
}

fn port_of(url: &str) -> Option<u16> {
    let authority = url.split("://").nth(1)?.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

/// Runs the scenario; `Ok(false)` when it ran and a check failed.
pub async fn run(args: ChaosArgs, load: &crate::Load, results: &Path) -> anyhow::Result<bool> {
    let begun = Instant::now();
    let plan = Plan::new(&args, load);
    if !args.allow_shared_infra {
        anyhow::ensure!(
            !args.kafka.split(',').any(|b| b.trim().ends_with(":9092")),
            "--kafka {} includes port 9092, the shared broker this harness must not restart; start the cluster (`./dev chaos` does) or pass --allow-shared-infra",
            args.kafka
        );
        anyhow::ensure!(
            port_of(&args.postgres) != Some(5432),
            "--postgres is on port 5432, the shared server this harness must not restart; use a second one (FEEDLINE_PG_PORT=15432 infra/postgres.sh start) or pass --allow-shared-infra"
        );
    }
    let prefix = format!("chaos{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let dir = std::env::temp_dir().join(format!("feedline-{}", prefix.trim_end_matches('-')));
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    eprintln!(
        "chaos: {:.0} s at {:.0} orders/s ({} orders), faults every {:.0} s ({:?}); run files in {}",
        plan.seconds,
        plan.rate,
        (plan.seconds * plan.rate) as u64,
        plan.interval,
        plan.faults,
        dir.display()
    );
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let infra = InfraCommands {
        kafka_stop: args.kafka_stop_cmd.clone(),
        kafka_start: args.kafka_start_cmd.clone(),
        broker_kill: args.broker_kill_cmd.clone(),
        broker_start: args.broker_start_cmd.clone(),
        postgres_stop: args.postgres_stop_cmd.clone(),
        postgres_start: args.postgres_start_cmd.clone(),
        env: vec![
            (
                "FEEDLINE_STATE".into(),
                args.infra_state.display().to_string(),
            ),
            (
                "FEEDLINE_PG_PORT".into(),
                port_of(&args.postgres).unwrap_or(5432).to_string(),
            ),
        ],
        cwd: repo,
        log: dir.join("infra.log"),
    };

    // Fresh databases on the harness's PostgreSQL.
    let admin = PgPool::connect(&args.postgres)
        .await
        .with_context(|| format!("failed to connect to PostgreSQL at {}", args.postgres))?;
    let base_url = args.postgres[..args
        .postgres
        .rfind('/')
        .context("database url without a name")?]
        .to_owned();
    let databases = [
        format!("{}orders", prefix.replace('-', "_")),
        format!("{}customers", prefix.replace('-', "_")),
    ];
    for db in &databases {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .with_context(|| format!("failed to create database {db}"))?;
    }
    let orders_url = format!("{base_url}/{}", databases[0]);
    let customers_url = format!("{base_url}/{}", databases[1]);
    let view_files = [1, 2].map(|r| dir.join(format!("view-{r}.db")).display().to_string());

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let fleet = Fleet::new(dir.clone(), http.clone());
    let budget = plan.smoke.then(|| begun + SMOKE_BUDGET);
    let outcome = drive(
        &args,
        &plan,
        &prefix,
        &fleet,
        &infra,
        &http,
        (&orders_url, &customers_url, &view_files),
        budget,
    )
    .await;
    fleet.stop().await;

    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\nstatistics_interval_ms = 0",
        args.kafka
    ))?;
    let passed = match outcome {
        Ok(run) => {
            let report = report::Report::new(&plan, &args, run, &prefix, &dir);
            report.emit(results)?;
            report.passed()
        }
        Err(e) => {
            eprintln!("chaos: the run did not complete: {e:#}");
            eprintln!("service logs and infra.log kept in {}", dir.display());
            false
        }
    };
    // Topics and databases go whatever the outcome (unless --keep): a broker that keeps every
    // run's partitions recovers slower after each kill -9, which would skew the next runs.
    // The service logs stay when something failed; the report says what.
    if args.keep {
        eprintln!(
            "kept: databases {databases:?} on {}, topics {prefix}*, files in {}",
            args.postgres,
            dir.display()
        );
    } else {
        for db in &databases {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
        crate::common::drop_topics(&settings.kafka, &prefix).await;
        if passed {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("service logs and infra.log kept in {}", dir.display());
        }
    }
    Ok(passed)
}

/// Everything a finished run hands to the report.
#[derive(Debug)]
pub struct Run {
    pub records: Vec<load::Record>,
    pub injections: Vec<Injection>,
    pub poison: Vec<poison::Poison>,
    pub samples: Vec<Sample>,
    pub fate: check::Fate,
    pub checks: Vec<check::Check>,
    pub exits: Vec<services::UnexpectedExit>,
    pub dead_letters: Vec<check::DeadLetter>,
    pub retries: u64,
    pub feeds: Vec<serde_json::Value>,
    /// Faults of the plan that were not injected, and why.
    pub skipped: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &ChaosArgs,
    plan: &Plan,
    prefix: &str,
    fleet: &Arc<Fleet>,
    infra: &InfraCommands,
    http: &reqwest::Client,
    (orders_url, customers_url, view_files): (&str, &str, &[String; 2]),
    budget: Option<Instant>,
) -> anyhow::Result<Run> {
    // 1 registry, 2 orders, 2 customers, 2 order-view, 1 gateway.
    let ports = crate::processes::free_ports(8)?;
    let registry_url = format!("http://127.0.0.1:{}", ports[0]);
    let config_file = fleet.dir.join("services.toml");
    std::fs::write(&config_file, &plan.service_config)
        .with_context(|| format!("failed to write {}", config_file.display()))?;
    let env = |port: u16, database: Option<&str>| {
        let mut vars = vec![
            ("FEEDLINE_KAFKA__BOOTSTRAP_SERVERS", args.kafka.clone()),
            ("FEEDLINE_KAFKA__TOPIC_PREFIX", prefix.to_owned()),
            (
                "FEEDLINE_KAFKA__REPLICATION_FACTOR",
                args.replication_factor.to_string(),
            ),
            ("FEEDLINE_HTTP__HOST", "127.0.0.1".to_owned()),
            ("FEEDLINE_HTTP__PORT", port.to_string()),
            ("FEEDLINE_REGISTRY__URL", registry_url.clone()),
            // A local, open registry (the other services ignore the setting).
            ("FEEDLINE_REGISTRY_SERVER__DEV_MODE", "true".to_owned()),
            ("FEEDLINE_CONFIG", config_file.display().to_string()),
        ];
        if let Some(db) = database {
            vars.push(("FEEDLINE_DATABASE__URL", db.to_owned()));
        }
        vars.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
    };
    let started_at = Instant::now();
    fleet
        .add(Kind::Registry, 1, ports[0], env(ports[0], None))
        .await?;
    fleet.ready(Some(Kind::Registry)).await?;
    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\nstatistics_interval_ms = 0\nreplication_factor = {}\n[registry]\nurl = \"{registry_url}\"\n",
        args.kafka, args.replication_factor
    ))?;
    feedline::contracts::register_all(&RegistryClient::new(&settings.registry), &settings.kafka)
        .await
        .context("failed to register the schemas")?;
    let members = [
        (Kind::Orders, 1, ports[1], Some(orders_url)),
        (Kind::Orders, 2, ports[2], Some(orders_url)),
        (Kind::Customers, 1, ports[3], Some(customers_url)),
        (Kind::Customers, 2, ports[4], Some(customers_url)),
    ];
    for (kind, replica, port, db) in members {
        fleet.add(kind, replica, port, env(port, db)).await?;
    }
    for (replica, port) in [(1, ports[5]), (2, ports[6])] {
        let db = format!("sqlite:{}", view_files[replica - 1]);
        fleet
            .add(Kind::OrderView, replica, port, env(port, Some(&db)))
            .await?;
    }
    fleet.ready(None).await?;
    let mut gateway = env(ports[7], None);
    // The load runs as the demo client, which only dev mode allows.
    gateway.push(("FEEDLINE_GATEWAY__DEV_MODE".into(), "true".to_owned()));
    // The gateway reads through order-view replica 1 only, not the replicas the Directory
    // finds: the feed check follows one replica's change log (a feed's event ids are that
    // replica's), and replica 2 is checked from its file.
    gateway.push((
        "FEEDLINE_GATEWAY__ORDER_VIEW_URL".into(),
        format!("http://127.0.0.1:{}", ports[5]),
    ));
    gateway.push((
        "FEEDLINE_GATEWAY__DISCOVER_ORDER_VIEW".into(),
        "false".to_owned(),
    ));
    fleet.add(Kind::Gateway, 1, ports[7], gateway).await?;
    fleet.ready(None).await?;
    eprintln!(
        "  every service ready after {:.1} s: {:?}",
        started_at.elapsed().as_secs_f64(),
        fleet.pids().await
    );
    let supervise = CancellationToken::new();
    let supervisor = fleet.supervise(supervise.clone());

    let client =
        Arc::new(load::Client::new(format!("http://127.0.0.1:{}", ports[7]), http.clone()).await?);
    let customers = Arc::new(client.customers(plan.customers).await?);
    eprintln!("  {} customers registered", customers.len());
    let orders_db = PgPool::connect(orders_url).await?;
    let customers_db = PgPool::connect(customers_url).await?;

    let stop_feeds = CancellationToken::new();
    let feeds: Vec<_> = customers
        .iter()
        .take(plan.feed_clients)
        .map(|c| feed::watch(client.clone(), c.id.clone(), stop_feeds.clone()))
        .collect();

    let started = Instant::now();
    let counters = Arc::new(load::Counters::default());
    let stop_load = CancellationToken::new();
    let loader = tokio::spawn(load::run(
        client.clone(),
        customers.clone(),
        plan.rate,
        Duration::from_secs_f64(plan.give_up),
        started,
        counters.clone(),
        stop_load.clone(),
    ));
    let stop_sampler = CancellationToken::new();
    let sampler = tokio::spawn(sample(
        orders_db.clone(),
        counters.clone(),
        started,
        stop_sampler.clone(),
    ));

    // The schedule runs beside the load: the load stops on time (so a run offers the orders
    // it was asked for) even when a fault takes longer than planned.
    // With a budget, the load ends early enough for the answers still outstanding, the drain
    // and the checks.
    let load_end = (started + Duration::from_secs_f64(plan.seconds))
        .min(budget.map_or(far_future(), |b| b - Duration::from_secs(50)));
    let stop_faults = CancellationToken::new();
    let schedule = tokio::spawn(schedule(
        plan.clone(),
        fleet.clone(),
        infra.clone(),
        settings.clone(),
        client.clone(),
        started,
        budget.map(|_| load_end),
        stop_faults.clone(),
    ));
    // Waiting for the schedule's time, not for a condition.
    tokio::time::sleep_until(load_end.into()).await;
    stop_load.cancel();
    stop_faults.cancel();
    eprintln!(
        "  load stopped at {:.1} s; waiting for the answers still outstanding and the fault in progress",
        started.elapsed().as_secs_f64()
    );
    let (injections, poison_sent, skipped) = schedule.await.context("the fault schedule failed")?;
    let records = loader.await.context("the load task failed")?;
    eprintln!("  {} orders offered; checking", records.len());

    let deadline = within(budget, Duration::from_secs_f64(plan.drain), 15);
    let rows = check::wait_settled(&orders_db, &records, deadline).await?;
    let fate = check::fate(&records, &rows);
    let mut checks = vec![
        check::Check {
            name: "every accepted order exists once, in a final state".into(),
            passed: fate.lost == 0 && fate.duplicated == 0 && fate.stuck == 0,
            detail: format!(
                "{} accepted: {} lost, {} duplicated, {} stuck{}",
                fate.accepted,
                fate.lost,
                fate.duplicated,
                fate.stuck,
                if fate.examples.is_empty() {
                    String::new()
                } else {
                    format!("; e.g. {}", fate.examples.join("; "))
                }
            ),
        },
        check::credit(&customers_db, &rows).await,
    ];
    // The rest may still be catching up; each polls within one shared deadline.
    let deadline = within(
        budget,
        Duration::from_secs(if plan.smoke { 15 } else { 60 }),
        3,
    );
    for (i, file) in view_files.iter().enumerate() {
        checks.push(check::view(file, i + 1, &orders_db, deadline).await);
    }
    checks.push(check::outbox("orders", &orders_db, deadline).await);
    checks.push(check::outbox("customers", &customers_db, deadline).await);
    for (watched, _) in &feeds {
        checks.push(check::feed(watched, &view_files[0], &rows, deadline).await);
    }
    stop_feeds.cancel();
    let mut feed_state = Vec::new();
    for (watched, task) in feeds {
        let _ = task.await;
        let w = watched.lock().expect("poisoned");
        feed_state.push(serde_json::json!({
            "customer": w.customer, "events": w.events.len(), "reconnects": w.reconnects,
            "last_error": w.last_error,
        }));
    }
    let kafka = settings.kafka.clone();
    let dead_letters =
        tokio::task::spawn_blocking(move || check::dead_letters(&kafka, feedline_schemas::TOPICS))
            .await??;
    checks.extend(check::poison(&dead_letters, &poison_sent));
    let exits = fleet.unexpected_exits();
    checks.push(check::Check {
        name: "no service exited on its own".into(),
        passed: exits.is_empty(),
        detail: if exits.is_empty() {
            "every exit was a kill by the harness".into()
        } else {
            exits
                .iter()
                .map(|e| format!("{} at {:.1} s ({})", e.service, e.at, e.status))
                .collect::<Vec<_>>()
                .join("; ")
        },
    });
    supervise.cancel();
    let _ = supervisor.await;
    stop_sampler.cancel();
    let samples = sampler.await.context("the sampler failed")?;
    orders_db.close().await;
    customers_db.close().await;
    Ok(Run {
        records,
        injections,
        poison: poison_sent,
        samples,
        fate,
        checks,
        exits,
        dead_letters,
        retries: counters.retries.load(Ordering::Relaxed),
        feeds: feed_state,
        skipped,
    })
}

/// A deadline `wait` from now, but `reserve` seconds before the end of the budget (and never
/// less than three seconds from now, so a check still looks once).
fn within(budget: Option<Instant>, wait: Duration, reserve: u64) -> Instant {
    let now = Instant::now();
    let deadline = now + wait;
    match budget {
        Some(end) => deadline
            .min(end.checked_sub(Duration::from_secs(reserve)).unwrap_or(now))
            .max(now + Duration::from_secs(3)),
        None => deadline,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// What the schedule did: the faults injected, the poison sent, and the faults it did not
/// inject (no command for them, or no time left).
type Schedule = (Vec<Injection>, Vec<poison::Poison>, Vec<String>);

/// Injects one fault every interval from the warm-up on, none in the last stretch of the
/// load (so the last one's recovery is seen under load too), none after `stop`; with a
/// budget (`load_end`), none that would not end well before the load does.
#[allow(clippy::too_many_arguments)]
async fn schedule(
    plan: Plan,
    fleet: Arc<Fleet>,
    infra: InfraCommands,
    settings: Settings,
    client: Arc<load::Client>,
    started: Instant,
    load_end: Option<Instant>,
    stop: CancellationToken,
) -> Schedule {
    let mut injections = Vec::new();
    let mut poison_sent = Vec::new();
    let mut skipped = Vec::new();
    let last_start = plan.seconds - plan.interval.max(10.0);
    let mut nth = std::collections::HashMap::<FaultKind, usize>::new();
    let runnable: Vec<FaultKind> = plan
        .faults
        .iter()
        .copied()
        .filter(|k| infra.supports(*k))
        .collect();
    for kind in plan.faults.iter().filter(|k| !infra.supports(**k)) {
        skipped.push((*kind, format!("{}: no command for it", kind.name())));
    }
    let mut i = 0usize;
    let mut previous_end = started;
    while !runnable.is_empty() {
        let at = plan.warm_up + plan.interval * i as f64;
        let kind = runnable[i % runnable.len()];
        // At least half an interval after the previous fault ended: after a slow one (a
        // Kafka restart can take minutes on a busy machine) the next ones must not come in a
        // burst, or their recoveries would overlap and none could be read.
        let due = (started + Duration::from_secs_f64(at))
            .max(previous_end + Duration::from_secs_f64(plan.interval / 2.0));
        // None starts in the load's last stretch.
        let late = Instant::now().max(due);
        if at > last_start || late > started + Duration::from_secs_f64(last_start) {
            for k in runnable.iter().filter(|k| !nth.contains_key(k)) {
                skipped.push((*k, format!("{}: no time left in the run", k.name())));
            }
            break;
        }
        // With a budget, a fault that would not end well before the load does is passed
        // over for the next kind, which may be quicker.
        if let Some(end) = load_end
            && late + Duration::from_secs_f64(kind.typical_seconds() + 10.0) > end
        {
            skipped.push((
                kind,
                format!(
                    "{}: would not end within the smoke run's 3-minute budget",
                    kind.name()
                ),
            ));
            i += 1;
            continue;
        }
        // Waiting for the schedule's time, not for a condition.
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let n = nth.entry(kind).or_default();
        let injection = if kind == FaultKind::Poison {
            let at = started.elapsed().as_secs_f64();
            let (target, error) = match poison::send(&settings, &client).await {
                Ok(sent) => {
                    let target = sent
                        .iter()
                        .map(|p| p.what.clone())
                        .collect::<Vec<_>>()
                        .join(", ");
                    poison_sent.extend(sent);
                    (target, None)
                }
                Err(e) => (String::new(), Some(format!("{e:#}"))),
            };
            Injection {
                kind,
                target,
                at,
                restarted: None,
                ready: None,
                error,
            }
        } else {
            faults::inject(
                kind,
                *n,
                Duration::from_secs_f64(plan.down),
                &fleet,
                &infra,
                started,
            )
            .await
        };
        *n += 1;
        eprintln!(
            "  [{:>6.1} s] {} {}: {}",
            injection.at,
            injection.kind.name(),
            injection.target,
            match (&injection.error, injection.ready) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, Some(r)) => format!("ready again after {:.1} s", r - injection.at),
                (None, None) => "sent".into(),
            }
        );
        injections.push(injection);
        previous_end = Instant::now();
        i += 1;
    }
    // A kind passed over once and injected later was not skipped; one passed over twice is
    // named once.
    let mut named = std::collections::HashSet::new();
    let skipped = skipped
        .into_iter()
        .filter(|(k, _)| !nth.contains_key(k) && named.insert(*k))
        .map(|(_, why)| why)
        .collect();
    (injections, poison_sent, skipped)
}

/// Samples the clients' accepted count and the settled count in the orders database twice a
/// second, until `stop`.
async fn sample(
    db: PgPool,
    counters: Arc<load::Counters>,
    started: Instant,
    stop: CancellationToken,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return samples,
            _ = tick.tick() => {}
        }
        let accepted = counters.accepted.load(Ordering::Relaxed);
        // A database that is down answers nothing: the sample says so instead of waiting.
        let settled = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE status <> 'PENDING'")
                .fetch_one(&db),
        )
        .await
        .ok()
        .and_then(Result::ok);
        samples.push(Sample {
            t: started.elapsed().as_secs_f64(),
            accepted,
            settled,
        });
    }
}
