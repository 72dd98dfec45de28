//! The Grafana dashboard and the alert rules against real scrapes: the whole system runs
//! in-process on the real broker and databases, a few orders go through the gateway and one
//! poison command to the DLQ, then every service's `/metrics` is scraped. Every metric that
//! a panel's or a rule's PromQL names must be among the scraped series, and every scrape must
//! pass `promtool check metrics` (the Prometheus naming conventions).
//!
//! promtool comes with the Debian package `prometheus` (`./dev setup` installs it). Without
//! it the lint is skipped with a message, except in CI (`CI=true`), where that is a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::system::{Launch, demo_bearer};
use feedline::{CancellationToken, Metrics, Outgoing, Producer};
use feedline_launcher::System;
use feedline_testkit::{eventually, prometheus};
use serde_json::{Value, json};

/// Series Prometheus makes itself for every target, not scraped from one.
const SYNTHETIC: &[&str] = &["up"];

/// How long the system gets to produce every series the dashboard names (consumer lag needs
/// librdkafka's statistics, dead letters the orders service to meet the poison).
const WITHIN: Duration = Duration::from_secs(90);

fn repo_file(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard, by panel title; fails on a panel without one.
fn dashboard_queries() -> BTreeMap<String, Vec<String>> {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/dashboards/feedline.json"))
            .expect("the dashboard is JSON");
    let mut queries = BTreeMap::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        // A row holds its panels when collapsed.
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("a panel title").to_owned();
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str().map(str::to_owned))
            .collect();
        assert!(!exprs.is_empty(), "panel {title:?} has no query");
        queries.insert(title, exprs);
    }
    assert!(!queries.is_empty(), "the dashboard has no panels");
    queries
}

/// Every alert rule's expression, by alert name.
fn alert_queries() -> BTreeMap<String, Vec<String>> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&repo_file("deploy/prometheus/alerts.yml"))
        .expect("the alert rules are YAML");
    let mut queries = BTreeMap::new();
    for group in rules["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("a rule name");
            let expr = rule["expr"].as_str().expect("a rule expression");
            queries.insert(name.to_owned(), vec![expr.to_owned()]);
        }
    }
    assert!(!queries.is_empty(), "no alert rules");
    queries
}

/// PromQL words that are not metric names: aggregations, keywords, literals.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Modifiers followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not a function
/// (followed by `(`), a keyword or a label name (inside `{...}` or a `by (...)` list), and
/// not inside a string, a range or subquery (`[...]`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let next_non_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                // Label values are strings: skip them whole, a brace may be inside one.
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                        let quote = chars[i];
                        i += 1;
                        while i < chars.len() && chars[i] != quote {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number, with its exponent or duration unit.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let after = next_non_space(i);
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) && chars.get(after) == Some(&'(') {
                    i = after;
                    while i < chars.len() && chars[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                } else if chars.get(after) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                    // A function or an aggregation.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The names of the samples of a Prometheus text exposition.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `promtool check metrics` over one scrape: `Some(problems)` if it found any, `None` when
/// promtool is absent outside CI.
fn promtool_problems(service: &str, scrape: &str) -> Option<String> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                !in_ci(),
                "promtool is not installed, and CI=true: install the Debian package prometheus \
                 (./dev setup does)"
            );
            eprintln!(
                "SKIPPED: promtool check metrics for {service}: promtool is not installed \
                 (Debian package prometheus; ./dev setup installs it)"
            );
            return None;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(scrape.as_bytes())
        .expect("write the scrape to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success() || !said.trim().is_empty()).then_some(said)
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (topic, group, le) \
             (rate(feedline_event_age_seconds_bucket{service=~\"a|b}\"}[$__rate_interval])))"
        ),
        ["feedline_event_age_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum(rate(x_total{status=~\"5..\", status!=\"503\"}[5m])) / sum(rate(y_total[5m])) \
             > 0.01 and on (service) z offset 5m"
        ),
        ["x_total", "y_total", "z"]
    );
    assert_eq!(names("up == 0"), ["up"]);
    assert_eq!(names("max by (service) (a:b) > 1e3"), ["a:b"]);
    assert!(names("vector(2)").is_empty());
}

struct Running {
    system: System,
    base: String,
    http: reqwest::Client,
    bearer: String,
    kafka: feedline::config::KafkaSettings,
    _stop: tokio_util::sync::DropGuard,
}

async fn start() -> Running {
    feedline::telemetry::init();
    let launch = Launch::new("").await;
    let kafka = launch.kafka();
    let token = CancellationToken::new();
    let system = launch.start(token.clone()).await;
    system
        .ready(Duration::from_secs(60))
        .await
        .expect("every part ready");
    let base = format!("http://{}", system.gateway);
    let http = reqwest::Client::new();
    Running {
        system,
        bearer: demo_bearer(&http, &base).await,
        base,
        http,
        kafka,
        _stop: token.drop_guard(),
    }
}

impl Running {
    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.bearer)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }

    /// Every service's `/metrics`, by service.
    async fn scrape(&self) -> BTreeMap<&'static str, String> {
        let mut scrapes = BTreeMap::new();
        for (name, addr) in self.system.addresses() {
            let text = self
                .http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("scrape {name}: {e}"))
                .text()
                .await
                .unwrap();
            scrapes.insert(name, text);
        }
        scrapes
    }
}

