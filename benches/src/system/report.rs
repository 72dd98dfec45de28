//! The text of the e2e and saga results: tables, same-run ratios, targets and notes from
//! what [`super::e2e`] and [`super::saga`] measured.

use serde_json::json;

use super::drive::Phase;
use super::e2e::{E2e, RECORD_BYTES, closed_loop_seconds};
use super::saga::Saga;
use crate::Load;
use crate::common::{
    self, LATENCY_COLUMNS, Machine, Percentiles, RunResult, Series, Table, Target,
};
use crate::processes::Mode;

/// e2e p99 (202 → visible on the feed) over raw Kafka's two-hop p99 at most this: the
/// issue's target.
pub const E2E_OVER_TWO_HOPS: f64 = 2.0;
/// The figure of a saga run that `all` divides by the produce run's raw rdkafka rate.
pub const SETTLED_PER_SECOND: &str = "settled orders/s";

/// 50 MB in the decimal megabytes; VmRSS is in KiB.
const MB_PER_MIB: f64 = 1.048_576;

pub(super) fn e2e(load: &Load, run: E2e) -> RunResult {
    let E2e {
        rate,
        seconds,
        warm,
        clients,
        ..
    } = run;
    let mut result = RunResult::new(
        if load.service_config.is_empty() {
            "e2e"
        } else {
            "e2e-tuned"
        },
        load.smoke,
        Machine::describe(),
        json!({"rate": rate, "seconds": seconds, "warm_up_seconds": warm, "clients": clients,
               "in_process": load.services == Mode::InProcess,
               "service_config": load.service_config,
               "order_view_batch_max": run.effective.get("order-view").map(|v| v["consumer"]["batch_max"].clone()),
               "services": run.effective,
               "latency_tool_messages": run.tool.as_ref().ok().map(|t| t.messages)}),
    );
    result.tables.push(e2e_table(load, &run, &mut result.notes));
    let (fixed, hops) = (&run.fixed, &run.hops);
    let over_two_hops = fixed.visible.p99 / hops.two.p99.max(1e-9);
    result.ratios.push((
        "fixed rate: 202 → visible p99 / raw two-hop Kafka p99".into(),
        over_two_hops,
    ));
    result.ratios.push((
        "fixed rate: 202 → final p99 / raw two-hop Kafka p99".into(),
        fixed.settled.p99 / hops.two.p99.max(1e-9),
    ));
    result.targets.push(Target::new(
        &format!("e2e p99 (202 → visible on the feed, 2 Kafka hops) at {rate:.0}/s / raw two-hop Kafka p99"),
        E2E_OVER_TWO_HOPS,
        over_two_hops,
        "×",
        false,
    ));
    result.figures.extend([
        ("202 → visible p99 ms".to_owned(), fixed.visible.p99),
        ("raw two-hop p99 ms".to_owned(), hops.two.p99),
    ]);
    result.notes.push(format!(
        "Visible = the order's first change (PENDING: gateway → order-commands → orders → order-events → order-view → SSE, 2 Kafka hops after the 202); final = APPROVED/REJECTED (4 more hops through customers and orders). The raw baseline sends at the same rate through two topics with a relay between them (consume, produce on), raw rdkafka with the services' client settings. Errors: fixed {}, closed loop {}; 503 `overloaded` answers retried after Retry-After: {}.",
        fixed.errors, run.max.errors, run.refused
    ));
    if let Ok(t) = &run.tool {
        result.notes.push(format!(
            "Kafka's EndToEndLatency (`infra/kafka.sh tool end-to-end-latency`, Java clients, acks=all, {} B records, one partition, one hop) is a closed loop of ONE message at a time, not {rate:.0}/s: it sends, waits for the ack and for its consumer to receive the message, commits synchronously, then sends the next; it forces linger.ms=0 and fetch.max.wait.ms=0. Its percentiles are whole milliseconds, truncated (0 means under 1 ms), and it reports no p90 or max; mean {:.2} ms over {} messages, the first of which carries the JVM's warm-up. Its orders/s column is messages over the tool's wall time, JVM start included ({:.1} s).",
            RECORD_BYTES, t.avg, t.messages, t.seconds
        ));
        result.ratios.push((
            "fixed rate: 202 → visible p99 / Kafka EndToEndLatency p99 (one hop)".into(),
            fixed.visible.p99 / t.p99.max(1.0),
        ));
    }
    for d in run.died {
        result.notes.push(format!("A service died: {d}"));
    }
    result.notes.extend(run.feed_state);
    result.series.push(Series {
        name: format!("raw rdkafka two hops, sent/s at {rate:.0}/s"),
        per_second: run.hops.sent,
    });
    result.series.push(Series {
        name: "fixed-rate accepted/s".into(),
        per_second: run.fixed.accept_series,
    });
    result.series.push(Series {
        name: "closed-loop accepted/s".into(),
        per_second: run.max.accept_series,
    });
    result
}

