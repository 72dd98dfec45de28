//! Identity provider and API gateway: issues access tokens, validates requests, publishes
//! Avro commands and passes queries and the live feed through to order-view.
//!
//! - [`token`]: `POST /auth/token` (OAuth 2.0 client credentials)
//! - [`auth`], [`jwt`]: scopes, clients, HS256 tokens by key id, the bearer-token extractor
//! - [`jwks`]: an external issuer's RS256/ES256 tokens, verified with its published keys
//! - [`commands`]: the write routes, publishing to `order-commands` and `customer-commands`
//! - [`proxy`], [`orderview`]: the read routes, and waiting for a command's outcome
//! - [`upstream`]: order-view's replicas: discovery, balancing, retries, ejection
//! - [`limits`], [`streams`], [`waiters`]: rate limits, caps on feeds and waits, timeouts
//! - [`ticket`]: one-use tickets for the browser's live feed
//! - [`admission`]: refusing commands while the services behind are too far behind
//! - [`idempotency`]: `Idempotency-Key`: ids derived from the key, answers replayed
//! - [`money`]: amounts converted exactly to cents
//! - [`error`]: the one JSON error shape, and the extractors that produce it
//! - [`dashboard`], [`openapi`]: the static page and the API description
//! - [`fleet`]: the platform's instances and the balancing, for admins
//! - [`ops`]: dead letters per DLQ topic and order-view's freshness, for admins
//! - [`client`]: how the CLI and the benches send commands (with a key, retried)
//! - [`app`], [`config`], [`metrics`]: state and routes, the `[gateway]` section, metrics

pub mod admission;
pub mod app;
pub mod auth;
pub mod client;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod fleet;
pub mod idempotency;
pub mod jwks;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod money;
pub mod openapi;
pub mod ops;
pub mod orderview;
pub mod proxy;
pub mod streams;
pub mod tenancy;
pub mod ticket;
pub mod token;
pub mod upstream;
pub mod waiters;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::discovery::Directory;
use feedline::service::until_up;
use feedline::{CancellationToken, Metrics, Producer, Settings};
use feedline_schemas::{CUSTOMER_COMMANDS, ORDER_COMMANDS};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admission::Admission;
use crate::app::AppState;
use crate::auth::{Auth, Clients};
use crate::commands::CommandTopic;
use crate::config::GatewayConfig;
use crate::idempotency::Answers;
use crate::jwks::ExternalIssuer;
use crate::jwt::TokenKeys;
use crate::limits::Limits;
use crate::metrics::GatewayMetrics;
use crate::orderview::OrderView;
use crate::streams::{PeerAddr, Streams, TimedListener};
use crate::ticket::Tickets;
use crate::upstream::{EjectionPolicy, Source, Upstream};
use crate::waiters::Waiters;

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
/// The demo client (`demo` / `demo-secret`) is for local runs, as is signing with the
/// development secret when no key is set: outside `gateway.dev_mode` the gateway refuses
/// both, so production sets `gateway.jwt_secret` (or `[gateway.keys]`) and disables the
/// demo client (`[gateway.clients.demo] enabled = false`).
pub const DEFAULTS: &str = r#"
service_name = "gateway"
[http]
port = 8080

[gateway]
# One URL or several, separated by commas; with discovery on, the fallback while the
# Directory knows no serving order-view instance.
order_view_url = "http://127.0.0.1:8093"
discover_order_view = true
# Development machines only: see GatewayConfig::check_safe.
dev_mode = false
token_ttl_secs = 3600
issuer = "feedline-gateway"
audience = "feedline-api"
leeway_secs = 30
max_wait_secs = 30
proxy_timeout_ms = 10000
ensure_topics = true

# Hold, then refuse (503, Retry-After), commands while the consumer groups behind the gateway
# (the saga's and order-view's) are more than this many messages behind; 0 turns it off.
# 50,000 is two to three seconds of work at full speed on two cores: a higher bound keeps
# the services busier at the cost of seconds queued (benches/REPORT.md has the figures).
[gateway.admission]
max_backlog = 50000
check_interval_ms = 500
# A command arriving while they are refused waits this long for the backlog to fall before
# its 503: the services stay busy instead of idling through the clients' Retry-After.
max_hold_ms = 2000

[gateway.admission.groups]
orders = ["order-commands", "credit-events"]
customers = ["customer-commands", "order-events"]

# order-view's groups are per replica (`order-view.<generation>`): the one furthest behind
# counts, so the saga cannot outrun the read model that clients see outcomes in.
[gateway.admission.group_prefixes]
"order-view." = ["order-events", "customer-events", "credit-events"]

