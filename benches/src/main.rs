//! `feedline-bench`: load tests against a running broker and database. Every scenario
//! measures a baseline in the same run, because these machines are noisy: ratios hold where
//! absolutes drift. Each run prints a Markdown table and writes
//! `benches/results/<scenario>-<timestamp>.json` and, for full runs, SVG plots under
//! `benches/plots/`; `--report` rewrites the generated part of `benches/REPORT.md` (and the
//! plots) from the latest result of each scenario.
//!
//! Examples:
//!   cargo run --release -p feedline-benches -- produce --count 500000
//!   cargo run --release -p feedline-benches -- e2e --rate 1000 --duration 30
//!   cargo run -p feedline-benches -- all --smoke
//!   feedline-bench chaos --smoke          (or `./dev chaos [--smoke]`)
//!
//! Full e2e and saga runs start each service as its own process (per-service memory), from
//! the binaries next to this one: `cargo build --release --workspace --bins` first.

mod chaos;
mod common;
mod consume;
mod kafka_latency;
mod plot;
mod processes;
mod produce;
mod ratios;
mod report;
mod sse;
mod system;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use feedline::Settings;

use crate::common::RunResult;
use crate::processes::Mode;

#[derive(Debug, Parser)]
#[command(name = "feedline-bench", about = "Load-test a feedline pipeline")]
struct Cli {
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:9092",
        env = "FEEDLINE_KAFKA__BOOTSTRAP_SERVERS"
    )]
    bootstrap_servers: String,
    /// PostgreSQL the scenarios create their fresh databases in.
    #[arg(
        long,
        global = true,
        default_value = "postgres://feedline:feedline@127.0.0.1:5432/feedline",
        env = "FEEDLINE_BENCH_DATABASE_URL"
    )]
    database_url: String,
    /// Tiny sizes, seconds per scenario: proves every scenario produces its figures (CI).
    #[arg(long, global = true)]
    smoke: bool,
    /// Open loop: this many operations per second on a fixed schedule. Without it, closed
    /// loop (as fast as the system answers).
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Seconds of measurement (e2e and saga).
    #[arg(long, global = true)]
    duration: Option<u64>,
    /// Seconds of warm-up before measuring (e2e and saga; produce warms up with a tenth of
    /// its count).
    #[arg(long, global = true)]
    warmup: Option<u64>,
    /// TOML layered over every in-process service's settings (e2e, saga), for example
    /// "[kafka]\nlinger_ms = 0\n[consumer]\nbatch_wait_ms = 0" to trade throughput for latency.
    #[arg(long, global = true, default_value = "")]
    service_config: String,
    /// Where e2e and saga run the services: each as its own child process (per-service
    /// memory; the default for full runs) or all in this process (the default for --smoke:
    /// `cargo run` builds only this binary, and CI must not measure stale service binaries).
    #[arg(long, global = true, value_enum)]
    services: Option<Mode>,
    /// Where the JSON results go.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    /// After the run (or alone), rewrite the generated tables of benches/REPORT.md from
    /// the latest JSON of each scenario.
    #[arg(long, global = true)]
    report: bool,
    #[command(subcommand)]
    scenario: Option<Scenario>,
}

#[derive(Debug, Clone, Subcommand)]
enum Scenario {
    /// Encoded envelopes through feedline's producer vs raw rdkafka vs Kafka's perf test.
    Produce {
        #[arg(long, default_value_t = 500_000)]
        count: usize,
        /// Messages in flight at once.
        #[arg(long, default_value_t = 10_000)]
        window: usize,
        /// Kafka's own producer perf test, as a command; empty to skip that baseline.
        #[arg(long, default_value = "infra/kafka.sh tool producer-perf-test")]
        perf_test: String,
    },
    /// A pre-filled topic consumed: no-op handler vs PostgreSQL upserts vs order-view's SQLite.
    Consume {
        /// Events pre-filled (three per order).
        #[arg(long, default_value_t = 200_000)]
        count: usize,
    },
    /// The whole system in-process: gateway accept (202) → the change on the live feed.
    E2e {
        /// Concurrent clients of the closed-loop (maximum) run.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Kafka's own end-to-end latency tool, as a command; empty to skip that baseline.
        #[arg(long, default_value = "infra/kafka.sh tool end-to-end-latency")]
        latency_tool: String,
    },
    /// The whole saga at full speed: orders/s reaching a final state, and memory.
    Saga {
        #[arg(long, default_value_t = 128)]
        clients: usize,
    },
    /// Every scenario, one after the other.
    All,
    /// Faults under a steady load (kill -9 of every service, broker, Kafka and PostgreSQL
    /// restarts, poison), then checks from the databases and topics; against a Kafka and a
    /// PostgreSQL of its own (`./dev chaos` starts them). Not part of `all`.
    Chaos(Box<chaos::ChaosArgs>),
}

