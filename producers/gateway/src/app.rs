//! The shared state and the route table. Routes are added through [`Routes::add`], which
//! records each (method, path) as it registers it: that record is what the OpenAPI test
//! holds the document against, so the two cannot drift apart unnoticed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, on};
use feedline::{CancellationToken, Metrics, Producer};
use feedline_schemas::types::{CustomerCommand, OrderCommand};

use crate::auth::Auth;
use crate::commands::{self, CommandAnswer, CommandTopic};
use crate::idempotency::Answers;
use crate::metrics::{self as gateway_metrics, GatewayMetrics};
use crate::orderview::OrderView;
use crate::{dashboard, error, fleet, limits, openapi, ops, proxy, streams, ticket, token};

/// Requests carry a few hundred bytes of JSON; anything near this is not a command.
const BODY_LIMIT: usize = 64 * 1024;

/// Everything a handler may need, built once at start.
#[derive(Debug)]
pub struct AppState {
    /// Refuses commands while the services behind the gateway are too far behind.
    pub admission: Arc<crate::admission::Admission>,
    pub auth: Auth,
    pub metrics: Arc<GatewayMetrics>,
    pub producer: Producer,
    /// `gateway-<replica>`, the `producer` of every command.
    pub producer_name: String,
    pub orders: CommandTopic<OrderCommand>,
    pub customers: CommandTopic<CustomerCommand>,
    pub order_view: OrderView,
    /// Where order-view's replicas come from; the Directory of every instance, for `/fleet`.
    pub source: crate::upstream::Source,
    /// Dead letters and freshness for `/ops`, cached briefly.
    pub ops: crate::ops::Ops,
    /// Answers to requests with an `Idempotency-Key`, replayed to their retries.
    pub answers: Answers<CommandAnswer>,
    pub max_wait: Duration,
    /// Token buckets per client and per address.
    pub limits: crate::limits::Limits,
    /// The live feeds open now, capped.
    pub streams: Arc<crate::streams::Streams>,
    /// Requests waiting for outcomes, over one feed subscription.
    pub waiters: Arc<crate::waiters::Waiters>,
    /// One-use tickets for the browser's live feed.
    pub tickets: crate::ticket::Tickets,
    /// Customers' tenants, as tenants' commands looked them up.
    pub owners: crate::tenancy::Owners,
    /// Time limit of a request other than the live feed.
    pub request_timeout: Duration,
    /// Comment lines on a quiet live feed this often.
    pub keep_alive: Duration,
    /// Ends waits and live feeds at shutdown, so the graceful drain does not hang on them.
    pub shutdown: CancellationToken,
}

/// One route of the API, as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub path: &'static str,
}

struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<RouteInfo>,
}

impl Routes {
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<AppState>>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.table.push(RouteInfo { method, path });
        self
    }
}

/// The API routes (without state) and their table.
pub fn api() -> (Router<Arc<AppState>>, Vec<RouteInfo>) {
    let routes = Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add(Method::GET, "/", dashboard::page)
    .add(Method::GET, "/openapi.json", openapi::document)
    .add(Method::POST, "/auth/token", token::issue)
    .add(Method::POST, "/orders", commands::place_order)
    .add(Method::GET, "/orders", proxy::list)
    .add(Method::GET, "/orders/{id}", proxy::item)
    .add(Method::POST, "/orders/{id}/cancel", commands::cancel_order)
    .add(Method::POST, "/customers", commands::register_customer)
    .add(Method::GET, "/customers/{id}", proxy::item)
    .add(Method::GET, "/customers/{id}/orders", proxy::item)
    .add(
        Method::PUT,
        "/customers/{id}/credit-limit",
        commands::change_credit_limit,
    )
    .add(Method::POST, "/feed/ticket", ticket::issue)
    .add(Method::GET, "/feed", proxy::feed)
    .add(Method::GET, "/fleet", fleet::fleet)
    .add(Method::GET, "/ops", ops::ops);
    (routes.router, routes.table)
}

/// Every route the gateway serves: the API plus the platform's `/metrics` and `/health`.
pub fn route_table() -> Vec<RouteInfo> {
    let mut table = api().1;
    table.extend(OPS_ROUTES.iter().map(|path| RouteInfo {
        method: Method::GET,
        path,
    }));
    table
}

/// What `feedline::http::ops_router` serves.
const OPS_ROUTES: [&str; 4] = ["/metrics", "/health", "/health/live", "/health/ready"];

/// The whole service: API, ops routes, JSON errors for unknown routes and methods, request
/// metrics on everything.
pub fn router(
    state: Arc<AppState>,
    platform_metrics: Arc<Metrics>,
    health: feedline::Health,
) -> Router {
    let metrics = state.metrics.clone();
    let (api, _) = api();
    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        streams::request_timeout,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        limits::per_ip,
    ))
    .with_state(state)
    .merge(feedline::http::ops_router(platform_metrics, health))
    .fallback(error::not_found)
    .method_not_allowed_fallback(error::method_not_allowed)
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    .layer(axum::middleware::from_fn_with_state(
        metrics,
        gateway_metrics::track,
    ))
    // Outermost: the request's span covers everything the gateway does for it.
    .layer(axum::middleware::from_fn(
        feedline::telemetry::trace_request,
    ))
}
