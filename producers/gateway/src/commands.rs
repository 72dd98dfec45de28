//! The write side: validate a request, publish its command (Avro, keyed by customer) and
//! answer `202 Accepted` once the broker acknowledged it, or `200` with the outcome when the
//! client asked to wait for it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use feedline::Outgoing;
use feedline::codec::AvroEncoder;
use feedline_schemas::types::{
    CancelOrder, ChangeCreditLimit, CustomerCommand, CustomerCommandPayload, OrderCommand,
    OrderCommandPayload, PlaceOrder, RegisterCustomer,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Authorized, CustomersWrite, OrdersWrite};
use crate::error::{ApiError, ApiJson, OptionalJson};
use crate::money::Money;
use crate::orderview::{self, WaitOutcome};
use crate::proxy::UuidPath;

/// Longest name and cancel reason accepted, in characters.
const MAX_TEXT: usize = 200;
/// Longest `X-Correlation-ID` taken from a client.
const MAX_CORRELATION_ID: usize = 128;

/// A command topic (prefixed name) and its encoder, prepared once at start.
#[derive(Debug)]
pub struct CommandTopic<T> {
    pub topic: String,
    pub encoder: AvroEncoder<T>,
}

#[derive(Debug, Deserialize)]
pub struct PlaceOrderBody {
    pub customer_id: Uuid,
    pub total: Money,
}

#[derive(Debug, Default, Deserialize)]
pub struct CancelOrderBody {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RegisterCustomerBody {
    pub name: String,
    pub credit_limit: Money,
}

#[derive(Debug, Deserialize)]
pub struct CreditLimitBody {
    pub credit_limit: Money,
}

/// The id of a business flow: the client's `X-Correlation-ID`, or a fresh one.
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for CorrelationId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("x-correlation-id") else {
            return Ok(CorrelationId(Uuid::new_v4().to_string()));
        };
        let bad = || {
            ApiError::invalid_parameter(
                "X-Correlation-ID",
                format!(
                    "X-Correlation-ID must be 1 to {MAX_CORRELATION_ID} visible ASCII characters"
                ),
            )
        };
        let value = value.to_str().map_err(|_| bad())?.trim();
        if value.is_empty()
            || value.len() > MAX_CORRELATION_ID
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad());
        }
        Ok(CorrelationId(value.to_owned()))
    }
}

/// How long to hold the answer for the outcome: `?wait=5s` (also `5`, `500ms`) or
/// `Prefer: wait=5` (RFC 7240), capped at `gateway.max_wait_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait(pub Option<Duration>);

impl FromRequestParts<Arc<AppState>> for Wait {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let wanted = match query_wait(parts.uri.query())? {
            Some(wait) => Some(wait),
            None => prefer_wait(&parts.headers),
        };
        Ok(Wait(
            wanted
                .filter(|w| !w.is_zero())
                .map(|w| w.min(state.max_wait)),
        ))
    }
}

fn query_wait(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::invalid_parameter("query", format!("malformed query: {e}")))?;
    let Some((_, value)) = pairs.into_iter().find(|(k, _)| k == "wait") else {
        return Ok(None);
    };
    parse_duration(&value).map(Some).ok_or_else(|| {
        ApiError::invalid_parameter(
            "wait",
            format!("wait must be seconds such as 5s, 5 or 500ms, got {value:?}"),
        )
    })
}

/// An unparsable preference is ignored, as RFC 7240 asks.
fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pref| pref.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("wait"))
        .and_then(|(_, secs)| secs.trim().trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let number = |digits: &str| -> Option<u64> {
        (!digits.is_empty() && digits.len() <= 9 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    if let Some(ms) = text.strip_suffix("ms") {
        number(ms).map(Duration::from_millis)
    } else if let Some(secs) = text.strip_suffix('s') {
        number(secs).map(Duration::from_secs)
    } else {
        number(text).map(Duration::from_secs)
    }
}

/// What a command is about, for its answer's URLs.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Order,
    Customer,
}

impl Subject {
    fn id_field(self) -> &'static str {
        match self {
            Subject::Order => "order_id",
            Subject::Customer => "customer_id",
        }
    }

    fn status_url(self, id: &str) -> String {
        match self {
            Subject::Order => format!("/orders/{id}"),
            Subject::Customer => format!("/customers/{id}"),
        }
    }

    fn feed_query(self, id: &str) -> String {
        format!("{}={id}", self.id_field())
    }
}

