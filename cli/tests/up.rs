//! `feedline up` with every service as its own process, on the real broker and databases:
//! a fresh topic prefix, fresh databases and ports of its own (`--port-offset`). A replica
//! killed with SIGKILL comes back; Ctrl-C stops every process and exits 0.
//!
//! `cargo test` builds only this package's binary, so the test builds the service binaries
//! first, into the same directory (cargo's build lock is free while tests run).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SERVICES: [&str; 5] = ["registry", "orders", "customers", "order-view", "gateway"];
/// Every service's default port, and order-view's second replica's.
const PORTS: [u16; 6] = [8081, 8091, 8092, 8093, 8193, 8080];
/// How long start-up and a restart may take: consumers create topics and join groups, and a
/// replica killed without leaving its group waits out the group's session timeout.
const START_WITHIN: Duration = Duration::from_secs(150);

/// Builds the service binaries beside the `feedline` under test; fails saying how if they
/// cannot be built there.
fn build_services() {
    let feedline = Path::new(env!("CARGO_BIN_EXE_feedline"));
    let dir = feedline.parent().expect("the binary's directory");
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let target = dir.parent().expect("the target directory");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--bins"])
        .env("CARGO_TARGET_DIR", target)
        .stdout(Stdio::null());
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    for service in SERVICES {
        cargo.args(["-p", &format!("feedline-{service}")]);
    }
    let status = cargo.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the service binaries failed"
    );
    for service in SERVICES {
        let path = dir.join(format!("feedline-{service}"));
        assert!(
            path.is_file(),
            "{} missing after the build: build the services with `cargo build --bins`",
            path.display()
        );
    }
}

/// An offset at which every port the system needs is free now.
fn free_port_offset() -> u16 {
    let first: u16 = rand::random_range(10..50);
    (first..50)
        .chain(10..first)
        .map(|n| n * 1000)
        .find(|offset| {
            let held: Vec<_> = PORTS
                .iter()
                .map_while(|p| TcpListener::bind(("127.0.0.1", p + offset)).ok())
                .collect();
            held.len() == PORTS.len()
        })
        .expect("a free range of ports")
}

/// The console of `feedline up`, stdout and stderr, line by line.
struct Console {
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Console {
    fn new(child: &mut tokio::process::Child) -> Self {
        let (tx, lines) = mpsc::unbounded_channel();
        fn pump(from: impl AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
            tokio::spawn(async move {
                let mut lines = BufReader::new(from).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        pump(child.stdout.take().unwrap(), tx.clone());
        pump(child.stderr.take().unwrap(), tx);
        Console {
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that `matches`, failing the test after `within` or when the output ends.
    async fn until(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {what} within {within:?}; console:\n{}",
                        self.seen.join("\n")
                    )
                })
                .unwrap_or_else(|| {
                    panic!("the console ended before {what}:\n{}", self.seen.join("\n"))
                });
            eprintln!("up | {line}");
            self.seen.push(line.clone());
            if matches(&line) {
                return line;
            }
        }
    }

    /// Everything until the output ends.
    async fn rest(&mut self) {
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(10), self.lines.recv()).await
        {
            eprintln!("up | {line}");
            self.seen.push(line);
        }
    }
}

/// `label -> (url, pid)` from the banner's process lines.
fn banner(lines: &[String]) -> BTreeMap<String, (String, u32)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let label = words.next()?;
            let url = words.next()?.strip_suffix("/metrics")?;
            let pid = line.rsplit_once(" pid ")?.1.trim().parse().ok()?;
            Some((label.to_owned(), (url.to_owned(), pid)))
        })
        .collect()
}

