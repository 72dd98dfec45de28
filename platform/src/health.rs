//! Health that means something: `/health/live` answers whether the process is making
//! progress (a consumer stuck inside one batch for too long is not), `/health/ready` whether
//! it can do its work now (Kafka connected and the group joined, the database and the
//! registry reachable, lag known). `/health` is readiness.
//!
//! A service registers one check per dependency; readiness runs them all, concurrently and
//! each within [`CHECK_TIMEOUT`], whenever it is asked.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::context::FeedlineContext;

/// How long one readiness check may take before it counts as failed: probes come every few
/// seconds and must answer before the prober's own timeout.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type ReadyCheck = Arc<dyn Fn() -> CheckFuture + Send + Sync>;
type LiveCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The checks of one process; clones share them.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Checks>>,
}

#[derive(Default)]
struct Checks {
    ready: Vec<(String, ReadyCheck)>,
    live: Vec<(String, LiveCheck)>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let checks = self.lock();
        let ready: Vec<&str> = checks.ready.iter().map(|(n, _)| n.as_str()).collect();
        let live: Vec<&str> = checks.live.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Health")
            .field("ready", &ready)
            .field("live", &live)
            .finish()
    }
}

/// The answer of `/health/live` or `/health/ready`: every check by name, with the reason of
/// those that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: &'static str,
    pub checks: BTreeMap<String, CheckResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn new(
        results: Vec<(String, Result<(), String>)>,
        ok: &'static str,
        not: &'static str,
    ) -> Self {
        let healthy = results.iter().all(|(_, r)| r.is_ok());
        let checks = results
            .into_iter()
            .map(|(name, r)| {
                let result = CheckResult {
                    ok: r.is_ok(),
                    error: r.err(),
                };
                (name, result)
            })
            .collect();
        Report {
            status: if healthy { ok } else { not },
            checks,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.checks.values().all(|c| c.ok)
    }
}

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a readiness check: `check` is called for every `/health/ready`.
    pub fn ready_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: ReadyCheck = Arc::new(move || Box::pin(check()));
        self.lock().ready.push((name.into(), check));
    }

    /// Adds a liveness check: it must answer at once, from state the work itself updates.
    pub fn live_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.lock().live.push((name.into(), Arc::new(check)));
    }

    /// Checks that `SELECT 1` answers on `pool`.
    pub fn database<DB>(&self, name: &str, pool: sqlx::Pool<DB>)
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        self.ready_check(name, move || {
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
                sqlx::Executor::execute(&mut *conn, "SELECT 1")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
    }

    /// Checks that the schema registry at `url` answers.
    pub fn registry(&self, url: &str) {
        let url = format!("{}/", url.trim_end_matches('/'));
        let http = reqwest::Client::new();
        self.ready_check("registry", move || {
            let request = http.get(&url).timeout(CHECK_TIMEOUT).send();
            async move {
                match request.await {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 401 => Ok(()),
                    Ok(r) => Err(format!("registry answered {}", r.status())),
                    // Not the URL: it may carry credentials.
                    Err(e) => Err(format!("registry unreachable: {}", without_url(e))),
                }
            }
        });
    }

    /// Checks that the client behind `context` can reach Kafka.
    pub fn kafka(&self, context: FeedlineContext) {
        self.ready_check("kafka", move || {
            std::future::ready(context.kafka_reachable())
        });
    }

    /// Readiness: every check run now, concurrently.
    pub async fn ready(&self) -> Report {
        let checks: Vec<(String, ReadyCheck)> = self.lock().ready.clone();
        let mut runs = tokio::task::JoinSet::new();
        for (name, check) in checks {
            let run = check();
            runs.spawn(async move {
                let result = match tokio::time::timeout(CHECK_TIMEOUT, run).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                };
                (name, result)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = runs.join_next().await {
            match done {
                Ok(result) => results.push(result),
                Err(e) => results.push(("check".to_owned(), Err(format!("check failed: {e}")))),
            }
        }
        Report::new(results, "ready", "not ready")
    }

    /// Liveness: every live check, now.
    pub fn live(&self) -> Report {
        let results = self
            .lock()
            .live
            .iter()
            .map(|(name, check)| (name.clone(), check()))
            .collect();
        Report::new(results, "live", "not live")
    }
}

fn without_url(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_check_passes_and_a_slow_one_fails() {
        let health = Health::new();
        assert!(health.ready().await.is_ok(), "no checks is ready");
        health.ready_check("fine", || async { Ok(()) });
        assert!(health.ready().await.is_ok());
        health.ready_check("stuck", std::future::pending);
        let report = health.ready().await;
        assert!(!report.is_ok());
        assert_eq!(report.status, "not ready");
        assert!(report.checks["fine"].ok);
        assert!(
            report.checks["stuck"]
                .error
                .as_deref()
                .unwrap()
                .contains("no answer")
        );
    }

    #[test]
    fn live_reports_the_failing_check() {
        let health = Health::new();
        health.live_check("loop", || Err("no progress for 61 s".into()));
        let report = health.live();
        assert_eq!(report.status, "not live");
        assert_eq!(
            report.checks["loop"].error.as_deref(),
            Some("no progress for 61 s")
        );
    }
}
