//! What every scenario shares: latency histograms, the per-second rate line, the machine
//! description, and the result (Markdown on stdout, JSON under `benches/results/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// p50, p90, p99, p99.9 and max in milliseconds, plus the count.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    /// The five latency columns of a table row.
    /// Empty (`—`) when nothing was recorded.
    pub fn cells(&self) -> Vec<Option<f64>> {
        let some = self.count > 0;
        [self.p50, self.p90, self.p99, self.p999, self.max]
            .map(|v| some.then_some(v))
            .to_vec()
    }
}

pub const LATENCY_COLUMNS: [&str; 5] = ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"];

/// Counts events and prints a rate line about every second while a phase runs; keeps the
/// per-second rates for the JSON (throughput over time).
#[derive(Debug)]
pub struct Meter {
    count: Arc<AtomicU64>,
    rates: Arc<Mutex<Vec<f64>>>,
    stop: CancellationToken,
    started: Instant,
}

impl Meter {
    pub fn start(label: &str) -> Meter {
        let count = Arc::new(AtomicU64::new(0));
        let rates = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (c, r, s, label) = (count.clone(), rates.clone(), stop.clone(), label.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = c.load(Ordering::Relaxed);
                let rate = (now - last) as f64;
                last = now;
                r.lock().expect("rates poisoned").push(rate);
                eprintln!(
                    "  [{label}] {:>4.0} s  {:>9.0}/s  total {now}",
                    started.elapsed().as_secs_f64(),
                    rate
                );
            }
        });
        Meter {
            count,
            rates,
            stop,
            started: Instant::now(),
        }
    }

    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops the rate line; returns the per-second rates seen.
    pub fn finish(&self) -> Vec<f64> {
        self.stop.cancel();
        let _ = self.started;
        self.rates.lock().expect("rates poisoned").clone()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu: String,
    /// 1-minute load average when the run started: the other engineers' builds.
    pub load_average: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
            load_average: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// One Markdown table: a row per measured thing, a column per figure.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

impl Table {
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, name: impl Into<String>, values: Vec<Option<f64>>) {
        self.rows.push(Row {
            name: name.into(),
            values,
        });
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("{}\n\n| |", self.title);
        for c in &self.columns {
            out.push_str(&format!(" {c} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.columns.len()));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("| {} |", row.name));
            for (i, v) in row.values.iter().enumerate() {
                let column = self.columns.get(i).map_or("", String::as_str);
                out.push_str(&format!(
                    " {} |",
                    v.map_or("—".to_owned(), |v| cell(column, v))
                ));
            }
            out.push('\n');
        }
        out
    }
}

/// Formats a figure by its column: milliseconds and ratios with decimals, rates grouped.
pub fn cell(column: &str, v: f64) -> String {
    if column.ends_with(" ms") || column.contains("ratio") || column.contains('×') {
        format!("{v:.2}")
    } else if column.contains("MB") || column.contains("MiB") {
        format!("{v:.1}")
    } else {
        grouped(v)
    }
}

pub fn grouped(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// A target from the issue, with what was measured against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub target: f64,
    pub measured: f64,
    pub unit: String,
    pub higher_is_better: bool,
}

impl Target {
    pub fn new(what: &str, target: f64, measured: f64, unit: &str, higher_is_better: bool) -> Self {
        Target {
            what: what.to_owned(),
            target,
            measured,
            unit: unit.to_owned(),
            higher_is_better,
        }
    }

    /// Above 1 means the target is met, whichever direction is better.
    pub fn ratio(&self) -> f64 {
        if self.higher_is_better {
            self.measured / self.target
        } else {
            self.target / self.measured.max(1e-9)
        }
    }

    pub fn met(&self) -> bool {
        self.ratio() >= 1.0
    }
}

/// A figure over time. Most are rates, one value a second; memory samples are named with
/// "MiB" and their period ("every 0.5 s"), which is how the plots tell them apart (the
/// JSON format stays what older results already use).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub per_second: Vec<f64>,
}

/// How often resident memory is sampled, in seconds.
pub const MEMORY_SAMPLE_SECONDS: f64 = 0.5;

impl Series {
    /// A memory series, named so the plots find it: "rss MiB <what> (every 0.5 s)".
    pub fn memory(what: &str, samples: Vec<f64>) -> Series {
        Series {
            name: format!("rss MiB {what} (every {MEMORY_SAMPLE_SECONDS} s)"),
            per_second: samples,
        }
    }

    /// The name without the memory series' bookkeeping: "orders" for
    /// "rss MiB orders (every 0.5 s)".
    pub fn label(&self) -> &str {
        if !self.is_memory() {
            return &self.name;
        }
        let label = self.name.trim_start_matches("rss MiB").trim_start();
        label
            .rfind(" (every ")
            .map_or(label, |i| &label[..i])
            .trim()
    }

    pub fn is_memory(&self) -> bool {
        self.name.contains("MiB")
    }

    /// Seconds between two values: the "(every N s)" in the name, else one.
    pub fn step_seconds(&self) -> f64 {
        self.name
            .split("(every ")
            .nth(1)
            .and_then(|r| r.split(" s)").next())
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| *v > 0.0)
            .unwrap_or(1.0)
    }
}

