//! One file: one request path (extractors, topics, handlers) shared by every command.
//!
//! The write side: validate a request, publish its command (Avro, keyed by customer) and
//! answer `202 Accepted` once the broker acknowledged it, or `200` with the outcome when the
//! client asked to wait for it. With an `Idempotency-Key` the ids come from the key and a
//! retry gets the first answer ([`crate::idempotency`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
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
use crate::idempotency::{Begin, Fingerprint, IdempotencyKey, Key, KeyError};
use crate::money::Money;
use crate::orderview::{self, WaitOutcome};
use crate::proxy::UuidPath;
use crate::tenancy::{Resource, Tenancy};

/// Longest name and cancel reason accepted, in characters.
const MAX_TEXT: usize = 200;
/// Longest `X-Correlation-ID` taken from a client.
const MAX_CORRELATION_ID: usize = 128;
/// How long a keyed request waits for order-view to say whether its derived id is taken.
/// It runs beside the publish, so a healthy order-view adds nothing to the answer's time.
const VIEW_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// The customer's tenant: only an admin may choose it; a tenant's client registers
    /// customers of its own tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CreditLimitBody {
    pub credit_limit: Money,
}

/// The client's `X-Correlation-ID`, if it sent one.
fn correlation_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-correlation-id") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid_parameter(
            "X-Correlation-ID",
            format!("X-Correlation-ID must be 1 to {MAX_CORRELATION_ID} visible ASCII characters"),
        )
    };
    let value = value.to_str().map_err(|_| bad())?.trim();
    if value.is_empty()
        || value.len() > MAX_CORRELATION_ID
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(Some(value.to_owned()))
}

/// What every command request carries besides its token and body: its method and path,
/// `X-Correlation-ID`, the wait and `Idempotency-Key` (tied to the client once the
/// handler knows it, through [`CommandMeta::request`]).
#[derive(Debug)]
pub struct CommandMeta {
    target: String,
    correlation_id: Option<String>,
    wait: Wait,
    key: Option<Key>,
}

impl FromRequestParts<Arc<AppState>> for CommandMeta {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let key = Key::from_headers(&parts.headers).inspect_err(|e| {
            state
                .metrics
                .idempotency
                .with_label_values(&[e.label()])
                .inc();
        })?;
        Ok(CommandMeta {
            // Paths hold only fixed lower-case segments and UUIDs: lower-casing makes a
            // retry that spells a UUID differently the same request.
            target: format!("{} {}", parts.method, parts.uri.path().to_ascii_lowercase()),
            correlation_id: correlation_header(&parts.headers)?,
            wait: Wait::from_request_parts(parts, state).await?,
            key,
        })
    }
}

impl CommandMeta {
    /// The request of `client` whose validated body is `canonical` (one spelling of it).
    fn request(self, client: &str, canonical: Value) -> CommandRequest {
        let key = self.key.map(|key| key.of_client(client));
        let correlation_id = self.correlation_id.unwrap_or_else(|| {
            key.as_ref()
                .map_or_else(Uuid::new_v4, |k| k.derive(&self.target, "correlation_id"))
                .to_string()
        });
        feedline::telemetry::record_correlation_id(&correlation_id);
        CommandRequest {
            fingerprint: Fingerprint::of(&self.target, &canonical.to_string()),
            target: self.target,
            key,
            correlation_id,
            wait: self.wait,
        }
    }
}

/// One command request, ready to be answered.
#[derive(Debug)]
struct CommandRequest {
    target: String,
    key: Option<IdempotencyKey>,
    fingerprint: Fingerprint,
    correlation_id: String,
    wait: Wait,
}

