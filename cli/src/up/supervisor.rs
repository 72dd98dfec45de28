//! The service processes of `feedline up`, together: started in order, each waited for until
//! it answers `/health/ready`, and stopped in the reverse order.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::{CancellationToken, Settings};

use super::children::{Output, Supervised};
use super::plan::{self, PARTS};

/// How long the processes of one start-up step may take to answer `/health/ready`: the
/// consumers create their topics and join their groups first, on a broker that may have just
/// started.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Every process started so far, in start order.
#[derive(Debug, Default)]
pub struct Processes {
    pub running: Vec<Supervised>,
}

/// How a start ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    Ready,
    /// Ctrl-C or SIGTERM during start-up.
    Cancelled,
}

impl Processes {
    /// Starts `children` (in start order): the registry first, and the schemas registered
    /// through it as `System::start` does; then orders, customers and order-view; then the
    /// gateway. Each step waits until its processes answer `/health/ready`. What started
    /// stays in `self` whatever the outcome, for [`Processes::stop`].
    pub async fn start(
        &mut self,
        children: Vec<plan::Child>,
        config: Option<&Path>,
        output: &Output,
        grace: Duration,
        token: &CancellationToken,
    ) -> anyhow::Result<Started> {
        let registry_url = children
            .iter()
            .find(|c| c.part == "registry")
            .map(|c| c.url.clone())
            .context("no registry to start")?;
        let steps: [&[&str]; 3] = [
            &["registry"],
            &["orders", "customers", "order-view"],
            &["gateway"],
        ];
        let mut children = children.into_iter().peekable();
        for (i, step) in steps.iter().enumerate() {
            eprintln!("starting {}...", step.join(", "));
            let first = self.running.len();
            while let Some(child) = children.next_if(|c| step.contains(&c.part)) {
                self.running
                    .push(Supervised::start(child, output.clone(), grace));
            }
            if !self.ready(first, token).await? {
                return Ok(Started::Cancelled);
            }
            if i == 0 {
                register_schemas(config, &registry_url).await?;
            }
        }
        Ok(Started::Ready)
    }

    /// Waits until the processes from `first` on answer `/health/ready` with 200; false if
    /// `token` is cancelled first.
    async fn ready(&self, first: usize, token: &CancellationToken) -> anyhow::Result<bool> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        loop {
            let mut waiting = Vec::new();
            for child in &self.running[first..] {
                let url = format!("{}/health/ready", child.url);
                match http.get(&url).timeout(Duration::from_secs(3)).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => waiting.push(format!("{}: {}", child.label, r.status())),
                    Err(e) => waiting.push(format!("{}: {e}", child.label)),
                }
            }
            if waiting.is_empty() {
                return Ok(true);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "not ready within {} s: {}",
                READY_WITHIN.as_secs(),
                waiting.join("; ")
            );
            tokio::select! {
                _ = token.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Stops the processes service by service in the reverse of the start order (gateway
    /// first, registry last); the replicas of one service together, each with SIGTERM and
    /// then, after its grace period, SIGKILL.
    pub async fn stop(mut self) {
        for part in PARTS.iter().rev() {
            let (these, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|c| c.part == part.name);
            self.running = rest;
            if these.is_empty() {
                continue;
            }
            eprintln!("stopping {}...", part.name);
            for child in &these {
                child.stop();
            }
            for child in these {
                child.stopped().await;
            }
        }
    }
}

async fn register_schemas(config: Option<&Path>, registry_url: &str) -> anyhow::Result<()> {
    let settings = Settings::load("", config)
        .context("failed to load configuration")?
        .with_overrides(&format!("[registry]\nurl = \"{registry_url}\"\n"))?;
    feedline::contracts::register_all(&RegistryClient::new(&settings.registry), &settings.kafka)
        .await
        .context("failed to register the schemas")?;
    Ok(())
}