async fn ready(http: &reqwest::Client, url: &str) -> bool {
    http.get(format!("{url}/health/ready"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn wait_ready(http: &reqwest::Client, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !ready(http, url).await {
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn up_runs_each_service_as_a_process_restarts_a_killed_one_and_stops_all_on_ctrl_c() {
    build_services();
    let prefix = feedline_testkit::random_prefix();
    let orders_db = feedline_testkit::fresh_database().await;
    let customers_db = feedline_testkit::fresh_database().await;
    let dir: PathBuf =
        std::env::temp_dir().join(format!("feedline-up-{}", prefix.trim_end_matches('-')));
    std::fs::create_dir_all(&dir).unwrap();
    let offset = free_port_offset();

    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"))
        .args([
            "up",
            "--no-infra",
            "--rate",
            "0",
            "--replicas",
            "order-view=2",
        ])
        .args(["--port-offset", &offset.to_string()])
        .env(
            "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS",
            feedline_testkit::kafka_bootstrap(),
        )
        .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &prefix)
        .env("FEEDLINE_UP__ORDERS__DATABASE__URL", &orders_db)
        .env("FEEDLINE_UP__CUSTOMERS__DATABASE__URL", &customers_db)
        .env(
            "FEEDLINE_UP__ORDER_VIEW__DATABASE__URL",
            format!("sqlite:{}/order-view.db", dir.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let up_pid = up.id().unwrap();
    let mut console = Console::new(&mut up);
    console
        .until("the banner", START_WITHIN, |l| {
            l.contains("Press Ctrl-C to stop everything")
        })
        .await;

    let processes = banner(&console.seen);
    let labels: Vec<&str> = processes.keys().map(String::as_str).collect();
    assert_eq!(
        labels,
        [
            "customers-1",
            "gateway-1",
            "order-view-1",
            "order-view-2",
            "orders-1",
            "registry-1"
        ],
        "{:#?}",
        console.seen
    );
    let http = reqwest::Client::new();
    let (view_1, _) = &processes["order-view-1"];
    let (view_2, killed) = processes["order-view-2"].clone();
    assert_eq!(view_1, &format!("http://127.0.0.1:{}", 8093 + offset));
    assert_eq!(view_2, format!("http://127.0.0.1:{}", 8193 + offset));
    for (label, (url, pid)) in &processes {
        assert!(
            ready(&http, url).await,
            "{label} at {url} not ready after the banner"
        );
        assert!(alive(*pid), "{label}'s pid {pid} is not running");
    }
    assert!(
        dir.join("order-view-2.db").is_file(),
        "order-view-2 has a file of its own"
    );
    let mut pids: BTreeMap<String, u32> = processes
        .iter()
        .map(|(l, (_, p))| (l.clone(), *p))
        .collect();
    assert_eq!(
        children_of(up_pid),
        pids.values()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "the banner's pids are feedline up's children"
    );

    signal(killed, "-9");
    console
        .until("order-view-2's exit", Duration::from_secs(30), |l| {
            l.contains("order-view-2 exited (signal 9); restarting in 1 s")
        })
        .await;
    let restarted = console
        .until("order-view-2's restart", Duration::from_secs(30), |l| {
            l.starts_with("order-view-2 restarted (pid ")
        })
        .await;
    let new_pid: u32 = restarted
        .trim_start_matches("order-view-2 restarted (pid ")
        .trim_end_matches(')')
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {restarted}"));
    assert_ne!(new_pid, killed);
    wait_ready(&http, &view_2, START_WITHIN).await;
    assert!(alive(new_pid), "the restarted order-view-2 runs");
    pids.insert("order-view-2".into(), new_pid);
    let mut expected: Vec<u32> = pids.values().copied().collect();
    expected.sort_unstable();
    assert_eq!(
        children_of(up_pid),
        expected,
        "feedline up's children after the restart"
    );

    signal(up_pid, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(120), up.wait())
        .await
        .expect("feedline up stops within 120 s of Ctrl-C")
        .unwrap();
    console.rest().await;
    assert_eq!(
        status.code(),
        Some(0),
        "console:\n{}",
        console.seen.join("\n")
    );
    for (label, pid) in &pids {
        assert!(!alive(*pid), "{label} (pid {pid}) outlived feedline up");
    }
    let stops: Vec<&str> = console
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("stopping ")?.strip_suffix("..."))
        .collect();
    assert_eq!(
        stops,
        ["gateway", "order-view", "customers", "orders", "registry"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_replicas_argument_names_what_to_fix() {
    for (arg, expected) in [
        ("ordrs=2", "unknown service 'ordrs'"),
        (
            "orders=2,order-view=0",
            "the replicas of order-view must be a number from 1 to",
        ),
        ("order-view", "expected SERVICE=N"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_feedline"))
            .args(["up", "--no-infra", "--replicas", arg])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg}: {stderr}");
        assert!(stderr.contains(expected), "{arg}: {stderr}");
    }
}

#[tokio::test]
async fn without_the_service_binaries_up_says_how_to_build_them() {
    // A `feedline` alone in a directory, as if only the CLI was built (a hard link: the
    // binary is large, and the directory is on the target directory's file system).
    let feedline = Path::new(env!("CARGO_BIN_EXE_feedline"));
    let target = feedline.parent().and_then(Path::parent).unwrap();
    let dir = target.join(format!("up-test-{}", feedline_testkit::random_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("feedline");
    std::fs::hard_link(feedline, &alone).unwrap();
    let out = tokio::process::Command::new(&alone)
        .args(["up", "--no-infra", "--rate", "0"])
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("feedline-registry not found beside feedline")
            && stderr.contains("cargo build --bins"),
        "{stderr}"
    );
}