/// Everything one scenario run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub timestamp: String,
    pub unix_seconds: u64,
    pub smoke: bool,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub tables: Vec<Table>,
    /// Figure over its same-run baseline.
    pub ratios: Vec<(String, f64)>,
    pub targets: Vec<Target>,
    pub series: Vec<Series>,
    pub notes: Vec<String>,
    /// Figures another scenario of the same `all` run divides by, or by which (the saga's
    /// settled orders/s over the produce run's raw rdkafka msgs/s); absent in older results.
    #[serde(default)]
    pub figures: BTreeMap<String, f64>,
}

impl RunResult {
    pub fn new(scenario: &str, smoke: bool, machine: Machine, settings: serde_json::Value) -> Self {
        let now = chrono::Utc::now();
        RunResult {
            scenario: scenario.to_owned(),
            timestamp: now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            unix_seconds: now.timestamp() as u64,
            smoke,
            machine,
            settings,
            tables: Vec::new(),
            ratios: Vec::new(),
            targets: Vec::new(),
            series: Vec::new(),
            notes: Vec::new(),
            figures: BTreeMap::new(),
        }
    }

    /// True when the run produced figures: every table has rows, every row a value.
    pub fn has_figures(&self) -> bool {
        !self.tables.is_empty()
            && self.tables.iter().all(|t| {
                !t.rows.is_empty() && t.rows.iter().all(|r| r.values.iter().any(Option::is_some))
            })
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "### {} — {}{}\n\n{} cores ({}), {} GiB, Linux {}, load average at start {}.\n\n",
            self.scenario,
            self.timestamp,
            if self.smoke {
                " (smoke run: sizes too small to mean anything)"
            } else {
                ""
            },
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.load_average
        );
        for t in &self.tables {
            out.push_str(&t.markdown());
            out.push('\n');
        }
        if !self.ratios.is_empty() {
            out.push_str("| same-run ratio | value |\n|---|---:|\n");
            for (what, v) in &self.ratios {
                out.push_str(&format!("| {what} | {v:.2} |\n"));
            }
            out.push('\n');
        }
        if !self.targets.is_empty() {
            out.push_str(
                "| target | goal | measured | margin (≥ 1 is met) | |\n|---|---:|---:|---:|---|\n",
            );
            for t in &self.targets {
                let fmt = |v: f64| {
                    if t.unit == "ms" {
                        format!("{v:.2} ms")
                    } else if t.unit == "×" {
                        format!("{v:.2}×")
                    } else {
                        format!("{} {}", grouped(v), t.unit)
                    }
                };
                out.push_str(&format!(
                    "| {} | {}{} | {} | {:.2} | {} |\n",
                    t.what,
                    if t.higher_is_better { "≥ " } else { "≤ " },
                    fmt(t.target),
                    fmt(t.measured),
                    t.ratio(),
                    if t.met() { "met" } else { "**missed**" }
                ));
            }
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("- {n}\n"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "Settings: `{}`\n",
            serde_json::to_string(&self.settings).unwrap_or_default()
        ));
        out
    }

    /// Prints the Markdown and writes `<dir>/<scenario>-<timestamp>.json`.
    pub fn emit(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        println!("\n{}", self.markdown());
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let name = format!(
            "{}-{}{}.json",
            self.scenario,
            self.timestamp.replace(':', ""),
            if self.smoke { "-smoke" } else { "" }
        );
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
        Ok(path)
    }
}

/// The resident set of a process in MiB, from /proc/<pid>/status (`self` for this one).
pub fn rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Deletes every topic of a run (they share its unique prefix). A broker that serves run
/// after run would otherwise keep thousands of partitions, each holding open files: a local
/// broker of this project's development stopped at 19,835 of them (`Too many open files`).
pub async fn drop_topics(kafka: &feedline::config::KafkaSettings, prefix: &str) {
    let dropped = async {
        let admin = feedline::admin::Admin::new(kafka)?;
        let topics = admin.topics_with_prefix(prefix).await?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        if !names.is_empty() {
            admin.delete_topics(&names).await?;
        }
        Ok::<_, feedline::admin::AdminError>(names.len())
    };
    match dropped.await {
        Ok(n) => eprintln!("deleted the run's {n} topics ({prefix}*)"),
        Err(e) => eprintln!("could not delete the run's topics ({prefix}*): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_without_values_has_no_figures() {
        let mut result = RunResult::new("t", true, Machine::describe(), serde_json::json!({}));
        assert!(!result.has_figures());
        let mut table = Table::new("t", &["msgs/s", "p99 ms"]);
        table.row("empty", vec![None, None]);
        result.tables.push(table);
        assert!(!result.has_figures());
        result.tables[0].rows[0].values[0] = Some(1234.0);
        assert!(result.has_figures());
        let md = result.markdown();
        assert!(md.contains("| empty | 1,234 | — |"), "{md}");
    }

    #[test]
    fn memory_series_are_told_apart_by_name_with_their_period() {
        let m = Series::memory("orders", vec![1.0]);
        assert!(m.is_memory());
        assert_eq!(m.step_seconds(), MEMORY_SAMPLE_SECONDS);
        assert_eq!(m.label(), "orders");
        let rate = Series {
            name: "accepted/s".into(),
            per_second: vec![1.0],
        };
        assert!(!rate.is_memory());
        assert_eq!(rate.step_seconds(), 1.0);
    }

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut h = histogram();
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 100);
        assert!(
            (p.p50 - 50.0).abs() < 0.5 && (p.max - 100.0).abs() < 0.5,
            "{p:?}"
        );
    }
}