/// The body of `202 Accepted` (and, with the outcome added, of `200` after a wait).
#[derive(Debug, Serialize)]
struct Accepted {
    correlation_id: String,
    status_url: String,
    feed_url: String,
}

fn answer(subject: Subject, id: &str, correlation_id: &str, outcome: Option<Value>) -> Response {
    let status_url = subject.status_url(id);
    let accepted = Accepted {
        correlation_id: correlation_id.to_owned(),
        feed_url: format!("/feed?{}", subject.feed_query(id)),
        status_url: status_url.clone(),
    };
    let mut body = match serde_json::to_value(&accepted) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    body.insert(subject.id_field().to_owned(), json!(id));
    let status = match outcome {
        Some(view) => {
            if let Subject::Order = subject
                && let Some(state) = orderview::order_status(&view)
            {
                body.insert("status".to_owned(), json!(state));
            }
            let key = match subject {
                Subject::Order => "order",
                Subject::Customer => "customer",
            };
            body.insert(key.to_owned(), view);
            StatusCode::OK
        }
        None => StatusCode::ACCEPTED,
    };
    let mut response = (status, axum::Json(Value::Object(body))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, location);
    }
    if let Ok(correlation) = HeaderValue::from_str(correlation_id) {
        headers.insert("x-correlation-id", correlation);
    }
    response
}

