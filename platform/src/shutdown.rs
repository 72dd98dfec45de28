//! One shutdown root: a `CancellationToken` cancelled by SIGTERM, Ctrl-C or the first task
//! that fails, and a group of named tasks drained with a timeout.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// Named tasks sharing one cancellation token.
#[derive(Debug)]
pub struct TaskGroup {
    token: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

impl TaskGroup {
    pub fn new(token: CancellationToken) -> Self {
        TaskGroup {
            token,
            tasks: JoinSet::new(),
        }
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a task; its error (or panic) cancels every other task of the group.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        tracing::debug!(task = %name, "task started");
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Runs until the token is cancelled or a task fails, then gives the remaining tasks
    /// `drain` to finish. Returns the first task error.
    pub async fn join(mut self, drain: Duration) -> anyhow::Result<()> {
        let mut first_error = None;
        loop {
            tokio::select! {
                _ = self.token.cancelled() => break,
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(result) => {
                        if let Err(e) = record(result) {
                            first_error.get_or_insert(e);
                            self.token.cancel();
                            break;
                        }
                    }
                },
            }
        }
        let drained = tokio::time::timeout(drain, async {
            while let Some(result) = self.tasks.join_next().await {
                if let Err(e) = record(result) {
                    first_error.get_or_insert(e);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.tasks.len(),
                "drain timeout reached, aborting tasks"
            );
            self.tasks.abort_all();
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn record(
    result: Result<(String, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok((name, Ok(()))) => {
            tracing::info!(task = %name, "task finished");
            Ok(())
        }
        Ok((name, Err(e))) => {
            tracing::error!(task = %name, error = format!("{e:#}"), "task failed");
            Err(e.context(format!("task {name} failed")))
        }
        // Aborted by the drain timeout or a runtime shutting down: not a failure of the task.
        Err(e) if e.is_cancelled() => {
            tracing::warn!("task aborted before it finished");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "task panicked");
            Err(anyhow::anyhow!("task panicked: {e}"))
        }
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C. Spawned once by each binary.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
            _ = term => tracing::info!("sigterm received, shutting down"),
            _ = token.cancelled() => return,
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_error_cancels_the_others() {
        let mut group = TaskGroup::new(CancellationToken::new());
        let token = group.token();
        group.spawn("waits", async move {
            token.cancelled().await;
            Ok(())
        });
        group.spawn("fails", async { Err(anyhow::anyhow!("boom")) });
        let err = group.join(Duration::from_secs(5)).await.unwrap_err();
        assert!(format!("{err:#}").contains("boom"));
    }

    #[tokio::test]
    async fn drain_timeout_aborts_stuck_tasks() {
        let token = CancellationToken::new();
        let mut group = TaskGroup::new(token.clone());
        group.spawn("stuck", std::future::pending());
        token.cancel();
        let started = std::time::Instant::now();
        group.join(Duration::from_millis(100)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