# Answers to requests with an Idempotency-Key are replayed to retries for 24 hours, as
# payment APIs do, up to 10,000 of them (a few hundred bytes each: seconds of full load,
# hours of a normal day). Past either bound a retry still gets the same ids (they derive from the
# key), the services drop its command as a duplicate, and its answer is built afresh.
[gateway.idempotency]
ttl_secs = 86400
max_entries = 10000

# Rate limits, caps and timeouts. Token buckets allow `burst` requests at once and
# `per_second` on average, per key; the token endpoint's are tight (they slow down guessing
# secrets), the API's leave room for the benches (thousands of orders per second from one
# client and one address).
[gateway.limits]
token_per_client = { burst = 10, per_second = 1.0 }
token_per_ip = { burst = 10, per_second = 1.0 }
api_per_client = { burst = 20000, per_second = 10000.0 }
api_per_ip = { burst = 40000, per_second = 20000.0 }
max_keys = 100000
# Addresses or CIDR blocks of the proxies whose X-Forwarded-For is believed; none by default.
trusted_proxies = []
max_streams_per_client = 10
max_streams = 1000
write_timeout_ms = 30000
keep_alive_ms = 15000
request_timeout_ms = 15000
max_waiters = 1000
ticket_ttl_secs = 60
max_tickets = 10000

# Every enabled client is bound to a tenant (`tenant = "acme"`: its tokens see and act on
# that tenant's customers and their orders only, and customers it registers are that
# tenant's) or has the `admin` scope (every tenant), never both.
[gateway.clients.demo]
# sha256("demo-secret")
secret_sha256 = "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf"
# Development only: the demo client is an admin, seeing every tenant's customers.
scopes = ["orders:write", "customers:write", "feed:read", "admin"]
"#;

/// How long start-up waits for the Directory to read what `_services` holds, so the first
/// requests go to the instances it lists rather than to the static list.
const DIRECTORY_SYNC: Duration = Duration::from_secs(3);

/// Where order-view's replicas come from: the Directory when `gateway.discover_order_view`
/// is on (the static list is its fallback), else the static list.
async fn order_view_source(
    settings: &Settings,
    config: &GatewayConfig,
    static_urls: Vec<String>,
    token: &CancellationToken,
) -> Source {
    if !config.discover_order_view {
        return Source::Static(static_urls);
    }
    match Directory::start(settings, token.clone()).await {
        Ok(directory) => {
            if !directory.synced(DIRECTORY_SYNC).await {
                tracing::info!(
                    "the service directory is still reading; order-view's static list serves meanwhile"
                );
            }
            Source::Directory {
                directory,
                fallback: static_urls,
            }
        }
        // Not fatal: the static list still reaches order-view.
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the service directory; order-view's static list only");
            Source::Static(static_urls)
        }
    }
}

/// How long a producer flush may hold shutdown: every command was already acknowledged
/// before its answer, so there is normally nothing left.
const FLUSH: Duration = Duration::from_secs(5);

/// Runs until `token` is cancelled.
pub async fn run(settings: Settings, token: CancellationToken) -> anyhow::Result<()> {
    let (_, handle) = spawn(settings, token).await?;
    handle.await.context("gateway task panicked")?
}