/// The baselines' rows, then each phase's accept, visible and final latencies.
fn e2e_table(load: &Load, run: &E2e, notes: &mut Vec<String>) -> Table {
    let (rate, seconds, clients) = (run.rate, run.seconds, run.clients);
    let where_services = match load.services {
        Mode::InProcess => "whole system in one process",
        Mode::Processes => "every service its own process",
    };
    let mut columns = vec!["orders/s", "never settled"];
    columns.extend(LATENCY_COLUMNS);
    let mut table = Table::new(
        format!(
            "e2e: {where_services}, orders through the gateway; {seconds:.0} s at {rate:.0}/s, then {:.0} s closed loop with {clients} clients",
            closed_loop_seconds(seconds)
        ),
        &columns,
    );
    let baseline = |table: &mut Table, name: &str, p: &Percentiles| {
        let mut v = vec![Some(rate), None];
        v.extend(p.cells());
        table.row(name, v);
    };
    baseline(
        &mut table,
        "Kafka produce → consume, one hop, raw rdkafka, same settings",
        &run.hops.one,
    );
    baseline(
        &mut table,
        "Kafka produce → consume → produce → consume, two hops, raw rdkafka, same settings (baseline)",
        &run.hops.two,
    );
    match &run.tool {
        Ok(t) => table.row(
            "Kafka's EndToEndLatency tool (Java clients), one hop, one message at a time",
            vec![
                Some(t.messages as f64 / t.seconds),
                None,
                Some(t.p50),
                None,
                Some(t.p99),
                Some(t.p999),
                None,
            ],
        ),
        Err(e) => notes.push(format!("Kafka's EndToEndLatency baseline skipped: {e:#}.")),
    }
    let row = |table: &mut Table, name: &str, p: &Phase, lat: &Percentiles| {
        let mut v = vec![Some(p.accepted as f64 / p.seconds), Some(p.missing as f64)];
        v.extend(lat.cells());
        table.row(name, v);
    };
    let (fixed, max) = (&run.fixed, &run.max);
    row(
        &mut table,
        "fixed rate: POST → 202 (from the scheduled time)",
        fixed,
        &fixed.accept,
    );
    row(
        &mut table,
        "fixed rate: 202 → order visible on the feed (PENDING)",
        fixed,
        &fixed.visible,
    );
    row(
        &mut table,
        "fixed rate: 202 → final state on the feed",
        fixed,
        &fixed.settled,
    );
    row(&mut table, "closed loop: POST → 202", max, &max.accept);
    row(
        &mut table,
        "closed loop: 202 → order visible on the feed",
        max,
        &max.visible,
    );
    row(
        &mut table,
        "closed loop: 202 → final state on the feed",
        max,
        &max.settled,
    );
    table
}

