//! The chaos report: the checks, the orders' fate, and the time to recover per kind of fault,
//! printed as Markdown and written as Markdown and JSON under `<results>/chaos/`; a summary in
//! the bench's usual result format goes beside the other scenarios' (`--report` picks it up).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use super::faults::{FaultKind, Injection};
use super::{ChaosArgs, Plan, Run, Sample};
use crate::common::{Machine, RunResult, Table};

/// How the system came back from one fault, read from the samples. Seconds since the fault.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Recovery {
    /// Until the first order settled after the fault began (an order still settles while a
    /// replica is down; none does while Kafka or PostgreSQL is).
    pub first_settle: Option<f64>,
    /// From the fault until the backlog (orders accepted and not yet settled) is back within
    /// one second of load of its level before the fault, at or after the restart.
    pub recovered: Option<f64>,
}

pub fn recovery(injection: &Injection, samples: &[Sample], rate: f64) -> Recovery {
    let Some(before) = samples
        .iter()
        .rev()
        .find(|s| s.t <= injection.at && s.settled.is_some())
    else {
        return Recovery::default();
    };
    let settled_before = before.settled.unwrap_or(0);
    let backlog_before = before.accepted as f64 - settled_before as f64;
    let first_settle = samples
        .iter()
        .filter(|s| s.t > injection.at)
        .find(|s| s.settled.is_some_and(|n| n > settled_before))
        .map(|s| s.t - injection.at);
    let from = injection.restarted.unwrap_or(injection.at);
    let recovered = samples
        .iter()
        .filter(|s| s.t >= from)
        .find(|s| {
            s.settled
                .is_some_and(|n| s.accepted as f64 - n as f64 <= backlog_before + rate)
        })
        .map(|s| s.t - injection.at);
    Recovery {
        first_settle,
        recovered,
    }
}

pub struct Report {
    markdown: String,
    summary: RunResult,
    details: serde_json::Value,
    passed: bool,
    smoke: bool,
}

fn secs(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.1}"))
}

