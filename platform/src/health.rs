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
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::RegistrySettings;
use crate::context::FeedlineContext;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How old a readiness report may be before a probe starts a new run of the checks. Probes
/// get the latest report at once and never wait for the checks (Kubernetes gives a probe
/// one second by default, and a busy service's dependencies may take longer to answer).
const FRESH_FOR: Duration = Duration::from_millis(500);

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
    /// The last readiness report and when its checks ran.
    latest: Option<(Instant, Report)>,
    /// Set while a background run of the checks is under way.
    refreshing: bool,
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
        let mut checks = self.lock();
        checks.ready.push((name.into(), check));
        // A report without this check says nothing about it.
        checks.latest = None;
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

    /// Checks that the schema registry answers, and takes this service's credentials: a
    /// registry that refuses them would make every schema look-up fail.
    pub fn registry(&self, settings: &RegistrySettings) {
        let url = format!("{}/", settings.url.trim_end_matches('/'));
        let http = settings.http_client(CHECK_TIMEOUT);
        let settings = settings.clone();
        self.ready_check("registry", move || {
            let request = settings.authorize(http.get(&url)).send();
            async move {
                match request.await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) if r.status().as_u16() == 401 || r.status().as_u16() == 403 => Err(
                        format!(
                            "registry refused this service's credentials ({}): check registry.username and registry.password",
                            r.status()
                        ),
                    ),
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

    /// Readiness: the latest report, at most [`FRESH_FOR`] plus one run of the checks old.
    /// An older one is returned while the checks run again in the background; the first
    /// call runs them and waits.
    pub async fn ready(&self) -> Report {
        let stale = {
            let mut checks = self.lock();
            match &checks.latest {
                Some((at, report)) => {
                    let report = report.clone();
                    if at.elapsed() > FRESH_FOR && !checks.refreshing {
                        checks.refreshing = true;
                        let health = self.clone();
                        tokio::spawn(async move {
                            let report = health.check_all().await;
                            let mut checks = health.lock();
                            checks.latest = Some((Instant::now(), report));
                            checks.refreshing = false;
                        });
                    }
                    Some(report)
                }
                None => None,
            }
        };
        match stale {
            Some(report) => report,
            None => {
                let report = self.check_all().await;
                self.lock().latest = Some((Instant::now(), report.clone()));
                report
            }
        }
    }

    /// Every readiness check run now, concurrently.
    async fn check_all(&self) -> Report {
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

    #[tokio::test]
    async fn a_probe_gets_the_latest_report_without_waiting_for_the_checks() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let health = Health::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        health.ready_check("slow", move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(())
            }
        });
        assert!(
            health.ready().await.is_ok(),
            "the first probe runs the checks"
        );
        // Let the report age past FRESH_FOR.
        tokio::time::sleep(FRESH_FOR + Duration::from_millis(50)).await;
        let asked = Instant::now();
        assert!(health.ready().await.is_ok());
        assert!(
            asked.elapsed() < Duration::from_millis(400),
            "answered from the latest report, not after the slow check"
        );
        while runs.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
