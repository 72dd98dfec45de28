//! What every service binary shares: the launch sequence of a thin `main.rs`, the
//! start-up steps of its `spawn` ([`Startup`]), and the running part of a consumer service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::RegistryClient;
use crate::config::Settings;
use crate::consumer::{Consumer, Handler};
use crate::contracts::Contracts;
use crate::errors::{Classify, ErrorClass};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::producer::Producer;
use crate::shutdown::TaskGroup;
use crate::transactional::{Domain, TransactionalHandler};

/// The whole `main` of a service binary: bounds the allocator, builds the tokio runtime and
/// runs [`launch`] on it.
pub fn main<F, Fut>(service_defaults: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Before the runtime: its worker threads take their arenas on their first allocation.
    crate::memory::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?
        .block_on(launch(service_defaults, run))
}

/// Loads config (`service_defaults`, then `FEEDLINE_CONFIG`, then `FEEDLINE_*`), starts
/// logging and tracing, wires SIGTERM/Ctrl-C to the shutdown root and runs the service until
/// it ends, then flushes the traces.
pub async fn launch<F, Fut>(service_defaults: &str, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // Settings first: they say where traces go. A configuration error is reported by `main`.
    let settings =
        Settings::load(service_defaults, None).context("failed to load configuration")?;
    let telemetry =
        crate::telemetry::init_service(&settings).context("failed to start telemetry")?;
    let token = CancellationToken::new();
    crate::shutdown::cancel_on_signal(token.clone());
    tracing::info!(service = %settings.service_name, "starting");
    let trimmer = tokio::spawn(crate::memory::trim_forever());
    let result = run(settings, token).await;
    trimmer.abort();
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "service stopped with an error");
    }
    // Every task has stopped: the last spans are complete, export them before exiting.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .context("telemetry shutdown panicked")?;
    result
}