impl Report {
    pub fn new(plan: &Plan, args: &ChaosArgs, run: Run, prefix: &str, dir: &Path) -> Report {
        let passed = run.checks.iter().all(|c| c.passed);
        let recoveries: Vec<Recovery> = run
            .injections
            .iter()
            // Poison takes nothing down: there is nothing to recover from.
            .map(|i| match i.kind {
                FaultKind::Poison => Recovery::default(),
                _ => recovery(i, &run.samples, plan.rate),
            })
            .collect();
        let mut by_kind: BTreeMap<FaultKind, Vec<(&Injection, Recovery)>> = BTreeMap::new();
        for (i, r) in run.injections.iter().zip(&recoveries) {
            by_kind.entry(i.kind).or_default().push((i, *r));
        }
        let fate = &run.fate;
        let machine = Machine::describe();
        let settings = json!({
            "rate": plan.rate, "seconds": plan.seconds, "fault_interval": plan.interval,
            "down": plan.down, "customers": plan.customers, "feed_clients": plan.feed_clients,
            "faults": plan.faults, "kafka": args.kafka, "topic_prefix": prefix,
        });
        let mut summary = RunResult::new("chaos", plan.smoke, machine, settings.clone());

        let mut md = format!(
            "## chaos — {}{}\n\n{:.0} s at {:.0} orders/s over {} customers, every service its own process (2 replicas of orders, customers and order-view), a fault every {:.0} s (down {:.0} s), Kafka {}.\n\n**{}**\n\n",
            summary.timestamp,
            if plan.smoke { " (smoke)" } else { "" },
            plan.seconds,
            plan.rate,
            plan.customers,
            plan.interval,
            plan.down,
            args.kafka,
            if passed {
                "Every check passed."
            } else {
                "Some checks FAILED."
            }
        );
        md.push_str("| check | result | detail |\n|---|---|---|\n");
        for c in &run.checks {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                c.name,
                if c.passed { "pass" } else { "**FAIL**" },
                c.detail.replace('|', "\\|").replace('\n', " ")
            ));
        }

        let orders_rows: Vec<(&str, u64)> = vec![
            ("offered", run.records.len() as u64),
            ("accepted (202)", fate.accepted),
            ("lost (202, not in the orders database)", fate.lost),
            (
                "duplicated (extra rows for one client order)",
                fate.duplicated,
            ),
            ("stuck (202, not in a final state at the end)", fate.stuck),
            ("client gave up (4xx or retries exhausted)", fate.gave_up),
            ("not sent (too many in flight)", fate.not_sent),
            (
                "created though the client was not told 202",
                fate.created_unacknowledged,
            ),
            ("client retries (same Idempotency-Key)", run.retries),
            ("poison inputs sent", run.poison.len() as u64),
            ("dead letters", run.dead_letters.len() as u64),
            ("services that exited on their own", run.exits.len() as u64),
        ];
        md.push_str("\n| orders | count |\n|---|---:|\n");
        let mut table = Table::new("chaos: orders", &["count"]);
        for (name, n) in &orders_rows {
            md.push_str(&format!("| {name} | {n} |\n"));
            table.row(*name, vec![Some(*n as f64)]);
        }
        summary.tables.push(table);

        md.push_str("\n| fault | injected | failed to inject | first order settled after, max s | recovered after, median s | recovered after, max s | not recovered |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let mut table = Table::new(
            "chaos: time to recover per kind of fault (from the fault's start)",
            &[
                "injected",
                "failed",
                "first settle max ms",
                "recovered p50 ms",
                "recovered max ms",
                "not recovered",
            ],
        );
        for (kind, list) in &by_kind {
            let failed = list.iter().filter(|(i, _)| i.error.is_some()).count();
            let first = list
                .iter()
                .filter_map(|(_, r)| r.first_settle)
                .reduce(f64::max);
            let mut rec: Vec<f64> = list.iter().filter_map(|(_, r)| r.recovered).collect();
            rec.sort_by(f64::total_cmp);
            let median = (!rec.is_empty()).then(|| rec[rec.len() / 2]);
            let max = rec.last().copied();
            let never = if *kind == FaultKind::Poison {
                0
            } else {
                list.len() - rec.len()
            };
            md.push_str(&format!(
                "| {} | {} | {failed} | {} | {} | {} | {never} |\n",
                kind.name(),
                list.len(),
                secs(first),
                secs(median),
                secs(max)
            ));
            table.row(
                kind.name(),
                vec![
                    Some(list.len() as f64),
                    Some(failed as f64),
                    first.map(|v| v * 1000.0),
                    median.map(|v| v * 1000.0),
                    max.map(|v| v * 1000.0),
                    Some(never as f64),
                ],
            );
        }
        summary.tables.push(table);
        md.push_str("\nRecovered = the backlog (accepted, not yet settled in the orders database) back within one second of load of its level before the fault, at or after the restart; — = not within the run.\n");

        md.push_str("\n| at s | fault | target | restarted s | ready s | first settle s | recovered s | error |\n|---:|---|---|---:|---:|---:|---:|---|\n");
        for (i, r) in run.injections.iter().zip(&recoveries) {
            md.push_str(&format!(
                "| {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
                i.at,
                i.kind.name(),
                i.target,
                secs(i.restarted),
                secs(i.ready),
                secs(r.first_settle),
                secs(r.recovered),
                i.error
                    .as_deref()
                    .unwrap_or("")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            ));
        }
        for skipped in &run.skipped {
            md.push_str(&format!("\nNot injected: {skipped}.\n"));
        }
        for e in &run.exits {
            md.push_str(&format!(
                "\n{} exited on its own at {:.1} s ({}); the end of its log:\n\n```\n{}\n```\n",
                e.service, e.at, e.status, e.log_tail
            ));
        }
        md.push_str(&format!(
            "\nRun files (service logs, infra.log): {}\n",
            dir.display()
        ));

        for c in &run.checks {
            summary.notes.push(format!(
                "{}: {} — {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        let details = json!({
            "timestamp": summary.timestamp,
            "smoke": plan.smoke,
            "passed": passed,
            "plan": plan,
            "settings": settings,
            "checks": run.checks,
            "fate": run.fate,
            "injections": run.injections.iter().zip(&recoveries).map(|(i, r)| json!({"injection": i, "recovery": r})).collect::<Vec<_>>(),
            "poison": run.poison,
            "dead_letters": run.dead_letters,
            "unexpected_exits": run.exits,
            "not_injected": run.skipped,
            "feeds": run.feeds,
            "retries": run.retries,
            "samples": run.samples,
            "not_accepted": run.records.iter().filter(|r| !matches!(r.told, super::load::Told::Accepted { .. })).take(100).collect::<Vec<_>>(),
        });
        Report {
            markdown: md,
            summary,
            details,
            passed,
            smoke: plan.smoke,
        }
    }

    pub fn passed(&self) -> bool {
        self.passed
    }

    /// Prints the Markdown; writes it and the JSON details under `<results>/chaos/`, and the
    /// summary as `<results>/chaos-<timestamp>.json`.
    pub fn emit(&self, results: &Path) -> anyhow::Result<()> {
        println!("\n{}", self.markdown);
        let dir = results.join("chaos");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let stem = format!(
            "chaos-{}{}",
            self.summary.timestamp.replace(':', ""),
            if self.smoke { "-smoke" } else { "" }
        );
        let write = |path: PathBuf, bytes: Vec<u8>| {
            std::fs::write(&path, bytes)
                .with_context(|| format!("failed to write {}", path.display()))?;
            eprintln!("written: {}", path.display());
            anyhow::Ok(())
        };
        write(
            dir.join(format!("{stem}.md")),
            self.markdown.clone().into_bytes(),
        )?;
        write(
            dir.join(format!("{stem}.json")),
            serde_json::to_vec_pretty(&self.details)?,
        )?;
        write(
            results.join(format!("{stem}.json")),
            serde_json::to_vec_pretty(&self.summary)?,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, accepted: u64, settled: Option<i64>) -> Sample {
        Sample {
            t,
            accepted,
            settled,
        }
    }

    #[test]
    fn recovery_counts_from_the_fault_and_waits_for_the_backlog_after_the_restart() {
        let injection = Injection {
            kind: FaultKind::Postgres,
            target: "PostgreSQL".into(),
            at: 10.0,
            restarted: Some(14.0),
            ready: Some(15.0),
            error: None,
        };
        // Backlog 10 before the fault; the database unreadable while down; then the backlog
        // drains back under 10 + 100 (one second at 100/s) at 17 s.
        let samples = [
            sample(9.5, 1000, Some(990)),
            sample(11.0, 1150, Some(990)),
            sample(12.0, 1250, None),
            sample(15.0, 1550, Some(1000)),
            sample(16.0, 1650, Some(1400)),
            sample(17.0, 1750, Some(1700)),
        ];
        let r = recovery(&injection, &samples, 100.0);
        assert_eq!(r.first_settle, Some(5.0));
        assert_eq!(r.recovered, Some(7.0));
        // Never back: no recovery time, not a made-up one.
        let r = recovery(&injection, &samples[..5], 100.0);
        assert_eq!(r.recovered, None);
    }
}