impl CommandRequest {
    /// The id `what` of this request: derived from the key, so that a retry gets the same;
    /// without a key a fresh UUIDv7, time-ordered because every service keys its rows and
    /// `processed_events` by these ids, and ids that grow with time append to those indexes
    /// rather than dirtying a random page each.
    fn id(&self, what: &str) -> String {
        self.key
            .as_ref()
            .map_or_else(Uuid::now_v7, |k| k.derive(&self.target, what))
            .to_string()
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
        let wait = wanted
            .filter(|w| !w.is_zero())
            .map(|w| w.min(state.max_wait));
        if wait.is_some() {
            state.waiters.check_room()?;
        }
        Ok(Wait(wait))
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

/// A command's answer, kept to be replayed to retries of its `Idempotency-Key`: the body
/// as the JSON text sent, a third of the memory of its `Value`.
#[derive(Debug, Clone)]
pub struct CommandAnswer {
    status: StatusCode,
    body: Bytes,
    location: String,
    correlation_id: String,
    replayed: bool,
}

impl IntoResponse for CommandAnswer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response();
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&self.location) {
            headers.insert(header::LOCATION, location);
        }
        if let Ok(correlation) = HeaderValue::from_str(&self.correlation_id) {
            headers.insert("x-correlation-id", correlation);
        }
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

fn answer(
    subject: Subject,
    id: &str,
    correlation_id: &str,
    outcome: Option<Value>,
) -> CommandAnswer {
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
    CommandAnswer {
        status,
        // Serializing a map of strings cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
        location: status_url,
        correlation_id: correlation_id.to_owned(),
        replayed: false,
    }
}

/// Free text every service can store: no control characters (Unicode Cc: PostgreSQL's
/// text cannot hold NUL, and the rest only garble logs and screens) and at most
/// [`MAX_TEXT`] characters.
fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    if let Some((at, c)) = text.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "{field} must not contain control characters (U+{:04X} at character {})",
                u32::from(c),
                at + 1
            ),
        ));
    }
    if text.chars().count() > MAX_TEXT {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be at most {MAX_TEXT} characters"),
        ));
    }
    Ok(())
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
            .waiters
            .wait_until(
                &subject.status_url(id),
                id,
                done,
                tokio::time::Instant::now() + limit,
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

    /// Answers `request` by `work`; a retry of a keyed request this process answered gets
    /// that answer again instead, and a different request under the same key a 422.
    async fn answer_once(
        &self,
        request: &CommandRequest,
        work: impl Future<Output = Result<CommandAnswer, ApiError>>,
    ) -> Result<Response, ApiError> {
        let Some(key) = &request.key else {
            return work.await.map(IntoResponse::into_response);
        };
        let claim = match self.answers.begin(key, request.fingerprint) {
            Ok(Begin::First(claim)) => claim,
            Ok(Begin::Replay(answer)) => {
                self.metrics
                    .idempotency
                    .with_label_values(&["replayed"])
                    .inc();
                tracing::info!(request = %request.target, "idempotent request replayed");
                return Ok(CommandAnswer {
                    replayed: true,
                    ..answer
                }
                .into_response());
            }
            Err(e) => return Err(self.refuse_key(request, e)),
        };
        let answer = work.await?;
        claim.complete(answer.clone());
        Ok(answer.into_response())
    }

    fn refuse_key(&self, request: &CommandRequest, error: KeyError) -> ApiError {
        self.metrics
            .idempotency
            .with_label_values(&[error.label()])
            .inc();
        tracing::info!(request = %request.target, error = %error, "idempotency key refused");
        error.into()
    }

    /// Refuses a keyed request whose derived `id` order-view already holds with other
    /// values (`differs`): the key was used for another request, before this process's
    /// memory of it. Unknown or unreachable is no refusal: then the services' dedup on the
    /// derived `event_id` is what keeps a retry from acting twice.
    async fn check_view(
        &self,
        request: &CommandRequest,
        subject: Subject,
        id: &str,
        differs: impl Fn(&Value) -> bool,
    ) -> Result<(), ApiError> {
        if request.key.is_none() {
            return Ok(());
        }
        let path = subject.status_url(id);
        match tokio::time::timeout(VIEW_CHECK_TIMEOUT, self.order_view.get_json(&path)).await {
            Ok(Ok(Some(view))) if differs(&view) => Err(self.refuse_key(request, KeyError::Reused)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, path, "cannot compare a keyed request with order-view");
                Ok(())
            }
            Err(_) => {
                tracing::debug!(
                    path,
                    "order-view did not answer in time to compare a keyed request"
                );
                Ok(())
            }
        }
    }

    fn order_command(
        &self,
        request: &CommandRequest,
        payload: OrderCommandPayload,
    ) -> OrderCommand {
        OrderCommand {
            event_id: request.id("event_id"),
            // Commands start a flow: nothing caused them but the request.
            ..OrderCommand::new(
                &self.producer_name,
                request.correlation_id.clone(),
                None,
                payload,
            )
        }
    }

    fn customer_command(
        &self,
        request: &CommandRequest,
        payload: CustomerCommandPayload,
    ) -> CustomerCommand {
        CustomerCommand {
            event_id: request.id("event_id"),
            ..CustomerCommand::new(
                &self.producer_name,
                request.correlation_id.clone(),
                None,
                payload,
            )
        }
    }
}

