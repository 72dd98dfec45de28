//! The HTTP API: point look-ups from the cache, listings from SQLite, the live feed, and the
//! platform's `/metrics` and `/health`.
//!
//! Every error is JSON, `{"error": {"code", "message", "field"}}`; bad input is a 4xx that
//! names the parameter, never a 5xx.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use feedline::{Health, Metrics};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::feed::FeedHub;
use crate::metrics::ViewMetrics;
use crate::model::{Filter, Order, Status};
use crate::store::{ListQuery, Store, StoreError};

/// The tenant a request is answered for, set by the gateway from the client's token (which
/// drops any copy a client sent). Without it a request sees every tenant: order-view sits
/// on the internal network, behind the gateway, and the gateway's own look-ups and its
/// admins' requests go without it.
pub const TENANT_HEADER: &str = "x-feedline-tenant";

/// Page size of listings when `limit` is not given, and its maximum.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    pub store: Store,
    pub cache: Arc<Cache>,
    pub hub: Arc<FeedHub>,
    pub metrics: ViewMetrics,
    pub keep_alive: Duration,
    /// Ends the feed streams at shutdown, so the server can drain.
    pub token: CancellationToken,
}

pub fn router(app: Arc<App>, platform: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/customers/{id}", get(get_customer))
        .route("/customers/{id}/orders", get(customer_orders))
        .route("/feed", get(feed))
        .with_state(app)
        .merge(feedline::http::ops_router(platform, health))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint only answers GET",
                None,
            )
        })
        // A read continues the gateway's trace (`traceparent`): one trace shows the proxied call.
        .layer(axum::middleware::from_fn(
            feedline::telemetry::trace_request,
        ))
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        field: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: field.map(str::to_owned),
        }
    }

    fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            message,
            Some(field),
        )
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message, None)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "read model query failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the read model cannot be read right now",
            None,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        (self.status, Json(body)).into_response()
    }
}

fn json_response(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The query string, checked parameter by parameter: every parameter must be known and given
/// once.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Self, ApiError> {
        let Query(pairs) = query.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("cannot parse the query string: {}", e.body_text()),
                None,
            )
        })?;
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_parameter",
                    format!("unknown parameter {name:?}; known: {}", known.join(", ")),
                    Some(&name),
                ));
            }
            if params.contains_key(&name) {
                return Err(ApiError::invalid(&name, format!("{name} is given twice")));
            }
            params.insert(name, value);
        }
        Ok(Params(params))
    }

    fn uuid(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.0.get(name).map(|v| uuid_param(name, v)).transpose()
    }

    fn limit(&self) -> Result<u32, ApiError> {
        let Some(text) = self.0.get("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"),
            )),
        }
    }

    fn status(&self) -> Result<Option<Status>, ApiError> {
        let Some(text) = self.0.get("status") else {
            return Ok(None);
        };
        Status::parse(&text.to_ascii_uppercase())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!(
                        "status must be one of PENDING, APPROVED, REJECTED, CANCELLED, got {text:?}"
                    ),
                )
            })
    }

    /// The opaque cursor of a previous page (an order position).
    fn cursor(&self) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.0.get("cursor") else {
            return Ok(None);
        };
        match text.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                "cursor",
                format!("cursor {text:?} is not one this API returned"),
            )),
        }
    }
}

/// The request's [`TENANT_HEADER`]. An empty or non-text one is refused rather than read as
/// "no tenant", which would show every tenant's rows.
fn tenant(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(tenant) if !tenant.is_empty() => Ok(Some(tenant.to_owned())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("{TENANT_HEADER} must be a non-empty tenant name"),
            Some(TENANT_HEADER),
        )),
    }
}

/// Whether a row of `row_tenant` may be shown to a request for `tenant`.
fn visible(tenant: Option<&str>, row_tenant: Option<&str>) -> bool {
    tenant.is_none_or(|t| row_tenant == Some(t))
}

/// A UUID parameter in canonical form (the form ids are stored in).
fn uuid_param(name: &str, value: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(value)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| ApiError::invalid(name, format!("{name} must be a UUID, got {value:?}")))
}

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::invalid("id", e.body_text()))?;
    uuid_param("id", &id)
}