/// The metrics `queries` name that no scrape has, as `name (used by: ...)`.
fn missing(queries: &BTreeMap<String, Vec<String>>, scraped: &BTreeSet<String>) -> Vec<String> {
    let mut users: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (user, exprs) in queries {
        for expr in exprs {
            for name in metric_names(expr) {
                users.entry(name).or_default().insert(user);
            }
        }
    }
    users
        .into_iter()
        .filter(|(name, _)| !scraped.contains(name) && !SYNTHETIC.contains(&name.as_str()))
        .map(|(name, users)| format!("{name} (used by: {users:?})"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported_and_promtool_clean() {
    let dashboard = dashboard_queries();
    let alerts = alert_queries();
    let sys = start().await;

    // Traffic: a customer, orders approved and rejected (each waited for, which also has
    // the gateway follow order-view's live feed), and a command that cannot be decoded.
    let customer = sys
        .post(
            "/customers?wait=10s",
            json!({"name": "Grace Hopper", "credit_limit": "100.00"}),
        )
        .await["customer_id"]
        .as_str()
        .expect("a customer id")
        .to_owned();
    for total in ["10.00", "20.00", "500.00"] {
        let body = sys
            .post(
                "/orders?wait=15s",
                json!({"customer_id": customer, "total": total}),
            )
            .await;
        assert!(
            body["status"] == "APPROVED" || body["status"] == "REJECTED",
            "the order settled: {body}"
        );
    }
    let producer = Producer::new(&sys.kafka, Metrics::new("dashboard-test")).unwrap();
    let commands = sys.kafka.name(feedline_schemas::ORDER_COMMANDS);
    producer
        .send(Outgoing::new(
            &commands,
            Some(customer.as_bytes()),
            b"not an avro message",
        ))
        .await
        .expect("the poison command is acknowledged");

    // Every series the queries name exists once the system has caught up with the traffic.
    let what = format!("every series the queries name, within {WITHIN:?} of traffic");
    let scrapes = eventually(&what, WITHIN, async || {
        let scrapes = sys.scrape().await;
        let names: BTreeSet<String> = scrapes
            .values()
            .flat_map(|s| prometheus::names(s))
            .collect();
        let mut absent: Vec<String> = missing(&dashboard, &names)
            .into_iter()
            .chain(missing(&alerts, &names))
            .collect();
        // Exported at zero from the start; the poison command makes it count.
        let dead_letters = prometheus::value(
            &scrapes["orders"],
            "feedline_dead_lettered_total",
            &[("topic", commands.as_str())],
        );
        if dead_letters.unwrap_or_default() < 1.0 {
            absent.push(format!(
                "feedline_dead_lettered_total{{topic=\"{commands}\"}} >= 1"
            ));
        }
        if absent.is_empty() {
            return Ok(scrapes);
        }
        let dead_letters: Vec<&str> = scrapes
            .values()
            .flat_map(|s| s.lines())
            .filter(|l| l.starts_with("feedline_dead_lettered_total"))
            .collect();
        Err(format!(
            "no service exported:\n  {}\n(scraped: {names:?})\n(dead letters: {dead_letters:?})",
            absent.join("\n  ")
        ))
    })
    .await;

    // The new histograms measured the traffic, with plausible values.
    let view = &scrapes["order-view"];
    for histogram in [
        "feedline_order_view_freshness_seconds",
        "feedline_order_view_feed_push_delay_seconds",
    ] {
        let count = prometheus::value(view, &format!("{histogram}_count"), &[]).unwrap_or_default();
        let sum = prometheus::value(view, &format!("{histogram}_sum"), &[]).unwrap_or_default();
        assert!(count > 0.0, "{histogram} observed nothing:\n{view}");
        assert!(
            (0.0..10.0).contains(&(sum / count)),
            "{histogram}: a mean of {} s",
            sum / count
        );
    }

    // Prometheus's naming conventions, on every service's scrape.
    let mut problems = Vec::new();
    for (service, scrape) in &scrapes {
        if let Some(said) = promtool_problems(service, scrape) {
            problems.push(format!("{service}:\n{said}"));
        }
    }
    assert!(
        problems.is_empty(),
        "promtool check metrics:\n{}",
        problems.join("\n")
    );
}