fn is_final(status: Option<String>, finals: &[&str]) -> bool {
    status.is_some_and(|s| finals.contains(&s.as_str()))
}

/// `POST /orders`.
pub async fn place_order(
    State(app): State<Arc<AppState>>,
    auth: Authorized<OrdersWrite>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> Result<Response, ApiError> {
    let total_cents = body.total.cents();
    if total_cents == 0 {
        return Err(ApiError::invalid_field(
            "total",
            "total must be greater than zero",
        ));
    }
    let customer_id = body.customer_id.to_string();
    Tenancy::of(&auth.claims)?
        .check_customer(&app.order_view, &app.owners, &customer_id, "customer_id")
        .await?;
    let request = meta.request(&auth.claims.sub, json!([customer_id, total_cents]));
    let order_id = request.id("order_id");
    app.answer_once(&request, async {
        let command = app.order_command(
            &request,
            OrderCommandPayload::PlaceOrder(PlaceOrder {
                order_id: order_id.clone(),
                customer_id: customer_id.clone(),
                total_cents,
            }),
        );
        // Side by side: should order-view hold another order under this id, the command
        // just published carries that order's event_id and the orders service drops it.
        let (published, checked) = tokio::join!(
            app.publish(&app.orders, "PlaceOrder", &customer_id, &command),
            app.check_view(&request, Subject::Order, &order_id, |view| {
                orderview::field(view, "order", "customer_id").and_then(Value::as_str)
                    != Some(customer_id.as_str())
                    || orderview::field(view, "order", "total_cents").and_then(Value::as_i64)
                        != Some(total_cents)
            }),
        );
        checked?;
        published?;
        let outcome = app
            .wait_for(request.wait, Subject::Order, &order_id, |view| {
                is_final(
                    orderview::order_status(view),
                    &["APPROVED", "REJECTED", "CANCELLED"],
                )
            })
            .await;
        Ok(answer(
            Subject::Order,
            &order_id,
            &request.correlation_id,
            outcome,
        ))
    })
    .await
}

/// `POST /orders/{id}/cancel`. The key is the order's customer, which only order-view
/// knows: an order it has not seen (yet) is a 404.
pub async fn cancel_order(
    State(app): State<Arc<AppState>>,
    auth: Authorized<OrdersWrite>,
    UuidPath(ids): UuidPath,
    meta: CommandMeta,
    OptionalJson(body): OptionalJson<CancelOrderBody>,
) -> Result<Response, ApiError> {
    let order_id = path_id(&ids)?;
    let tenancy = Tenancy::of(&auth.claims)?;
    let reason = body.unwrap_or_default().reason;
    if let Some(reason) = &reason {
        check_text("reason", reason)?;
    }
    let request = meta.request(&auth.claims.sub, json!([reason]));
    app.answer_once(&request, async {
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
                ApiError::upstream_unavailable()
            })?
            .ok_or_else(|| ApiError::not_found(format!("order {order_id} not found")))?;
        if !tenancy.owns(&view, "order") {
            return Err(Tenancy::forbidden(Resource::Order, &order_id, "id"));
        }
        let customer_id = orderview::field(&view, "order", "customer_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                tracing::warn!(%order_id, "order-view's answer has no customer_id");
                ApiError::upstream_unavailable()
            })?
            .to_string();
        let command = app.order_command(
            &request,
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
            .wait_for(request.wait, Subject::Order, &order_id, |view| {
                is_final(orderview::order_status(view), &["CANCELLED", "REJECTED"])
            })
            .await;
        Ok(answer(
            Subject::Order,
            &order_id,
            &request.correlation_id,
            outcome,
        ))
    })
    .await
}