/// Starts the gateway: ensures the topics, registers the command schemas and prepares
/// their encoders, then serves HTTP on `http.host:http.port` (port 0 picks a free one)
/// until `token` is cancelled, finishing in-flight requests.
pub async fn spawn(
    settings: Settings,
    token: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let config = GatewayConfig::from_settings(&settings)?;
    config.check_safe()?;
    if config.dev_mode {
        tracing::warn!(
            demo_client = config.demo_client_enabled(),
            dev_secret = config.uses_dev_secret(),
            "gateway.dev_mode is on: the demo client and the published development secret are allowed; never expose this gateway"
        );
    }
    let keys = TokenKeys::new(
        config.verification_keys().iter(),
        &config.signing_key()?,
        config.expected(),
    );
    let external = match &config.external_issuer {
        Some(external) => {
            let issuer = ExternalIssuer::new(external, keys.expected.leeway_secs)
                .context("failed to set up the external issuer")?;
            let issuer = Arc::new(issuer);
            // Not fatal: the gateway's own tokens work without the provider, and its
            // tokens verify once the set arrives.
            issuer.fetch_if_allowed().await;
            tokio::spawn(jwks::refresh(issuer.clone(), token.clone()));
            Some(issuer)
        }
        None => None,
    };

    let platform_metrics = Metrics::new(&settings.service_name);
    let metrics = GatewayMetrics::new(&platform_metrics);

    if config.ensure_topics {
        until_up("create the topics", &token, || {
            feedline::contracts::ensure_topics(&settings.kafka)
        })
        .await
        .context("failed to create the topics")?;
    }

    // Registered once here; the hot path only serializes.
    let registry = RegistryClient::new(&settings.registry);
    let orders = CommandTopic {
        topic: settings.kafka.name(ORDER_COMMANDS),
        encoder: until_up("register the order-commands schema", &token, || {
            feedline::contracts::encoder(&registry, &settings.kafka, ORDER_COMMANDS)
        })
        .await
        .context("failed to register the order-commands schema")?,
    };
    let customers = CommandTopic {
        topic: settings.kafka.name(CUSTOMER_COMMANDS),
        encoder: until_up("register the customer-commands schema", &token, || {
            feedline::contracts::encoder(&registry, &settings.kafka, CUSTOMER_COMMANDS)
        })
        .await
        .context("failed to register the customer-commands schema")?,
    };
    let producer = Producer::new(&settings.kafka, platform_metrics.clone())
        .context("failed to create the kafka producer")?;

    let admission = Arc::new(Admission::new(
        if config.admission.enabled() {
            config.admission.max_backlog
        } else {
            0
        },
        Duration::from_millis(config.admission.max_hold_ms),
        metrics.clone(),
    ));
    if config.admission.enabled() {
        tokio::spawn(admission::watch(
            admission.clone(),
            settings.kafka.clone(),
            config.admission.clone(),
            token.clone(),
        ));
    }

    let static_urls = config.order_view_urls();
    let upstream = Upstream::new(&static_urls, EjectionPolicy::default(), metrics.clone());
    let source = order_view_source(&settings, &config, static_urls, &token).await;
    source.clone().follow(upstream.clone(), token.clone());
    let order_view = OrderView::new(upstream, config.proxy_timeout());
    let limits = &config.limits;
    let state = Arc::new(AppState {
        limits: Limits::new(limits),
        streams: Streams::new(
            limits.max_streams_per_client,
            limits.max_streams,
            metrics.feed_streams.clone(),
        ),
        waiters: Waiters::new(
            order_view.clone(),
            limits.max_waiters,
            metrics.clone(),
            token.clone(),
        ),
        tickets: Tickets::new(
            Duration::from_secs(limits.ticket_ttl_secs),
            limits.max_tickets,
        ),
        request_timeout: limits.request_timeout(),
        keep_alive: limits.keep_alive(),
        owners: tenancy::Owners::new(tenancy::OWNERS_REMEMBERED),
        admission,
        auth: Auth {
            keys,
            external,
            clients: Clients::new(&config.clients),
            token_ttl_secs: config.token_ttl_secs,
        },
        metrics,
        producer: producer.clone(),
        producer_name: config.producer_name(),
        orders,
        customers,
        order_view,
        source,
        ops: ops::Ops::new(settings.kafka.clone()),
        answers: Answers::new(config.idempotency.ttl(), config.idempotency.max_entries),
        max_wait: config.max_wait(),
        shutdown: token.clone(),
    });
    let health = feedline::Health::new();
    health.kafka(producer.context());
    health.registry(&settings.registry);
    let router = app::router(state.clone(), platform_metrics, health.clone());

    let addr = settings.http_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        producer = %state.producer_name,
        order_view = %config.order_view_url,
        discovery = state.source.is_discovery(),
        "gateway serving"
    );
    let announcer = settings.discovery.enabled.then(|| {
        let beacon = feedline::discovery::Beacon {
            health,
            consumer: None,
        };
        let announcer =
            feedline::discovery::Announcer::new(&settings, addr, producer.clone(), beacon);
        tokio::spawn(announcer.run(token.clone()))
    });
    let write_timeout = config.limits.write_timeout();
    let write_timeouts = state.metrics.write_timeouts.clone();
    let handle = tokio::spawn(async move {
        // Connection info for the per-address limits; a write timeout on every connection.
        let listener = TimedListener::new(listener, write_timeout, write_timeouts);
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<PeerAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .context("http server failed")?;
        if let Some(announcer) = announcer {
            // Its tombstone goes out before the producer is flushed.
            announcer.await.context("announcer panicked")??;
        }
        if let Err(e) = producer.flush(FLUSH).await {
            tracing::warn!(error = %e, "producer flush at shutdown failed");
        }
        tracing::info!("gateway stopped");
        Ok(())
    });
    Ok((addr, handle))
}
