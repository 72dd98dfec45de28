//! One service process under supervision: started with its environment, its output
//! prefixed on the console (or appended to its log file), restarted with backoff whenever it
//! exits, and stopped with SIGTERM, then SIGKILL once its grace period is over.

use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use feedline::CancellationToken;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::plan::{self, SERVICE_PREFIX};

/// The first wait before a restart; it doubles with each quick exit up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long was healthy: its next exit waits [`BACKOFF_START`] again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Where the children's output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Each line on the parent's stdout or stderr (as the child wrote it), after the
    /// child's label padded to `width`.
    Console { width: usize },
    /// Appended to `<dir>/<label>.log`, across restarts.
    Files(PathBuf),
}

/// A child process kept running until [`Supervised::stop`].
#[derive(Debug)]
pub struct Supervised {
    pub label: String,
    pub part: &'static str,
    pub url: String,
    /// The running process's id; 0 between an exit and the restart.
    pid: Arc<AtomicU32>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervised {
    pub fn start(child: plan::Child, output: Output, grace: Duration) -> Self {
        let pid = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let label = child.label.clone();
        let part = child.part;
        let url = child.url.clone();
        let task = tokio::spawn(supervise(child, output, pid.clone(), stop.clone(), grace));
        Supervised {
            label,
            part,
            url,
            pid,
            stop,
            task,
        }
    }

    /// The running process's id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&pid| pid != 0)
    }

    /// Asks the process to stop (SIGTERM) and not to come back; [`Supervised::stopped`]
    /// waits for it.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            eprintln!("{}: supervisor task failed: {e}", self.label);
        }
    }
}

async fn supervise(
    child: plan::Child,
    output: Output,
    pid: Arc<AtomicU32>,
    stop: CancellationToken,
    grace: Duration,
) {
    let label = &child.label;
    let mut backoff = Backoff::default();
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let why = match spawn(&child, &output) {
            Ok(running) => {
                let id = running.process.id().unwrap_or_default();
                pid.store(id, Ordering::Relaxed);
                if restarts > 0 {
                    println!("{label} restarted (pid {id})");
                }
                let ended = run(running, &stop, grace, label).await;
                pid.store(0, Ordering::Relaxed);
                match ended {
                    Ended::Stopped => return,
                    Ended::Exited(status) => format!("exited ({})", describe(status)),
                    Ended::Lost(e) => format!("was lost ({e:#})"),
                }
            }
            Err(e) => format!("failed to start ({e:#})"),
        };
        let wait = backoff.after_exit(started.elapsed());
        println!("{label} {why}; restarting in {} s", wait.as_secs());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        restarts += 1;
    }
}

/// The waits before restarts: a process that keeps exiting is restarted less and less
/// often, so a crash loop costs little, while one that ran well is back at once.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before restarting a process that exited after running for `ran`.
    fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.next = BACKOFF_START;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }
}

struct Running {
    process: Child,
    /// The tasks copying its output to the console; they end when its pipes close.
    pumps: Vec<JoinHandle<()>>,
}

enum Ended {
    /// Stopped on request.
    Stopped,
    Exited(ExitStatus),
    /// Waiting on it failed; it is killed, so it cannot run on unsupervised.
    Lost(std::io::Error),
}

fn spawn(child: &plan::Child, output: &Output) -> anyhow::Result<Running> {
    let mut command = command(&child.program);
    command
        .envs(child.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // Its own process group: Ctrl-C in the terminal reaches `feedline up` alone, which
        // stops the services in order instead of all of them at once.
        .process_group(0)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(SERVICE_PREFIX) {
            command.env_remove(key);
        }
    }
    // The services log at info by default: on a shared console that drowns the demo.
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let to_terminal = matches!(output, Output::Console { .. }) && std::io::stdout().is_terminal();
    if !to_terminal && std::env::var_os("NO_COLOR").is_none() {
        command.env("NO_COLOR", "1");
    }
    match output {
        Output::Console { .. } => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Output::Files(dir) => {
            let path = dir.join(format!("{}.log", child.label));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("failed to open {}", path.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
    }
    let mut process = command
        .spawn()
        .with_context(|| format!("failed to run {}", child.program.display()))?;
    let mut pumps = Vec::new();
    if let Output::Console { width } = output {
        let prefix = format!("{:<width$} | ", child.label);
        if let Some(out) = process.stdout.take() {
            pumps.push(tokio::spawn(pump(out, prefix.clone(), false)));
        }
        if let Some(err) = process.stderr.take() {
            pumps.push(tokio::spawn(pump(err, prefix, true)));
        }
    }
    Ok(Running { process, pumps })
}

/// The command that runs `program`: under `setpriv --pdeathsig KILL` where installed, so the
/// service dies with `feedline up` even when that is killed with no chance to stop it.
fn command(program: &std::path::Path) -> Command {
    let setpriv = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("setpriv"))
            .find(|path| path.is_file())
    });
    match setpriv {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

async fn pump(from: impl AsyncRead + Unpin, prefix: String, stderr: bool) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if stderr {
            eprintln!("{prefix}{line}");
        } else {
            println!("{prefix}{line}");
        }
    }
}

/// Runs until the process exits or a stop is asked for; on a stop, SIGTERM, then SIGKILL
/// after `grace`.
async fn run(
    mut running: Running,
    stop: &CancellationToken,
    grace: Duration,
    label: &str,
) -> Ended {
    let ended = tokio::select! {
        status = running.process.wait() => match status {
            Ok(status) => Ended::Exited(status),
            Err(e) => {
                let _ = running.process.kill().await;
                Ended::Lost(e)
            }
        },
        _ = stop.cancelled() => {
            terminate(&mut running.process, grace, label).await;
            Ended::Stopped
        }
    };
    // The last lines it wrote, before the line saying it exited.
    for pump in running.pumps {
        let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
    }
    ended
}

async fn terminate(process: &mut Child, grace: Duration, label: &str) {
    // The process is not reaped until `wait` returns, so its id cannot name another process.
    if let Some(id) = process.id()
        && let Err(e) = signal(id, libc::SIGTERM)
    {
        eprintln!("{label}: cannot send SIGTERM: {e}");
    }
    match tokio::time::timeout(grace, process.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            println!("{label} stopped ({})", describe(status));
        }
        Ok(_) => {}
        Err(_) => {
            println!(
                "{label} did not stop within {} s; killing it",
                grace.as_secs()
            );
            let _ = process.kill().await;
        }
    }
}

/// Sends `signal` to process `pid` (kill(2)).
#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes two integers and touches none of this process's memory.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_limit_and_reset_after_a_good_run() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_secs(2);
        let waits: Vec<u64> = (0..7)
            .map(|_| backoff.after_exit(quick).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff.after_exit(STABLE_AFTER), BACKOFF_START);
        assert_eq!(backoff.after_exit(quick), Duration::from_secs(2));
    }

    #[test]
    fn exits_are_described_by_signal_or_status() {
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "status 1");
    }
}