/// `POST /customers`.
pub async fn register_customer(
    State(app): State<Arc<AppState>>,
    auth: Authorized<CustomersWrite>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<RegisterCustomerBody>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "name must not be empty"));
    }
    check_text("name", name)?;
    let tenant = Tenancy::of(&auth.claims)?.new_customer(body.tenant.as_deref())?;
    let credit_limit_cents = body.credit_limit.cents();
    let request = meta.request(&auth.claims.sub, json!([name, credit_limit_cents, tenant]));
    let customer_id = request.id("customer_id");
    app.answer_once(&request, async {
        let command = app.customer_command(
            &request,
            CustomerCommandPayload::RegisterCustomer(RegisterCustomer {
                customer_id: customer_id.clone(),
                name: name.to_owned(),
                credit_limit_cents,
                tenant: tenant.clone(),
            }),
        );
        // As for orders; only the name is compared, the limit may have changed since.
        let (published, checked) = tokio::join!(
            app.publish(&app.customers, "RegisterCustomer", &customer_id, &command),
            app.check_view(&request, Subject::Customer, &customer_id, |view| {
                orderview::field(view, "customer", "name")
                    .and_then(Value::as_str)
                    .is_some_and(|known| known != name)
            }),
        );
        checked?;
        published?;
        let outcome = app
            .wait_for(request.wait, Subject::Customer, &customer_id, |_| true)
            .await;
        Ok(answer(
            Subject::Customer,
            &customer_id,
            &request.correlation_id,
            outcome,
        ))
    })
    .await
}

/// `PUT /customers/{id}/credit-limit`.
pub async fn change_credit_limit(
    State(app): State<Arc<AppState>>,
    auth: Authorized<CustomersWrite>,
    UuidPath(ids): UuidPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<CreditLimitBody>,
) -> Result<Response, ApiError> {
    let customer_id = path_id(&ids)?;
    Tenancy::of(&auth.claims)?
        .check_customer(&app.order_view, &app.owners, &customer_id, "id")
        .await?;
    let limit = body.credit_limit;
    let request = meta.request(&auth.claims.sub, json!([limit.cents()]));
    app.answer_once(&request, async {
        let command = app.customer_command(
            &request,
            CustomerCommandPayload::ChangeCreditLimit(ChangeCreditLimit {
                customer_id: customer_id.clone(),
                credit_limit_cents: limit.cents(),
            }),
        );
        app.publish(&app.customers, "ChangeCreditLimit", &customer_id, &command)
            .await?;
        let outcome = app
            .wait_for(request.wait, Subject::Customer, &customer_id, |view| {
                credit_limit_of(view) == Some(limit)
            })
            .await;
        Ok(answer(
            Subject::Customer,
            &customer_id,
            &request.correlation_id,
            outcome,
        ))
    })
    .await
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
    fn text_with_any_control_character_is_refused_naming_the_field() {
        for good in [
            "Ada Lovelace",
            "Zoë 李",
            "line\u{2028}separator",
            "emoji 🎉",
        ] {
            assert!(check_text("name", good).is_ok(), "{good:?}");
        }
        for bad in ["nul\0", "bell\u{7}", "tab\t", "del\u{7f}", "c1\u{9f}"] {
            let error = check_text("reason", bad).unwrap_err();
            assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
            assert_eq!(error.field.as_deref(), Some("reason"));
        }
        assert!(check_text("name", &"x".repeat(MAX_TEXT)).is_ok());
        assert!(check_text("name", &"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn accepted_answers_point_at_the_resource() {
        let response = answer(Subject::Order, "o1", "c1", None).into_response();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::LOCATION], "/orders/o1");
        let response = answer(
            Subject::Order,
            "o1",
            "c1",
            Some(json!({"status": "APPROVED"})),
        );
        assert_eq!(response.status, StatusCode::OK);
    }
}
