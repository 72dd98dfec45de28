//! The fleet: every service as its own supervised child process, replicas included. The
//! harness kills members with SIGKILL and starts them again on the same port with the same
//! database, as a crashed pod comes back; a member that exits while nobody killed it is a
//! finding, recorded with its log and started again so the run goes on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Child;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::processes::{binary, child_command, tail};

/// The pause before restarting a member that exited on its own, doubling up to the maximum
/// while it keeps exiting.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// How long a service may take from spawn to ready: consumers create topics and join their
/// groups first, and after a broker or database fault they may retry for a while.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The kinds of service, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Registry,
    Orders,
    Customers,
    OrderView,
    Gateway,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Registry => "registry",
            Kind::Orders => "orders",
            Kind::Customers => "customers",
            Kind::OrderView => "order-view",
            Kind::Gateway => "gateway",
        }
    }
}

/// One member of the fleet: what it takes to start it again exactly as before.
#[derive(Debug)]
struct Member {
    kind: Kind,
    replica: usize,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
    /// Set while the harness has it down on purpose, so the supervisor leaves it alone.
    held: bool,
    /// After an exit of its own: when the supervisor may start it again, and the pause
    /// after the next such exit. A service that cannot start (its database is down) would
    /// otherwise be restarted five times a second; this backs off as an orchestrator does.
    restart_at: Option<Instant>,
    backoff: Duration,
    /// When it was last started.
    started: Instant,
}

impl Member {
    fn label(&self) -> String {
        format!("{}#{}", self.kind.name(), self.replica)
    }
}

/// A service that exited without the harness killing it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnexpectedExit {
    pub service: String,
    pub status: String,
    /// Seconds since the fleet started.
    pub at: f64,
    pub log_tail: String,
}

#[derive(Debug)]
pub struct Fleet {
    members: Mutex<Vec<Member>>,
    exits: std::sync::Mutex<Vec<UnexpectedExit>>,
    http: reqwest::Client,
    started: Instant,
    pub dir: PathBuf,
}

/// What a readiness probe answered.
enum Probe {
    Ready,
    NotReady,
}

impl Fleet {
    pub fn new(dir: PathBuf, http: reqwest::Client) -> Arc<Fleet> {
        Arc::new(Fleet {
            members: Mutex::new(Vec::new()),
            exits: std::sync::Mutex::new(Vec::new()),
            http,
            started: Instant::now(),
            dir,
        })
    }