/// The longest wait between two tries of a start-up step.
const START_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs a start-up step (connect to the database, create the topics, register the
/// schemas) until it succeeds, retrying with backoff while its error is transient: a service
/// started before its database, broker or registry waits for them instead of exiting into a
/// restart loop. Any other error, or shutdown, ends the wait with the last error.
pub async fn until_up<T, E, F, Fut>(
    what: &str,
    token: &CancellationToken,
    mut step: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Classify + std::fmt::Display,
{
    let mut backoff = Duration::from_millis(200);
    let mut waiting = false;
    loop {
        match step().await {
            Ok(done) => {
                if waiting {
                    tracing::info!(step = what, "dependency up, start-up goes on");
                }
                return Ok(done);
            }
            Err(e) if e.class() == ErrorClass::Transient && !token.is_cancelled() => {
                if !waiting {
                    tracing::warn!(step = what, error = %e, "dependency not reachable yet, waiting for it");
                    waiting = true;
                }
                tokio::select! {
                    _ = token.cancelled() => return Err(e),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(START_BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a service's `spawn` returns: the bound HTTP address (`http.port = 0` picks a free
/// one) and the task running the service until its token is cancelled or a part fails.
pub type Spawned = (SocketAddr, JoinHandle<anyhow::Result<()>>);

/// A service's `run`: spawns it, then waits until it stopped.
pub async fn run(spawned: impl Future<Output = anyhow::Result<Spawned>>) -> anyhow::Result<()> {
    let (_addr, task) = spawned.await?;
    task.await.context("service task panicked")?
}

/// A consumer service's start-up, step by step: each step waits for what it needs
/// ([`until_up`]) and names what failed, and the last spawns the service.
#[derive(Debug)]
pub struct Startup<'a> {
    settings: &'a Settings,
    token: &'a CancellationToken,
    metrics: Arc<Metrics>,
}

impl<'a> Startup<'a> {
    /// Creates the service's metrics registry.
    pub fn new(settings: &'a Settings, token: &'a CancellationToken) -> Self {
        Startup {
            settings,
            token,
            metrics: Metrics::new(&settings.service_name),
        }
    }

    /// The registry the service's own metrics go in, beside the platform's.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `step` until it succeeds or fails for good (see [`until_up`]); its error says
    /// what failed, "failed to `what`".
    pub async fn step<T, E, F, Fut>(&self, what: &str, step: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::error::Error + Classify + Send + Sync + 'static,
    {
        until_up(what, self.token, step)
            .await
            .with_context(|| format!("failed to {what}"))
    }

    /// The service's PostgreSQL database: connected (waiting for it), its `migrations` and
    /// the platform's tables installed under the advisory lock `setup_lock` (one per
    /// service, see [`crate::db::prepare`]), and its applied event ids forgotten after
    /// `dedup.retention_hours` until the service stops.
    pub async fn database(
        &self,
        migrations: impl Fn() -> Migrator,
        setup_lock: i64,
    ) -> anyhow::Result<PgPool> {
        let pool = self
            .step("connect to the database", || {
                crate::db::connect(&self.settings.database)
            })
            .await?;
        self.step("prepare the database", || {
            crate::db::prepare(&pool, migrations(), setup_lock)
        })
        .await?;
        crate::dedup::spawn_pruner(
            pool.clone(),
            &self.settings.dedup,
            self.metrics.clone(),
            self.token.clone(),
        );
        Ok(pool)
    }

    /// The service's topics, created where missing (waiting for the broker).
    pub async fn topics(&self) -> anyhow::Result<()> {
        let kafka = &self.settings.kafka;
        self.step("create the topics", || {
            crate::contracts::ensure_topics(kafka)
        })
        .await
    }

    /// The topics created and every contract's schema registered (waiting for the broker
    /// and the registry): what the service encodes and decodes with.
    pub async fn contracts(&self) -> anyhow::Result<Contracts> {
        self.topics().await?;
        let kafka = &self.settings.kafka;
        let registry = Arc::new(RegistryClient::new(&self.settings.registry));
        self.step("register the schemas", || {
            Contracts::register(registry.clone(), kafka)
        })
        .await
    }

    /// The `producer` of this replica's events: `<service>-<replica id>`.
    pub fn producer_name(&self) -> String {
        format!("{}-{}", self.settings.service_name, replica_id())
    }

    /// A [`ConsumerService`] of `handler` in the consumer group `group` (full name), with
    /// this start-up's metrics, no outbox, the ops routes and no checks of its own: set the
    /// fields for more.
    pub fn consumer<H: Handler>(
        &self,
        group: String,
        topics: Vec<String>,
        handler: H,
    ) -> ConsumerService<H> {
        ConsumerService {
            group,
            topics,
            handler,
            metrics: self.metrics.clone(),
            outbox: None,
            router: None,
            health: Health::new(),
        }
    }

    /// Spawns `service` (see [`ConsumerService::spawn`]).
    pub async fn spawn<H: Handler>(self, service: ConsumerService<H>) -> anyhow::Result<Spawned> {
        service.spawn(self.settings, self.token.clone()).await
    }

    /// Spawns a service of one transactional handler, consumer group `group` (unprefixed):
    /// its consumer, its outbox relay and the ops HTTP server.
    pub async fn spawn_transactional<D: Domain>(
        self,
        group: &str,
        handler: TransactionalHandler<D>,
    ) -> anyhow::Result<Spawned> {
        let outbox = handler.outbox.clone();
        let group = self.settings.kafka.name(group);
        let topics = handler.topics().to_vec();
        let mut service = self.consumer(group, topics, handler);
        service.outbox = Some(outbox);
        self.spawn(service).await
    }
}

/// A service built around one consumer: the consumer, the outbox relay when it writes
/// events through a PostgreSQL outbox, and an HTTP server. What is left to each service is
/// its start-up (database, topics, contracts) and its handler.
#[derive(Debug)]
pub struct ConsumerService<H> {
    /// The consumer group, full name (with the prefix).
    pub group: String,
    /// The topics consumed, full names.
    pub topics: Vec<String>,
    pub handler: H,
    pub metrics: Arc<Metrics>,
    /// The outbox the relay publishes (the handler hands its committed rows to the same
    /// [`Outbox`]); `None` for a service without one.
    pub outbox: Option<Outbox>,
    /// What the HTTP server answers; `None` for the ops routes only (`/metrics`, `/health`).
    /// A router of its own merges [`crate::http::ops_router`] with the same `health`.
    pub router: Option<Router>,
    /// The service's health checks; the consumer, the registry and (with an outbox) the
    /// database and the relay add theirs.
    pub health: Health,
}

impl<H: Handler> ConsumerService<H> {
    /// Creates the producer (dead letters and the outbox's events) and the consumer, binds
    /// the HTTP port (`http.port = 0` picks a free one) and returns the bound address with
    /// the task running everything until `token` is cancelled or one part fails.
    pub async fn spawn(
        self,
        settings: &Settings,
        token: CancellationToken,
    ) -> anyhow::Result<Spawned> {
        let (addr, run) = self.start(settings, token).await?;
        Ok((addr, tokio::spawn(run)))
    }

    /// [`ConsumerService::spawn`], for a caller with more to do once everything stopped:
    /// the future runs the service.
    pub async fn start(
        self,
        settings: &Settings,
        token: CancellationToken,
    ) -> anyhow::Result<(
        SocketAddr,
        impl Future<Output = anyhow::Result<()>> + Send + 'static,
    )> {
        let kafka = &settings.kafka;
        let producer = Producer::new(kafka, self.metrics.clone())
            .context("failed to create the kafka producer")?;
        let consumer = Consumer::new(
            kafka,
            &settings.consumer,
            &self.group,
            &self.topics,
            self.handler,
            producer.clone(),
            self.metrics.clone(),
        )
        .context("failed to create the kafka consumer")?;

        consumer.progress().register(&self.health, "consumer");
        self.health.registry(&settings.registry);
        if let Some(outbox) = &self.outbox {
            self.health.database("database", outbox.pool().clone());
            outbox.register(&self.health);
        }

        let addr = settings.http_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to bind {addr}"))?;
        let addr = listener.local_addr()?;

        let mut tasks = TaskGroup::new(token.clone());
        if settings.discovery.enabled {
            let beacon = crate::discovery::Beacon {
                health: self.health.clone(),
                consumer: Some(consumer.progress()),
            };
            let announcer =
                crate::discovery::Announcer::new(settings, addr, producer.clone(), beacon);
            tasks.spawn("announcer", announcer.run(token.clone()));
        }
        let consumer_token = token.clone();
        tasks.spawn("consumer", async move {
            consumer
                .run(consumer_token)
                .await
                .context("consumer failed")
        });
        if let Some(outbox) = self.outbox {
            let relay = outbox.relay(producer, self.metrics.clone());
            tasks.spawn("outbox-relay", relay.run(token.clone()));
        }
        let router = self
            .router
            .unwrap_or_else(|| crate::http::ops_router(self.metrics, self.health));
        tasks.spawn("http", async move {
            crate::http::serve(listener, router, token)
                .await
                .context("http server failed")
        });
        tracing::info!(%addr, group = %self.group, service = %settings.service_name, "running");
        // The consumer may take its drain timeout to finish a batch, then commits and leaves.
        let drain = settings.consumer.drain_timeout() + Duration::from_secs(5);
        Ok((addr, tasks.join(drain)))
    }
}

/// Names this process among a service's replicas (the `producer` field of its events):
/// `HOSTNAME` where the platform sets one (a pod, a container), else a random id.
pub fn replica_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned())
}
