//! Schema registry compatible with the Confluent REST API, storing schemas in Kafka.
//!
//! Every change is a record in the compacted `_schemas` topic; every instance rebuilds its
//! state by reading that topic from the start and keeps tailing it, so instances are
//! stateless and any number of them can serve the same topic (see [`store`] for how their
//! writes stay consistent).
//!
//! - [`api`]: routes, handlers, extractors (Confluent's error format for every rejection)
//! - [`auth`], [`config`]: basic authentication, users and roles; [`tls`]: HTTPS
//! - [`error`]: the Confluent error type
//! - [`store`]: the log reader and the transactional writer
//! - [`state`]: the in-memory model and `apply`
//! - [`ops`]: writes planned as records, and the checks reads share with them
//! - [`schema`], [`compat`]: Avro parsing, canonical form, compatibility
//! - [`record`]: the topic's record layout

pub mod api;
pub mod auth;
pub mod compat;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod record;
pub mod schema;
pub mod state;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use feedline::admin::{Admin, TopicSpec};
use feedline::{CancellationToken, Metrics, Settings, TaskGroup};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::config::ServerSettings;
use crate::metrics::RegistryMetrics;
use crate::ops::Command;
use crate::state::State;
use crate::store::{Reader, Writer};

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
pub const DEFAULTS: &str = r#"
service_name = "registry"
[http]
port = 8081

[registry_server]
anonymous_read = false
dev_mode = false
"#;

/// The topic's base name; the configured prefix goes in front.
pub const TOPIC: &str = "_schemas";

/// How long shutdown waits for the tasks to finish.
const DRAIN: Duration = Duration::from_secs(5);
/// How long start-up may take to read the log up to its end.
const CATCH_UP: Duration = Duration::from_secs(60);

/// A running registry: where it listens, and the task that ends when it stopped.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub handle: JoinHandle<anyhow::Result<()>>,
    state: store::SharedState,
}

impl Running {
    /// A snapshot of everything this instance knows, for comparing instances in tests.
    pub fn fingerprint(&self) -> String {
        self.state.read().expect("state poisoned").fingerprint()
    }
}

/// `addr` as a client can dial it: a wildcard bind is reached on the loopback address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let running = spawn(settings, token).await?;
    running.handle.await.context("registry task panicked")?
}

/// Starts the registry: creates `_schemas` if needed, reads it to its end, then serves HTTP
/// (HTTPS with a certificate configured) on `http.host:http.port` (port 0 picks a free one,
/// see [`Running::addr`]). Refuses to start with no users outside dev mode.
pub async fn spawn(settings: Settings, token: CancellationToken) -> anyhow::Result<Running> {
    let server: ServerSettings = settings
        .section(config::SECTION)
        .context("invalid [registry_server] configuration")?;
    let auth = if server.validate()? {
        Some(Arc::new(Authenticator::new(&server)))
    } else {
        tracing::warn!(
            "DEV MODE: the schema registry is OPEN, with no users: anyone who reaches it can register, change and permanently delete schemas; configure [registry_server.users] and turn registry_server.dev_mode off outside development"
        );
        None
    };
    let tls = server
        .tls()?
        .map(|files| tls::server_config(&files))
        .transpose()?;

    let topic = settings.kafka.name(TOPIC);
    let platform_metrics = Metrics::new(&settings.service_name);
    let metrics = RegistryMetrics::new(&platform_metrics);

    // One partition: the log's order is the registry's order.
    Admin::new(&settings.kafka)
        .context("failed to create the kafka admin client")?
        .ensure_topics(&[TopicSpec::new(&topic, 1).compacted()])
        .await
        .with_context(|| format!("failed to create topic {topic}"))?;

    let state = Arc::new(RwLock::new(State::default()));
    let (reader, progress) = Reader::new(
        &settings.kafka,
        &topic,
        Arc::clone(&state),
        Arc::clone(&metrics),
        Arc::clone(&platform_metrics),
    )
    .context("failed to create the _schemas reader")?;
    let (writer, writes) = Writer::new(
        &settings.kafka,
        &topic,
        Arc::clone(&state),
        progress,
        Arc::clone(&metrics),
        Arc::clone(&platform_metrics),
    );

    let mut tasks = TaskGroup::new(token.clone());
    tasks.spawn("schemas-reader", reader.run(token.clone()));
    tasks.spawn("schemas-writer", writer.run(token.clone()));

    // Serve nothing before the log is read: a fresh instance must not answer "not found"
    // for schemas that exist.
    let caught_up = tokio::time::timeout(CATCH_UP, writes.submit(Command::Sync)).await;
    if let Err(e) = caught_up
        .map_err(|_| anyhow::anyhow!("timed out after {CATCH_UP:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
    {
        token.cancel();
        let _ = tasks.join(DRAIN).await;
        return Err(e.context(format!("failed to read {topic} at start-up")));
    }

    let addr = settings.http_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(api::App {
        state: Arc::clone(&state),
        writer: writes,
        metrics,
    });
    // Serving at all means `_schemas` was read to its end at start-up; later reads and
    // writes report the store's own errors.
    let health = feedline::Health::new();
    let scheme = if tls.is_some() { "https" } else { "http" };
    if settings.discovery.enabled {
        let producer = feedline::Producer::new(&settings.kafka, platform_metrics.clone())
            .context("failed to create the announcements' producer")?;
        let beacon = feedline::discovery::Beacon {
            health: health.clone(),
            consumer: None,
        };
        // On port 0 (the tests, the in-process system) `registry.url` cannot say where this
        // registry is, so its announcements' schema goes to this very instance. A TLS
        // listener's certificate names a host, so there the configured URL stays.
        let mut own = settings.clone();
        if settings.http.port == 0 && tls.is_none() {
            own.registry.url = format!("http://{}", reachable(addr));
        }
        let mut announcer = feedline::discovery::Announcer::new(&own, addr, producer, beacon);
        if tls.is_some() {
            announcer = announcer.https();
        }
        tasks.spawn("announcer", announcer.run(token.clone()));
    }
    let router = api::router(app, platform_metrics, health, auth);
    let http_token = token.clone();
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            tasks.spawn("https", async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { http_token.cancelled().await })
                    .await
                    .context("https server failed")
            });
        }
        None => tasks.spawn("http", async move {
            feedline::http::serve(listener, router, http_token)
                .await
                .context("http server failed")
        }),
    }
    tracing::info!(%addr, %topic, scheme, "schema registry serving");
    Ok(Running {
        addr,
        handle: tokio::spawn(tasks.join(DRAIN)),
        state,
    })
}
