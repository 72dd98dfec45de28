//! The faults: what each one does, and the commands that stop and start the harness's own
//! Kafka and PostgreSQL. Every fault is real: SIGKILL to a service process or a broker's
//! JVM, a whole Kafka cluster or PostgreSQL server stopped and started again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use super::services::{Fleet, Kind};

/// The kinds of fault the schedule cycles through.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of an orders replica, started again after the down time.
    Orders,
    /// kill -9 of a customers replica.
    Customers,
    /// kill -9 of order-view replica 1 (the one behind the gateway and its feed clients).
    OrderView,
    /// kill -9 of the gateway.
    Gateway,
    /// kill -9 of the schema registry.
    Registry,
    /// kill -9 of one of the three brokers' JVM, then `start-broker` for it.
    Broker,
    /// Every broker stopped, then started: Kafka unavailable for the down time.
    Kafka,
    /// PostgreSQL stopped and started.
    Postgres,
    /// Poison inputs: a customer name with NUL through the gateway, undecodable bytes and
    /// valid Avro with bad data straight onto the command topics.
    Poison,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Orders => "kill -9 orders",
            FaultKind::Customers => "kill -9 customers",
            FaultKind::OrderView => "kill -9 order-view",
            FaultKind::Gateway => "kill -9 gateway",
            FaultKind::Registry => "kill -9 registry",
            FaultKind::Broker => "kill -9 one broker of three",
            FaultKind::Kafka => "Kafka restart (all brokers)",
            FaultKind::Postgres => "PostgreSQL restart",
            FaultKind::Poison => "poison inputs",
        }
    }

    /// About how long one takes on an idle 2-core machine, down time included: what a
    /// smoke run's budget plans with.
    pub fn typical_seconds(self) -> f64 {
        match self {
            FaultKind::Broker => 30.0,
            FaultKind::Kafka => 45.0,
            FaultKind::Poison => 2.0,
            _ => 10.0,
        }
    }

    pub fn service(self) -> Option<Kind> {
        match self {
            FaultKind::Orders => Some(Kind::Orders),
            FaultKind::Customers => Some(Kind::Customers),
            FaultKind::OrderView => Some(Kind::OrderView),
            FaultKind::Gateway => Some(Kind::Gateway),
            FaultKind::Registry => Some(Kind::Registry),
            _ => None,
        }
    }
}

/// The shell commands that act on the infrastructure the harness may restart. `{n}` in the
/// broker commands is the broker's number (1..3). They run with `bash -c` in the repository
/// root, with `FEEDLINE_STATE` and `FEEDLINE_PG_PORT` set for the infra scripts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InfraCommands {
    pub kafka_stop: String,
    pub kafka_start: String,
    pub broker_kill: String,
    pub broker_start: String,
    pub postgres_stop: String,
    pub postgres_start: String,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub log: PathBuf,
}

impl InfraCommands {
    /// Whether this kind of fault has the commands it needs (an empty command skips it).
    pub fn supports(&self, kind: FaultKind) -> bool {
        match kind {
            FaultKind::Broker => !self.broker_kill.is_empty() && !self.broker_start.is_empty(),
            FaultKind::Kafka => !self.kafka_stop.is_empty() && !self.kafka_start.is_empty(),
            FaultKind::Postgres => {
                !self.postgres_stop.is_empty() && !self.postgres_start.is_empty()
            }
            _ => true,
        }
    }

    /// Runs one command to its end; its output goes to the run's infra log.
    pub async fn run(&self, what: &str, command: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("failed to open {}", self.log.display()))?;
        writeln!(log, "==== chaos: {what}: {command}")?;
        let status = Command::new("bash")
            .arg("-c")
            .arg(command)
            .current_dir(&self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("failed to run `{command}`"))?;
        anyhow::ensure!(
            status.success(),
            "`{command}` ({what}) exited with {status}; see {}",
            self.log.display()
        );
        Ok(())
    }
}

/// One injected fault, as it happened. Times are seconds since the load started.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Injection {
    pub kind: FaultKind,
    pub target: String,
    pub at: f64,
    /// When the thing was started again (the start command returned, or the process was
    /// spawned); `None` for poison, which has nothing to restart.
    pub restarted: Option<f64>,
    /// When everything answered ready again.
    pub ready: Option<f64>,
    pub error: Option<String>,
}

/// Injects one fault of `kind`, keeps it for `down`, and undoes it. `nth` picks the replica
/// or broker, so repeated faults of a kind move around.
pub async fn inject(
    kind: FaultKind,
    nth: usize,
    down: Duration,
    fleet: &Fleet,
    infra: &InfraCommands,
    started: Instant,
) -> Injection {
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    let mut injection = Injection {
        kind,
        target: String::new(),
        at: since(Instant::now()),
        restarted: None,
        ready: None,
        error: None,
    };
    let outcome: anyhow::Result<()> = async {
        match kind {
            FaultKind::Poison => unreachable!("poison is sent by the harness itself"),
            FaultKind::Broker => {
                let n = nth % 3 + 1;
                injection.target = format!("broker {n}");
                injection.at = since(Instant::now());
                infra
                    .run(
                        "kill a broker",
                        &infra.broker_kill.replace("{n}", &n.to_string()),
                    )
                    .await?;
                tokio::time::sleep(down).await;
                let start = infra.broker_start.replace("{n}", &n.to_string());
                infra.run("start the broker", &start).await?;
                injection.restarted = Some(since(Instant::now()));
            }
            FaultKind::Kafka => {
                injection.target = "every broker".into();
                injection.at = since(Instant::now());
                infra.run("stop Kafka", &infra.kafka_stop).await?;
                tokio::time::sleep(down).await;
                infra.run("start Kafka", &infra.kafka_start).await?;
                injection.restarted = Some(since(Instant::now()));
            }
            FaultKind::Postgres => {
                injection.target = "PostgreSQL".into();
                injection.at = since(Instant::now());
                infra.run("stop PostgreSQL", &infra.postgres_stop).await?;
                tokio::time::sleep(down).await;
                infra.run("start PostgreSQL", &infra.postgres_start).await?;
                injection.restarted = Some(since(Instant::now()));
            }
            service => {
                let service = service.service().expect("a service fault");
                let replica = match service {
                    // Replica 1 is the one behind the gateway: its feed clients must
                    // reconnect across its restart.
                    Kind::OrderView | Kind::Registry | Kind::Gateway => 1,
                    _ => nth % 2 + 1,
                };
                injection.at = since(Instant::now());
                let pid = fleet.kill(service, replica).await?;
                injection.target = format!("{}#{replica} (pid {pid})", service.name());
                tokio::time::sleep(down).await;
                fleet.restart(service, replica).await?;
                injection.restarted = Some(since(Instant::now()));
            }
        }
        fleet.ready(None).await?;
        injection.ready = Some(since(Instant::now()));
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        injection.error = Some(format!("{e:#}"));
    }
    injection
}