impl AppState {
    /// Encodes and sends one command; `Ok` only once the broker acknowledged it.
    async fn publish<T: Serialize>(
        &self,
        topic: &CommandTopic<T>,
        command: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), ApiError> {
        self.admission.admit().await?;
        let payload = topic.encoder.encode(value).map_err(|e| {
            tracing::error!(error = %e, command, "cannot encode command");
            ApiError::internal("the command could not be encoded")
        })?;
        match self
            .producer
            .send(Outgoing::new(&topic.topic, Some(key.as_bytes()), &payload))
            .await
        {
            Ok(delivered) => {
                self.metrics
                    .commands_published
                    .with_label_values(&[command])
                    .inc();
                tracing::info!(
                    command,
                    key,
                    topic = %topic.topic,
                    partition = delivered.partition,
                    offset = delivered.offset,
                    "command published"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .command_failures
                    .with_label_values(&[command])
                    .inc();
                tracing::warn!(error = %e, command, key, "command not acknowledged");
                Err(ApiError::kafka_unavailable())
            }
        }
    }

    /// Holds the answer until `done` holds for order-view's view of `subject` (or gives up).
    async fn wait_for(
        &self,
        wait: Wait,
        subject: Subject,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let limit = wait.0?;
        let outcome = self
            .order_view
            .wait_until(
                &subject.status_url(id),
                &subject.feed_query(id),
                done,
                tokio::time::Instant::now() + limit,
                &self.shutdown,
            )
            .await;
        self.metrics
            .wait_outcomes
            .with_label_values(&[outcome.label()])
            .inc();
        match outcome {
            WaitOutcome::Done(view) => Some(view),
            WaitOutcome::TimedOut | WaitOutcome::Shutdown => None,
        }
    }

    fn order_command(&self, correlation_id: String, payload: OrderCommandPayload) -> OrderCommand {
        // Commands start a flow: nothing caused them but the request.
        OrderCommand::new(&self.producer_name, correlation_id, None, payload)
    }

    fn customer_command(
        &self,
        correlation_id: String,
        payload: CustomerCommandPayload,
    ) -> CustomerCommand {
        CustomerCommand::new(&self.producer_name, correlation_id, None, payload)
    }
}

fn is_final(status: Option<String>, finals: &[&str]) -> bool {
    status.is_some_and(|s| finals.contains(&s.as_str()))
}

/// `POST /orders`.
pub async fn place_order(
    State(app): State<Arc<AppState>>,
    _auth: Authorized<OrdersWrite>,
    CorrelationId(correlation_id): CorrelationId,
    wait: Wait,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> Result<Response, ApiError> {
    if body.total.cents() == 0 {
        return Err(ApiError::invalid_field(
            "total",
            "total must be greater than zero",
        ));
    }
    // Time-ordered (UUIDv7): every service keys its order rows by this id, and ids that
    // grow with time append to those indexes rather than dirtying a random page each.
    let order_id = Uuid::now_v7().to_string();
    let customer_id = body.customer_id.to_string();
    let command = app.order_command(
        correlation_id.clone(),
        OrderCommandPayload::PlaceOrder(PlaceOrder {
            order_id: order_id.clone(),
            customer_id: customer_id.clone(),
            total_cents: body.total.cents(),
        }),
    );
    app.publish(&app.orders, "PlaceOrder", &customer_id, &command)
        .await?;
    let outcome = app
        .wait_for(wait, Subject::Order, &order_id, |view| {
            is_final(
                orderview::order_status(view),
                &["APPROVED", "REJECTED", "CANCELLED"],
            )
        })
        .await;
    Ok(answer(Subject::Order, &order_id, &correlation_id, outcome))
}

/// `POST /orders/{id}/cancel`. The key is the order's customer, which only order-view
/// knows: an order it has not seen (yet) is a 404.
pub async fn cancel_order(
    State(app): State<Arc<AppState>>,
    _auth: Authorized<OrdersWrite>,
    UuidPath(ids): UuidPath,
    CorrelationId(correlation_id): CorrelationId,
    wait: Wait,
    OptionalJson(body): OptionalJson<CancelOrderBody>,
) -> Result<Response, ApiError> {
    let order_id = path_id(&ids)?;
    let reason = body.unwrap_or_default().reason;
    if let Some(reason) = &reason
        && reason.chars().count() > MAX_TEXT
    {
        return Err(ApiError::invalid_field(
            "reason",
            format!("reason must be at most {MAX_TEXT} characters"),
        ));
    }
    let view = app
        .order_view
        .get_json(&format!("/orders/{order_id}"))
        .await
        .map_err(|e| {
            app.metrics
                .upstream_errors
                .with_label_values(&[e.kind()])
                .inc();
            tracing::warn!(error = %e, %order_id, "cannot look up the order to cancel");
            ApiError::upstream_unavailable(format!("cannot look up order {order_id}: {e}"))
        })?
        .ok_or_else(|| ApiError::not_found(format!("order {order_id} not found")))?;
    let customer_id = orderview::field(&view, "order", "customer_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            ApiError::upstream_unavailable(format!(
                "order-view's answer for order {order_id} has no customer_id"
            ))
        })?
        .to_string();
    let command = app.order_command(
        correlation_id.clone(),
        OrderCommandPayload::CancelOrder(CancelOrder {
            order_id: order_id.clone(),
            customer_id: customer_id.clone(),
            reason,
        }),
    );
    app.publish(&app.orders, "CancelOrder", &customer_id, &command)
        .await?;
    // A rejected order stays rejected: that is the answer to a cancel too.
    let outcome = app
        .wait_for(wait, Subject::Order, &order_id, |view| {
            is_final(orderview::order_status(view), &["CANCELLED", "REJECTED"])
        })
        .await;
    Ok(answer(Subject::Order, &order_id, &correlation_id, outcome))
}

/// `POST /customers`.
pub async fn register_customer(
    State(app): State<Arc<AppState>>,
    _auth: Authorized<CustomersWrite>,
    CorrelationId(correlation_id): CorrelationId,
    wait: Wait,
    ApiJson(body): ApiJson<RegisterCustomerBody>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "name must not be empty"));
    }
    if name.chars().count() > MAX_TEXT {
        return Err(ApiError::invalid_field(
            "name",
            format!("name must be at most {MAX_TEXT} characters"),
        ));
    }
    // Time-ordered, as order ids are.
    let customer_id = Uuid::now_v7().to_string();
    let command = app.customer_command(
        correlation_id.clone(),
        CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
            customer_id: customer_id.clone(),
            name: name.to_owned(),
            credit_limit_cents: body.credit_limit.cents(),
        }),
    );
    app.publish(&app.customers, "RegisterCustomer", &customer_id, &command)
        .await?;
    let outcome = app
        .wait_for(wait, Subject::Customer, &customer_id, |_| true)
        .await;
    Ok(answer(
        Subject::Customer,
        &customer_id,
        &correlation_id,
        outcome,
    ))
}

