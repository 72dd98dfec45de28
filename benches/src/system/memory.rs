//! Resident memory of the run's processes, sampled while the saga runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common;

/// Resident memory of each sampled process every [`common::MEMORY_SAMPLE_SECONDS`]: one
/// column per process, `None` where it could not be read (the process had gone).
#[derive(Debug, Default)]
pub(super) struct Memory {
    pub(super) names: Vec<String>,
    samples: Vec<(Instant, Vec<Option<f64>>)>,
}

impl Memory {
    /// Samples `targets` (label, pid or "self") until the returned task is aborted.
    pub(super) fn sample(
        targets: Vec<(String, String)>,
    ) -> (Arc<Mutex<Memory>>, tokio::task::JoinHandle<()>) {
        let memory = Arc::new(Mutex::new(Memory {
            names: targets.iter().map(|t| t.0.clone()).collect(),
            samples: Vec::new(),
        }));
        let shared = memory.clone();
        let task = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(common::MEMORY_SAMPLE_SECONDS));
            loop {
                tick.tick().await;
                let row = targets
                    .iter()
                    .map(|(_, pid)| common::rss_mib(pid))
                    .collect();
                shared
                    .lock()
                    .expect("poisoned")
                    .samples
                    .push((Instant::now(), row));
            }
        });
        (memory, task)
    }

    /// Mean and max of column `i` over the samples taken in `from..=until`.
    pub(super) fn stats(&self, i: usize, from: Instant, until: Instant) -> Option<(f64, f64)> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _)| *at >= from && *at <= until)
            .filter_map(|(_, row)| row[i])
            .collect();
        let max = values.iter().copied().reduce(f64::max)?;
        Some((values.iter().sum::<f64>() / values.len() as f64, max))
    }

    pub(super) fn series(&self, i: usize) -> Vec<f64> {
        self.samples
            .iter()
            .map(|(_, row)| row[i].unwrap_or(f64::NAN))
            .collect()
    }
}
