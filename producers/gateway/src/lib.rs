//! Identity provider and API gateway: issues access tokens, validates requests, publishes
//! Avro commands and passes queries and the live feed through to order-view.
//!
//! - [`token`]: `POST /auth/token` (OAuth 2.0 client credentials)
//! - [`auth`], [`jwt`]: scopes, clients, HS256 tokens, the bearer-token extractor
//! - [`commands`]: the write routes, publishing to `order-commands` and `customer-commands`
//! - [`proxy`], [`orderview`]: the read routes, and waiting for a command's outcome
//! - [`admission`]: refusing commands while the services behind are too far behind
//! - [`idempotency`]: `Idempotency-Key`: ids derived from the key, answers replayed
//! - [`money`]: amounts converted exactly to cents
//! - [`error`]: the one JSON error shape, and the extractors that produce it
//! - [`dashboard`], [`openapi`]: the static page and the API description
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
pub mod idempotency;
pub mod jwt;
pub mod metrics;
pub mod money;
pub mod openapi;
pub mod orderview;
pub mod proxy;
pub mod tenancy;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use feedline::codec::RegistryClient;
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
use crate::jwt::TokenKeys;
use crate::metrics::GatewayMetrics;
use crate::orderview::OrderView;

/// This service's defaults, layered under the config file and `FEEDLINE_*` variables.
/// The demo client (`demo` / `demo-secret`) and the signing secret are for local runs:
/// production sets `gateway.jwt_secret` and disables the demo client
/// (`[gateway.clients.demo] enabled = false`); both are warned about at start.
pub const DEFAULTS: &str = r#"
service_name = "gateway"
[http]
port = 8080

[gateway]
order_view_url = "http://127.0.0.1:8093"
jwt_secret = "feedline-dev-only-jwt-secret-do-not-use-in-production"
token_ttl_secs = 3600
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

# Every enabled client is bound to a tenant (`tenant = "acme"`: its tokens see and act on
# that tenant's customers and their orders only, and customers it registers are that
# tenant's) or has the `admin` scope (every tenant), never both.
[gateway.clients.demo]
# sha256("demo-secret")
secret_sha256 = "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf"
# Development only: the demo client is an admin, seeing every tenant's customers.
scopes = ["orders:write", "customers:write", "feed:read", "admin"]
"#;

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
    if config.uses_dev_secret() {
        tracing::warn!(
            "gateway.jwt_secret is the built-in development secret: anyone can forge tokens; set FEEDLINE_GATEWAY__JWT_SECRET"
        );
    }
    if config.demo_client_enabled() {
        tracing::warn!(
            "the demo client with the published secret is enabled; disable it with [gateway.clients.demo] enabled = false"
        );
    }

    let platform_metrics = Metrics::new(&settings.service_name);
    let metrics = GatewayMetrics::new(&platform_metrics);

    if config.ensure_topics {
        until_up("create the topics", &token, || {
            feedline_schemas::ensure_topics(&settings.kafka)
        })
        .await
        .context("failed to create the topics")?;
    }

    // Registered once here; the hot path only serializes.
    let registry = RegistryClient::new(&settings.registry);
    let orders = CommandTopic {
        topic: settings.kafka.name(ORDER_COMMANDS),
        encoder: until_up("register the order-commands schema", &token, || {
            feedline_schemas::encoder(&registry, &settings.kafka, ORDER_COMMANDS)
        })
        .await
        .context("failed to register the order-commands schema")?,
    };
    let customers = CommandTopic {
        topic: settings.kafka.name(CUSTOMER_COMMANDS),
        encoder: until_up("register the customer-commands schema", &token, || {
            feedline_schemas::encoder(&registry, &settings.kafka, CUSTOMER_COMMANDS)
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

    let state = Arc::new(AppState {
        admission,
        auth: Auth {
            keys: TokenKeys::new(&config.jwt_secret),
            clients: Clients::new(&config.clients),
            token_ttl_secs: config.token_ttl_secs,
        },
        metrics,
        producer: producer.clone(),
        producer_name: config.producer_name(),
        orders,
        customers,
        order_view: OrderView::new(&config.order_view_url, config.proxy_timeout()),
        answers: Answers::new(config.idempotency.ttl(), config.idempotency.max_entries),
        max_wait: config.max_wait(),
        shutdown: token.clone(),
    });
    let health = feedline::Health::new();
    health.kafka(producer.context());
    health.registry(&settings.registry.url);
    let router = app::router(state.clone(), platform_metrics, health);

    let addr = settings.http_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        producer = %state.producer_name,
        order_view = %config.order_view_url,
        "gateway serving"
    );
    let handle = tokio::spawn(async move {
        feedline::http::serve(listener, router, token)
            .await
            .context("http server failed")?;
        if let Err(e) = producer.flush(FLUSH).await {
            tracing::warn!(error = %e, "producer flush at shutdown failed");
        }
        tracing::info!("gateway stopped");
        Ok(())
    });
    Ok((addr, handle))
}
