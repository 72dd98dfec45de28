//! The services as separate processes, so each one's resident memory can be measured: the
//! release binaries next to the bench binary, each configured through `FEEDLINE_*`
//! variables (the same layering a deployment uses), on ports picked here, with the
//! databases and topic prefix of the run.
//!
//! Children die with the bench on every path: `kill_on_drop` covers errors, panics and
//! Ctrl-C (main drops the running scenario on the signal); `setpriv --pdeathsig KILL`, where
//! installed, also covers the bench itself being killed.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::Settings;
use feedline::codec::RegistryClient;
use tokio::process::{Child, Command};

/// Where the services run: all in this process (`feedline_launcher::System`), or each as
/// its own child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    InProcess,
    Processes,
}

/// How long a service may take from spawn to answering `/health`: the consumers create
/// topics and join their groups first.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

/// What every child needs to know about the run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub orders_db: String,
    pub customers_db: String,
    pub view_db: String,
    /// TOML layered over every service's settings (`--service-config`); given to the
    /// children as their config file.
    pub extra: String,
}

#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

/// Every service running as a child process.
#[derive(Debug)]
pub struct Processes {
    pub services: Vec<Service>,
    pub gateway: SocketAddr,
    dir: PathBuf,
}

/// The binary of `service` next to the running bench binary.
pub(crate) fn binary(service: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to locate the bench binary")?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    let path = dir.join(format!("feedline-{service}"));
    anyhow::ensure!(
        path.is_file(),
        "{} not found next to the bench binary: build the services with `cargo build --release --workspace --bins` (or pass --services in-process)",
        path.display()
    );
    Ok(path)
}

/// Free ports for `n` services, all held until every one is picked so none repeats. Another
/// program could take one between here and the child binding it; the health wait would then
/// fail with the child's log, which says so.
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("failed to find free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// The command that runs service binary `path` as a child: killed with the bench (setpriv's
/// parent-death signal covers the bench itself being killed), and without the bench's own
/// FEEDLINE_* variables, which are for the bench (a child sees only the run's).
pub(crate) fn child_command(path: &Path) -> Command {
    let mut command = if on_path("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FEEDLINE_") {
            command.env_remove(key);
        }
    }
    command
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Processes {
    /// Starts the registry, registers the schemas (as `System::start` does), then orders,
    /// customers and order-view side by side, then the gateway pointed at order-view; each
    /// waited for until it answers `/health`.
    pub async fn start(config: &RunConfig, http: &reqwest::Client) -> anyhow::Result<Processes> {
        let dir = std::env::temp_dir().join(format!(
            "feedline-bench-{}",
            config.topic_prefix.trim_end_matches('-')
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let config_file = dir.join("services.toml");
        std::fs::write(&config_file, &config.extra)
            .with_context(|| format!("failed to write {}", config_file.display()))?;
        let ports = free_ports(5)?;
        let mut running = Processes {
            services: Vec::new(),
            gateway: SocketAddr::from(([127, 0, 0, 1], ports[4])),
            dir,
        };
        let registry_url = format!("http://127.0.0.1:{}", ports[0]);
        let env = |port: u16, database: Option<&str>| {
            let mut vars = vec![
                (
                    "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS",
                    config.bootstrap_servers.clone(),
                ),
                ("FEEDLINE_KAFKA__TOPIC_PREFIX", config.topic_prefix.clone()),
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
            vars
        };

        running
            .spawn("registry", ports[0], env(ports[0], None))
            .await?;
        running.healthy(http, "registry").await?;
        let schemas = Settings::from_toml(&format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{}\"\n[registry]\nurl = \"{registry_url}\"\n",
            config.bootstrap_servers, config.topic_prefix
        ))?;
        feedline::contracts::register_all(&RegistryClient::new(&schemas.registry), &schemas.kafka)
            .await
            .context("failed to register the schemas")?;

        let consumers = [
            ("orders", ports[1], &config.orders_db),
            ("customers", ports[2], &config.customers_db),
            ("order-view", ports[3], &config.view_db),
        ];
        for (name, port, db) in consumers {
            running
                .spawn(name, port, env(port, Some(db.as_str())))
                .await?;
        }
        for (name, _, _) in consumers {
            running.healthy(http, name).await?;
        }
        let mut gateway = env(ports[4], None);
        // The load runs as the demo client, which only dev mode allows.
        gateway.push(("FEEDLINE_GATEWAY__DEV_MODE", "true".to_owned()));
        gateway.push((
            "FEEDLINE_GATEWAY__ORDER_VIEW_URL",
            format!("http://127.0.0.1:{}", ports[3]),
        ));
        running.spawn("gateway", ports[4], gateway).await?;
        running.healthy(http, "gateway").await?;
        Ok(running)
    }

    async fn spawn(
        &mut self,
        name: &'static str,
        port: u16,
        vars: Vec<(&str, String)>,
    ) -> anyhow::Result<()> {
        let path = binary(name)?;
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let mut command = child_command(&path);
        command
            .envs(vars)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {}", path.display()))?;
        let pid = child.id().context("the child exited at once")?;
        self.services.push(Service {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid,
            child,
            log,
        });
        Ok(())
    }

    /// Waits until `name` answers `/health`; fails with its log if it exits or takes too long.
    async fn healthy(&mut self, http: &reqwest::Client, name: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let service = self
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .context("no such service")?;
        let url = format!("http://{}/health", service.addr);
        loop {
            if let Some(status) = service.child.try_wait()? {
                anyhow::bail!(
                    "{name} exited with {status} before it was healthy; its log:\n{}",
                    tail(&service.log, 20)
                );
            }
            let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                eprintln!(
                    "  {name} (pid {}) healthy on {} after {:.1} s",
                    service.pid,
                    service.addr,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if started.elapsed() > HEALTHY_WITHIN {
                anyhow::bail!(
                    "{name} not healthy within {HEALTHY_WITHIN:?}; its log:\n{}",
                    tail(&service.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills every child and waits for it, so nothing outlives the run; then removes the
    /// logs unless a service died on its own (the logs say why).
    pub async fn stop(mut self) -> Vec<String> {
        let mut died = Vec::new();
        for service in &mut self.services {
            if let Ok(Some(status)) = service.child.try_wait() {
                died.push(format!(
                    "{} exited during the run with {status}: {}",
                    service.name,
                    tail(&service.log, 5)
                ));
            }
            let _ = service.child.kill().await;
        }
        if died.is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("service logs kept in {}", self.dir.display());
        }
        died
    }
}
