//! What `all` adds to its scenarios: every target of the issue as a ratio of two figures
//! measured in the same run, met or missed. Absolute figures on a shared machine move with
//! the other work on it; a ratio of two figures taken minutes apart moves far less.

use serde_json::json;

use crate::common::{RunResult, Table, Target};
use crate::produce::RAW_PER_SECOND;
use crate::system::report::SETTLED_PER_SECOND;

/// The saga's settled orders/s over the produce run's raw rdkafka msgs/s at least this.
const SAGA_OVER_RAW: f64 = 0.02;

/// The summary of one `all` run, from its scenarios' results: their ratio targets, the
/// saga's settled rate over the produce run's raw rate, and the figures they are made of.
pub fn summary(results: &[RunResult], smoke: bool) -> RunResult {
    let machine = results
        .first()
        .map(|r| r.machine.clone())
        .unwrap_or_else(crate::common::Machine::describe);
    let loads: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|r| (r.scenario.clone(), json!(r.machine.load_average)))
        .collect();
    let mut result = RunResult::new(
        "ratios",
        smoke,
        machine,
        json!({"scenarios": results.iter().map(|r| &r.scenario).collect::<Vec<_>>(),
               "load_average_at_start": loads}),
    );
    let mut table = Table::new(
        "ratios: the figures of this `all` run the ratios below are made of",
        &["per second", "p99 ms"],
    );
    for run in results {
        for (name, value) in &run.figures {
            let cells = if name.ends_with(" ms") {
                vec![None, Some(*value)]
            } else {
                vec![Some(*value), None]
            };
            table.row(format!("{}: {name}", run.scenario), cells);
        }
    }
    result.tables.push(table);
    for run in results {
        let ratios = run.targets.iter().filter(|t| t.unit == "×");
        result.targets.extend(ratios.map(|t| Target {
            what: format!("{}: {}", run.scenario, t.what),
            ..t.clone()
        }));
    }
    let figure = |scenario: &str, name: &str| {
        results
            .iter()
            .find(|r| r.scenario == scenario)
            .and_then(|r| r.figures.get(name).copied())
    };
    match (
        figure("saga", SETTLED_PER_SECOND),
        figure("produce", RAW_PER_SECOND),
    ) {
        (Some(settled), Some(raw)) => result.targets.push(Target::new(
            "saga: settled orders/s / produce: raw rdkafka msgs/s",
            SAGA_OVER_RAW,
            settled / raw.max(1e-9),
            "×",
            true,
        )),
        _ => result
            .notes
            .push("The saga's ratio needs both a saga and a produce run in this `all` run.".into()),
    }
    result.notes.push(format!(
        "Load average (1, 5, 15 min) at each scenario's start: {}; at the end: {}. The machine's other work shows in absolute figures far more than in these ratios.",
        results
            .iter()
            .map(|r| format!("{} {}", r.scenario, r.machine.load_average))
            .collect::<Vec<_>>()
            .join("; "),
        crate::common::Machine::describe().load_average
    ));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::Machine;

    #[test]
    fn the_saga_is_divided_by_the_raw_rate_of_the_same_run() {
        let mut produce = RunResult::new("produce", true, Machine::describe(), json!({}));
        produce.figures.insert(RAW_PER_SECOND.into(), 200_000.0);
        produce.targets.push(Target::new("p", 0.95, 0.9, "×", true));
        produce
            .targets
            .push(Target::new("absolute", 1.0, 2.0, "MB", false));
        let mut saga = RunResult::new("saga", true, Machine::describe(), json!({}));
        saga.figures.insert(SETTLED_PER_SECOND.into(), 5_000.0);
        let summary = summary(&[produce, saga], true);
        assert!(summary.has_figures());
        let whats: Vec<&str> = summary.targets.iter().map(|t| t.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "produce: p",
                "saga: settled orders/s / produce: raw rdkafka msgs/s"
            ]
        );
        let saga = &summary.targets[1];
        assert!((saga.measured - 0.025).abs() < 1e-9 && saga.met());
        assert!(!summary.targets[0].met());
    }
}