/// `PUT /customers/{id}/credit-limit`.
pub async fn change_credit_limit(
    State(app): State<Arc<AppState>>,
    _auth: Authorized<CustomersWrite>,
    UuidPath(ids): UuidPath,
    CorrelationId(correlation_id): CorrelationId,
    wait: Wait,
    ApiJson(body): ApiJson<CreditLimitBody>,
) -> Result<Response, ApiError> {
    let customer_id = path_id(&ids)?;
    let limit = body.credit_limit;
    let command = app.customer_command(
        correlation_id.clone(),
        CustomerCommandPayload::ChangeCreditLimit(ChangeCreditLimit {
            customer_id: customer_id.clone(),
            credit_limit_cents: limit.cents(),
        }),
    );
    app.publish(&app.customers, "ChangeCreditLimit", &customer_id, &command)
        .await?;
    let outcome = app
        .wait_for(wait, Subject::Customer, &customer_id, |view| {
            credit_limit_of(view) == Some(limit)
        })
        .await;
    Ok(answer(
        Subject::Customer,
        &customer_id,
        &correlation_id,
        outcome,
    ))
}

fn path_id(ids: &[(String, Uuid)]) -> Result<String, ApiError> {
    ids.iter()
        .find(|(name, _)| name == "id")
        .map(|(_, id)| id.to_string())
        .ok_or_else(|| ApiError::internal("route without an {id} parameter"))
}

/// A customer's credit limit in order-view's answer: `credit_limit_cents`, or
/// `credit_limit` as a decimal string or number.
fn credit_limit_of(view: &Value) -> Option<Money> {
    if let Some(cents) =
        orderview::field(view, "customer", "credit_limit_cents").and_then(Value::as_i64)
    {
        return Some(Money::from_cents(cents));
    }
    orderview::field(view, "customer", "credit_limit")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_durations() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "ms", "-1", "1.5s", "5m", "soon", "9999999999"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(
            query_wait(Some("wait=2s")).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(query_wait(Some("x=1")).unwrap(), None);
        assert_eq!(
            query_wait(Some("wait=later")).unwrap_err().field.as_deref(),
            Some("wait")
        );
    }

    #[test]
    fn prefer_header_wait() {
        let mut headers = HeaderMap::new();
        assert_eq!(prefer_wait(&headers), None);
        headers.insert("prefer", HeaderValue::from_static("respond-async, wait=10"));
        assert_eq!(prefer_wait(&headers), Some(Duration::from_secs(10)));
        headers.insert("prefer", HeaderValue::from_static("wait=soon"));
        assert_eq!(prefer_wait(&headers), None);
    }

    #[test]
    fn credit_limit_in_either_shape() {
        let limit = Some(Money::from_cents(15000));
        assert_eq!(
            credit_limit_of(&json!({"credit_limit_cents": 15000})),
            limit
        );
        assert_eq!(credit_limit_of(&json!({"credit_limit": "150.00"})), limit);
        assert_eq!(
            credit_limit_of(&json!({"customer": {"credit_limit": 150}})),
            limit
        );
        assert_eq!(credit_limit_of(&json!({"name": "x"})), None);
    }

    #[test]
    fn accepted_answers_point_at_the_resource() {
        let response = answer(Subject::Order, "o1", "c1", None);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::LOCATION], "/orders/o1");
        let response = answer(
            Subject::Order,
            "o1",
            "c1",
            Some(json!({"status": "APPROVED"})),
        );
        assert_eq!(response.status(), StatusCode::OK);
    }
}