/// How hard and how long: the options every scenario shares.
#[derive(Debug, Clone)]
pub struct Load {
    pub smoke: bool,
    pub rate: Option<f64>,
    pub duration: Option<u64>,
    pub warmup: Option<u64>,
    pub database_url: String,
    pub service_config: String,
    pub services: Mode,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report_path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"));
    let plots_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/plots"));
    let Some(scenario) = cli.scenario.clone() else {
        anyhow::ensure!(
            cli.report,
            "name a scenario (produce, consume, e2e, saga, all) or pass --report"
        );
        return report::rewrite(&cli.results, &report_path, &plots_dir);
    };
    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\nstatistics_interval_ms = 0",
        cli.bootstrap_servers
    ))?;
    let load = Load {
        smoke: cli.smoke,
        rate: cli.rate,
        duration: cli.duration,
        warmup: cli.warmup,
        database_url: cli.database_url.clone(),
        service_config: cli.service_config.replace("\\n", "\n"),
        services: cli.services.unwrap_or(if cli.smoke {
            Mode::InProcess
        } else {
            Mode::Processes
        }),
    };
    if let Scenario::Chaos(args) = scenario {
        // Its own report and exit status: a failed check fails the command. On Ctrl-C the
        // run is dropped where it stands, which kills its service processes.
        let passed = tokio::select! {
            outcome = chaos::run(*args, &load, &cli.results) => outcome?,
            signal = interrupted() => anyhow::bail!("stopped by {signal} during chaos; service processes killed"),
        };
        if !passed {
            // A finding, not a crash of the harness: one line and the exit status, no
            // backtrace. Everything the run started is stopped by now.
            eprintln!("chaos: some checks failed (see the report above)");
            std::process::exit(1);
        }
        return Ok(());
    }
    let all = matches!(scenario, Scenario::All);
    let scenarios = match scenario {
        Scenario::All => vec![
            Scenario::Produce {
                count: 1_500_000,
                window: 10_000,
                perf_test: "infra/kafka.sh tool producer-perf-test".into(),
            },
            Scenario::Consume { count: 200_000 },
            Scenario::E2e {
                clients: 64,
                latency_tool: "infra/kafka.sh tool end-to-end-latency".into(),
            },
            Scenario::Saga { clients: 128 },
        ],
        one => vec![one],
    };
    // A run's plots go beside its results (benches/plots for the default benches/results),
    // so a run filed elsewhere does not redraw the report's plots.
    let run_plots = cli
        .results
        .parent()
        .map_or(plots_dir.clone(), |dir| dir.join("plots"));
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for scenario in scenarios {
        let name = format!("{scenario:?}");
        // On Ctrl-C or SIGTERM the scenario is dropped where it stands: that kills any
        // service processes it started (`kill_on_drop`), which a default signal exit would
        // leave running. Its databases and topics are left behind.
        let outcome = tokio::select! {
            outcome = run(&settings, &load, scenario) => outcome,
            signal = interrupted() => {
                anyhow::bail!("stopped by {signal} during {name}; service processes killed");
            }
        };
        match outcome {
            Ok(result) if result.has_figures() => {
                result.emit(&cli.results)?;
                if !result.smoke {
                    for p in plot::for_run(&result, &run_plots)? {
                        eprintln!("plot written to {}", run_plots.join(p.file).display());
                    }
                }
                results.push(result);
            }
            Ok(result) => {
                result.emit(&cli.results)?;
                failed.push(format!("{}: no figures", result.scenario));
            }
            Err(e) => {
                eprintln!("scenario {name} failed: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if all {
        // The same-run ratios of every target, from whichever scenarios gave figures.
        let summary = ratios::summary(&results, cli.smoke);
        summary.emit(&cli.results)?;
        if !summary.has_figures() {
            failed.push("ratios: no figures".into());
        }
    }
    if cli.report {
        report::rewrite(&cli.results, &report_path, &plots_dir)?;
    }
    anyhow::ensure!(failed.is_empty(), "scenarios without figures: {failed:?}");
    Ok(())
}

async fn run(settings: &Settings, load: &Load, scenario: Scenario) -> anyhow::Result<RunResult> {
    let smoke = load.smoke;
    match scenario {
        Scenario::Produce {
            count,
            window,
            perf_test,
        } => {
            let args = produce::ProduceArgs {
                count: if smoke { 2_000 } else { count },
                window,
                // The JVM perf test takes seconds to start; CI proves the Rust paths.
                perf_test: if smoke { String::new() } else { perf_test },
            };
            produce::run(settings, load, &args).await
        }
        Scenario::Consume { count } => {
            consume::run(settings, load, if smoke { 3_000 } else { count }).await
        }
        Scenario::E2e {
            clients,
            latency_tool,
        } => {
            system::e2e(
                settings,
                load,
                if smoke { 4 } else { clients },
                &latency_tool,
            )
            .await
        }
        Scenario::Saga { clients } => {
            system::saga(settings, load, if smoke { 4 } else { clients }).await
        }
        Scenario::All => unreachable!("expanded above"),
        Scenario::Chaos(_) => unreachable!("run on its own above"),
    }
}

/// Resolves on Ctrl-C or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}
