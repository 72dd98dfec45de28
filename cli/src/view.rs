//! `feedline view rebuild`: a new generation of the read model beside the running one. It
//! starts an order-view process on a fresh database (a fresh file is a fresh consumer group,
//! so it replays every event topic from the start), shows its progress from the lag it
//! announces, and ends once the service directory serves reads from it: caught up and
//! ready. Until then the directory keeps reads on the caught-up generation; afterwards the
//! old instances can be stopped.

use std::io::{IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use feedline::discovery::{Directory, Instance};
use feedline::{CancellationToken, Settings};
use secrecy::ExposeSecret;

/// The service a rebuild starts a generation of.
const SERVICE: &str = "order-view";

#[derive(Debug, clap::Subcommand)]
pub enum ViewCommand {
    /// Build a new generation of the read model beside the running one, and move reads to
    /// it once it has caught up.
    ///
    /// Example: feedline view rebuild --database sqlite:/var/lib/feedline/order-view-2.db
    Rebuild(RebuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The new generation's database (a new SQLite file); default: order-view-<time>.db here.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// The new generation's HTTP port; default: a free one.
    #[arg(long)]
    port: Option<u16>,
    /// Where its log goes; default: the database file's name with `.log`.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// The order-view binary; default: feedline-order-view beside this feedline.
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
    /// How long the replay may take before the command gives up (the new generation keeps
    /// running), in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    within: u64,
}

pub async fn run(
    settings: &Settings,
    config: Option<&Path>,
    timeout: Duration,
    command: ViewCommand,
) -> anyhow::Result<bool> {
    let ViewCommand::Rebuild(args) = command;
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let directory = Directory::start(settings, token)
        .await
        .context("failed to read the service directory")?;
    anyhow::ensure!(
        directory.synced(timeout).await,
        "could not read the service directory within {timeout:?}: is Kafka at {} reachable?",
        settings.kafka.bootstrap_servers
    );
    let previous = directory.serving(SERVICE);

    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let database = args
        .database
        .unwrap_or_else(|| format!("sqlite:order-view-{stamp}.db"));
    let file = database
        .strip_prefix("sqlite:")
        .map(|f| f.split('?').next().unwrap_or(f).trim_start_matches("//"))
        .context(
            "--database must be a SQLite URL (sqlite:FILE): each generation has its own file",
        )?;
    anyhow::ensure!(
        !Path::new(file).exists(),
        "{file} exists: a rebuild needs a new file (pass another --database)"
    );
    let log = args
        .log
        .unwrap_or_else(|| PathBuf::from(format!("{file}.log")));
    let port = match args.port {
        Some(port) => port,
        None => free_port(&settings.http.host)?,
    };
    let binary = match args.binary {
        Some(binary) => binary,
        None => crate::up::service_binary(SERVICE)?,
    };

    let mut child = start(settings, config, &binary, &database, port, &log)?;
    let pid = child.id();
    println!(
        "started a new {SERVICE} generation: pid {pid}, port {port}, database {database}, log {}",
        log.display()
    );
    if previous.is_empty() {
        println!(
            "no {SERVICE} instance serves reads now: the new generation takes them once ready"
        );
    }

    let deadline = Instant::now() + Duration::from_secs(args.within);
    let mut bar = Progress::new();
    let instance = loop {
        if let Some(status) = child.try_wait()? {
            bar.finish();
            bail!(
                "the new generation exited ({status}) before it caught up; see {}",
                log.display()
            );
        }
        let mine = |i: &Instance| i.service == SERVICE && is_ours(i, pid, port);
        let known = directory.instances().into_iter().find(mine);
        if let Some(serving) = directory.serving(SERVICE).into_iter().find(mine) {
            bar.show(&serving);
            bar.finish();
            break serving;
        }
        if let Some(known) = &known {
            bar.show(known);
        }
        if Instant::now() > deadline {
            bar.finish();
            bail!(
                "the new generation (pid {pid}) did not catch up within {} s; it keeps running: watch it with `feedline status`",
                args.within
            );
        }
        let mut changes = directory.changes();
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    };
    println!(
        "{SERVICE} {} at {} has caught up and serves reads.",
        instance.instance_id, instance.url
    );
    let old: Vec<Instance> = previous
        .into_iter()
        .filter(|i| i.instance_id != instance.instance_id)
        .collect();
    if !old.is_empty() {
        println!("The previous generation can be stopped now (reads fail over to the new one):");
        for i in old {
            println!("  {} {}", i.instance_id, i.url);
        }
    }
    Ok(true)
}

/// The announcing instance is the process started here: its instance id ends with the pid
/// and its URL with the port.
fn is_ours(instance: &Instance, pid: u32, port: u16) -> bool {
    instance.instance_id.ends_with(&format!("-{pid}"))
        && instance
            .url
            .trim_end_matches('/')
            .ends_with(&format!(":{port}"))
}

/// Starts the binary in a process group of its own, so it outlives this command and a
/// Ctrl-C here does not reach it.
fn start(
    settings: &Settings,
    config: Option<&Path>,
    binary: &Path,
    database: &str,
    port: u16,
    log: &Path,
) -> anyhow::Result<Child> {
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let mut command = Command::new(binary);
    // What this command was pointed at (flags included) is what the new generation uses.
    command
        .env(
            "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS",
            &settings.kafka.bootstrap_servers,
        )
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &settings.kafka.topic_prefix)
        .env("FEEDLINE_REGISTRY__URL", &settings.registry.url)
        .env("FEEDLINE_DATABASE__URL", database)
        .env("FEEDLINE_HTTP__PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0);
    if let Some(config) = config {
        command.env("FEEDLINE_CONFIG", config);
    }
    if let Some(user) = &settings.registry.username {
        command.env("FEEDLINE_REGISTRY__USERNAME", user);
    }
    if let Some(password) = &settings.registry.password {
        command.env("FEEDLINE_REGISTRY__PASSWORD", password.expose_secret());
    }
    if let Some(ca) = &settings.registry.ca_location {
        command.env("FEEDLINE_REGISTRY__CA_LOCATION", ca);
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind((host, 0))
        .with_context(|| format!("cannot find a free port on {host}"))?;
    Ok(listener.local_addr()?.port())
}

/// The replay's progress: the lag announced against the largest lag seen, as a bar on a
/// terminal and as a line every few seconds otherwise.
struct Progress {
    started: Instant,
    largest: i64,
    tty: bool,
    last_line: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Progress {
            started: Instant::now(),
            largest: 0,
            tty: std::io::stdout().is_terminal(),
            last_line: None,
        }
    }

    fn show(&mut self, instance: &Instance) {
        let text = match instance.lag {
            None => "replaying: lag not known yet".to_owned(),
            Some(lag) => {
                self.largest = self.largest.max(lag);
                let done = if self.largest == 0 {
                    1.0
                } else {
                    (self.largest - lag) as f64 / self.largest as f64
                };
                let filled = (done * 30.0).round() as usize;
                format!(
                    "[{}{}] {:>3.0}%  lag {lag:>9}  ready {}  {:>4} s",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    done * 100.0,
                    if instance.ready { "yes" } else { "no " },
                    self.started.elapsed().as_secs()
                )
            }
        };
        if self.tty {
            print!("\r{text}");
            let _ = std::io::stdout().flush();
        } else if self
            .last_line
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(5))
        {
            println!("{text}");
            self.last_line = Some(Instant::now());
        }
    }

    fn finish(&mut self) {
        if self.tty {
            println!();
        }
    }
}