pub(super) fn saga(load: &Load, run: Saga) -> RunResult {
    let processes = load.services == Mode::Processes;
    let mut result = RunResult::new(
        match (load.rate.is_some(), load.service_config.is_empty()) {
            (false, true) => "saga",
            (true, true) => "saga-open-loop",
            (_, false) => "saga-tuned",
        },
        load.smoke,
        Machine::describe(),
        json!({"clients": run.clients, "seconds": run.seconds, "warm_up_seconds": run.warm,
               "rate": load.rate, "in_process": !processes,
               "service_config": load.service_config, "services": run.effective,
               "memory_sample_seconds": common::MEMORY_SAMPLE_SECONDS}),
    );
    let phase = &run.phase;
    let accepted_rate = phase.accepted as f64 / phase.seconds;
    // Orders that reached a final state during the measured window, counted in the order
    // service's database.
    let settled_rate = run.settled as f64 / run.window_seconds;
    result
        .tables
        .push(saga_table(load, &run, accepted_rate, settled_rate));
    saga_memory(&run, processes, &mut result);
    result
        .figures
        .insert(SETTLED_PER_SECOND.to_owned(), settled_rate);
    result.ratios.push((
        "settled / accepted, orders/s".into(),
        settled_rate / accepted_rate.max(1e-9),
    ));
    result.notes.push(format!(
        "{} orders accepted and {} settled in the {:.1} s measured after the warm-up; {} of the accepted never reached a final state on the feed within 30 s, {} errors; {} answers were 503 `overloaded` (the gateway's back-pressure), each retried after its Retry-After. `all` divides the settled rate by the produce run's raw rdkafka rate.",
        phase.accepted, run.settled, run.window_seconds, phase.missing, phase.errors, run.refused
    ));
    result.notes.push(if processes {
        format!(
            "Memory: VmRSS of each child process every {} s; idle = the first 2 s after every service answered /health; under load = from the first order until every accepted order settled, or 30 s after the last one (warm-up and drain included). Targets compare in MB (10⁶ B) as the issue states them; the table is in MiB.",
            common::MEMORY_SAMPLE_SECONDS
        )
    } else {
        format!(
            "Memory is the whole process (registry, gateway, orders, customers, order-view and the load generator; {:.0} MiB before start): per-service figures need `--services processes`.",
            run.rss_start
        )
    });
    for d in run.died {
        result.notes.push(format!("A service died: {d}"));
    }
    result.notes.extend(run.feed_state);
    result.series.insert(
        0,
        Series {
            name: "accepted/s".into(),
            per_second: run.phase.accept_series,
        },
    );
    result
}

fn saga_table(load: &Load, run: &Saga, accepted_rate: f64, settled_rate: f64) -> Table {
    let mut table = Table::new(
        format!(
            "saga: {}, {} for {:.0} s",
            if load.services == Mode::Processes {
                "every service its own process"
            } else {
                "every service in this process"
            },
            load.rate.map_or(
                format!("{} gateway clients in a closed loop", run.clients),
                |r| format!("orders offered at {r:.0}/s (open loop)")
            ),
            run.seconds
        ),
        &[
            "orders/s",
            "ratio to accepted",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
    );
    let a = &run.phase.accept;
    table.row(
        "accepted by the gateway (POST → 202) (baseline)",
        vec![
            Some(accepted_rate),
            Some(1.0),
            Some(a.p50),
            Some(a.p99),
            Some(a.max),
        ],
    );
    let s = &run.phase.settled;
    table.row(
        "settled (APPROVED/REJECTED in the orders database; latency 202 → final state on the feed)",
        vec![
            Some(settled_rate),
            Some(settled_rate / accepted_rate.max(1e-9)),
            (s.count > 0).then_some(s.p50),
            (s.count > 0).then_some(s.p99),
            (s.count > 0).then_some(s.max),
        ],
    );
    table
}

/// The memory table, its series, and the per-service memory targets.
fn saga_memory(run: &Saga, processes: bool, result: &mut RunResult) {
    let memory = &run.memory;
    let mut table = Table::new(
        if processes {
            "saga: resident memory (VmRSS) of each service, each its own process (MiB)"
        } else {
            "saga: resident memory (VmRSS) of the one process running all services (MiB)"
        },
        &[
            "idle after start MiB",
            "mean under load MiB",
            "max under load MiB",
        ],
    );
    for (i, name) in memory.names.iter().enumerate() {
        let idle = memory.stats(i, run.started, run.idle_until);
        let busy = memory.stats(i, run.load_from, run.load_until);
        table.row(
            name.clone(),
            vec![idle.map(|s| s.0), busy.map(|s| s.0), busy.map(|s| s.1)],
        );
        let is_service = processes && i + 1 < memory.names.len();
        if is_service && let Some((_, max)) = busy {
            result.targets.push(Target::new(
                &format!("{name}: resident memory, max under load"),
                50.0,
                max * MB_PER_MIB,
                "MB",
                false,
            ));
        }
        result.series.push(Series::memory(name, memory.series(i)));
    }
    result.tables.push(table);
    if !processes && let Some((_, max)) = memory.stats(0, run.load_from, run.load_until) {
        result.targets.push(Target::new(
            "resident memory, all five parts together (target is ≤ 50 MB per service: 5 × 50)",
            250.0,
            max * MB_PER_MIB,
            "MB",
            false,
        ));
    }
}