/// Another tenant's order is a 404, as a missing one: its existence is not theirs to know.
async fn get_order(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&headers)?;
    let id = path_id(path)?;
    let not_found = || ApiError::not_found(format!("no order {id}"));
    if let Some(order) = app.cache.order(&id) {
        app.metrics.cache_lookup("order", true);
        if !visible(tenant.as_deref(), order.tenant.as_deref()) {
            return Err(not_found());
        }
        return Ok(json_response(&*order));
    }
    app.metrics.cache_lookup("order", false);
    let epoch = app.cache.epoch();
    let order = app.store.order(&id).await?.ok_or_else(not_found)?;
    let order = Arc::new(order);
    app.cache.fill_order(order.clone(), epoch);
    if !visible(tenant.as_deref(), order.tenant.as_deref()) {
        return Err(not_found());
    }
    Ok(json_response(&*order))
}

async fn get_customer(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&headers)?;
    let id = path_id(path)?;
    let not_found = || ApiError::not_found(format!("no customer {id}"));
    if let Some(customer) = app.cache.customer(&id) {
        app.metrics.cache_lookup("customer", true);
        if !visible(tenant.as_deref(), customer.tenant.as_deref()) {
            return Err(not_found());
        }
        return Ok(json_response(&*customer));
    }
    app.metrics.cache_lookup("customer", false);
    let epoch = app.cache.epoch();
    let customer = app.store.customer(&id).await?.ok_or_else(not_found)?;
    let customer = Arc::new(customer);
    app.cache.fill_customer(customer.clone(), epoch);
    if !visible(tenant.as_deref(), customer.tenant.as_deref()) {
        return Err(not_found());
    }
    Ok(json_response(&*customer))
}

#[derive(Serialize)]
struct PageJson {
    orders: Vec<Order>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

async fn page(app: &App, query: ListQuery) -> Result<Response, ApiError> {
    let page = app.store.list_orders(&query).await?;
    Ok(json_response(&PageJson {
        orders: page.orders,
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

/// `GET /orders?status=&customer_id=&limit=&cursor=`: newest first.
async fn list_orders(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&headers)?;
    let params = Params::parse(query, &["status", "customer_id", "limit", "cursor"])?;
    let query = ListQuery {
        status: params.status()?,
        customer_id: params.uuid("customer_id")?,
        tenant,
        before: params.cursor()?,
        limit: params.limit()?,
    };
    page(&app, query).await
}

/// `GET /customers/{id}/orders?status=&limit=&cursor=`: 404 for a customer nothing is
/// known about.
async fn customer_orders(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(&headers)?;
    let id = path_id(path)?;
    let params = Params::parse(query, &["status", "limit", "cursor"])?;
    let query = ListQuery {
        status: params.status()?,
        customer_id: Some(id.clone()),
        tenant: tenant.clone(),
        before: params.cursor()?,
        limit: params.limit()?,
    };
    let cached = app
        .cache
        .customer(&id)
        .is_some_and(|c| visible(tenant.as_deref(), c.tenant.as_deref()));
    if !cached && !app.store.customer_known(&id, tenant.as_deref()).await? {
        return Err(ApiError::not_found(format!("no customer {id}")));
    }
    page(&app, query).await
}

/// `GET /feed?customer_id=&order_id=&last_event_id=`: Server-Sent Events of every change.
/// A `Last-Event-ID` header wins over the parameter: a browser's EventSource keeps the URL
/// it started with and sends the header with the newest id when it reconnects. Any id is
/// accepted: one this read model cannot resume from (another replica's, from before a
/// rebuild, garbled) gets a snapshot, which is what such a client needs, not an error.
async fn feed(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = tenant(&headers)?;
    let params = Params::parse(query, &["customer_id", "order_id", "last_event_id"])?;
    let filter = Filter {
        customer_id: params.uuid("customer_id")?,
        order_id: params.uuid("order_id")?,
        tenant,
    };
    let header = headers.get("last-event-id").map(|value| {
        // Bytes that are not text are no id of ours either: a snapshot.
        String::from_utf8_lossy(value.as_bytes()).into_owned()
    });
    let resume = header
        .filter(|id| !id.trim().is_empty())
        .or_else(|| params.0.get("last_event_id").cloned());
    let stream = app
        .hub
        .subscribe(filter, resume.as_deref())
        .take_until(app.token.clone().cancelled_owned());
    let sse =
        Sse::new(stream).keep_alive(KeepAlive::new().interval(app.keep_alive).text("keep-alive"));
    // Proxies such as nginx would otherwise buffer the stream.
    Ok(([("x-accel-buffering", "no")], sse))
}