    /// Adds a member and starts it; does not wait for it to be ready.
    pub async fn add(
        &self,
        kind: Kind,
        replica: usize,
        port: u16,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<SocketAddr> {
        let mut member = Member {
            kind,
            replica,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            env,
            log: self.dir.join(format!("{}-{replica}.log", kind.name())),
            child: None,
            pid: None,
            held: false,
            restart_at: None,
            backoff: RESTART_BACKOFF_MIN,
            started: Instant::now(),
        };
        spawn(&mut member)?;
        let addr = member.addr;
        self.members.lock().await.push(member);
        Ok(addr)
    }

    /// Every member's label and pid (pids of the living ones).
    pub async fn pids(&self) -> Vec<(String, u32)> {
        self.members
            .lock()
            .await
            .iter()
            .filter_map(|m| Some((m.label(), m.pid?)))
            .collect()
    }

    /// SIGKILL to one member (no shutdown, no drain: a crash), reaped before returning; the
    /// supervisor leaves it down until [`Fleet::restart`].
    pub async fn kill(&self, kind: Kind, replica: usize) -> anyhow::Result<u32> {
        let mut members = self.members.lock().await;
        let member = members
            .iter_mut()
            .find(|m| m.kind == kind && m.replica == replica)
            .with_context(|| format!("no {}#{replica} in the fleet", kind.name()))?;
        member.held = true;
        member.restart_at = None;
        // Already down (it exited on its own and waits for its restart): nothing to kill.
        let Some(mut child) = member.child.take() else {
            return Ok(0);
        };
        let pid = member.pid.take().unwrap_or(0);
        child
            .start_kill()
            .with_context(|| format!("failed to kill {}", member.label()))?;
        child.wait().await?;
        Ok(pid)
    }

    /// Starts a killed member again, as it was; does not wait for it to be ready.
    pub async fn restart(&self, kind: Kind, replica: usize) -> anyhow::Result<u32> {
        let mut members = self.members.lock().await;
        let member = members
            .iter_mut()
            .find(|m| m.kind == kind && m.replica == replica)
            .with_context(|| format!("no {}#{replica} in the fleet", kind.name()))?;
        spawn(member)?;
        member.held = false;
        member.restart_at = None;
        Ok(member.pid.unwrap_or(0))
    }

    /// Polls until every member of `kind` (all when `None`) answers ready; fails with the
    /// log of one that is not after [`READY_WITHIN`].
    pub async fn ready(&self, kind: Option<Kind>) -> anyhow::Result<()> {
        let targets: Vec<(String, SocketAddr, PathBuf)> = self
            .members
            .lock()
            .await
            .iter()
            .filter(|m| kind.is_none_or(|k| m.kind == k))
            .map(|m| (m.label(), m.addr, m.log.clone()))
            .collect();
        for (label, addr, log) in targets {
            let started = Instant::now();
            loop {
                if let Ok(Probe::Ready) = self.probe(addr).await {
                    break;
                }
                if started.elapsed() > READY_WITHIN {
                    anyhow::bail!(
                        "{label} not ready within {READY_WITHIN:?}; its log:\n{}",
                        tail(&log, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// `/health/ready` where a service has it (200 ready, 503 not yet), else `/health`.
    async fn probe(&self, addr: SocketAddr) -> anyhow::Result<Probe> {
        let get = |path: &str| {
            self.http
                .get(format!("http://{addr}{path}"))
                .timeout(Duration::from_secs(2))
                .send()
        };
        let answer = get("/health/ready").await?;
        let status = answer.status();
        if status.is_success() {
            return Ok(Probe::Ready);
        }
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return Ok(Probe::NotReady);
        }
        let answer = get("/health").await?;
        Ok(if answer.status().is_success() {
            Probe::Ready
        } else {
            Probe::NotReady
        })
    }

    /// Watches every member the harness did not take down: one that exited is recorded and
    /// started again, so one crash does not end the run.
    pub fn supervise(self: &Arc<Self>, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mut members = fleet.members.lock().await;
                for member in members.iter_mut().filter(|m| !m.held) {
                    if member.restart_at.is_some_and(|at| at <= Instant::now()) {
                        member.restart_at = None;
                        if let Err(e) = spawn(member) {
                            eprintln!("  !! could not start {} again: {e:#}", member.label());
                        }
                        continue;
                    }
                    let Some(child) = member.child.as_mut() else {
                        continue;
                    };

                    let Ok(Some(status)) = child.try_wait() else {
                        continue;
                    };
                    // One that had stayed up a while earns a quick restart again.
                    if member.started.elapsed() > RESTART_BACKOFF_MAX * 4 {
                        member.backoff = RESTART_BACKOFF_MIN;
                    }
                    let exit = UnexpectedExit {
                        service: member.label(),
                        status: status.to_string(),
                        at: fleet.started.elapsed().as_secs_f64(),
                        log_tail: tail(&member.log, 8),
                    };
                    eprintln!(
                        "  !! {} exited on its own ({}) at {:.1} s; starting it again in {:?}",
                        exit.service, exit.status, exit.at, member.backoff
                    );
                    fleet.exits.lock().expect("poisoned").push(exit);
                    member.child = None;
                    member.pid = None;
                    member.restart_at = Some(Instant::now() + member.backoff);
                    member.backoff = (member.backoff * 2).min(RESTART_BACKOFF_MAX);
                }
            }
        })
    }

    pub fn unexpected_exits(&self) -> Vec<UnexpectedExit> {
        self.exits.lock().expect("poisoned").clone()
    }

    /// Kills every member and waits for it, so nothing outlives the run.
    pub async fn stop(&self) {
        let mut members = self.members.lock().await;
        for member in members.iter_mut() {
            member.held = true;
            if let Some(mut child) = member.child.take() {
                let _ = child.kill().await;
            }
        }
    }
}

fn spawn(member: &mut Member) -> anyhow::Result<()> {
    let path = binary(member.kind.name())?;
    // Appended, so one file tells a member's whole story across restarts.
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&member.log)
        .with_context(|| format!("failed to open {}", member.log.display()))?;
    use std::io::Write as _;
    writeln!(
        out,
        "==== chaos: starting {} at {}",
        member.label(),
        chrono::Utc::now().to_rfc3339()
    )?;
    let mut command = child_command(&path);
    command
        .envs(member.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        // The error chain, not a backtrace, is what the log tail of a crash should show.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("failed to start {}", path.display()))?;
    member.pid = child.id();
    member.child = Some(child);
    member.started = Instant::now();
    Ok(())
}
