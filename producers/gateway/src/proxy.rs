//! Queries and the live feed belong to order-view; the gateway checks the token and passes
//! the request through: status, headers and body unchanged, the body streamed (never
//! buffered), so the SSE feed flows event by event.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use futures::StreamExt;

use crate::app::AppState;
use crate::auth::{Authorized, FeedRead};
use crate::error::ApiError;
use crate::orderview::UpstreamError;
use crate::streams::StreamGuard;
use crate::tenancy::{TENANT_HEADER, Tenancy};
use crate::ticket::FeedAccess;

/// Request headers worth passing on. Not `Authorization`: the token is the gateway's
/// business, and order-view sits behind it. Not [`TENANT_HEADER`] either: only the gateway
/// sets it, from the token.
const FORWARDED_REQUEST: &[&str] = &[
    "accept",
    "accept-language",
    "cache-control",
    "if-none-match",
    "if-modified-since",
    "last-event-id",
    "x-correlation-id",
    "x-request-id",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the length, which the re-streamed body
/// carries by itself.
const DROPPED_RESPONSE: &[&str] = &[
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "keep-alive",
];

/// A path whose every parameter is a UUID (`/orders/{id}`, `/customers/{id}/orders`).
/// Checked here so a malformed id is a 400 naming the parameter whether or not order-view
/// is up, instead of a round trip (or a 503).
#[derive(Debug)]
pub struct UuidPath(pub Vec<(String, uuid::Uuid)>);

impl<S: Send + Sync> FromRequestParts<S> for UuidPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        params
            .into_iter()
            .map(|(name, value)| match uuid::Uuid::parse_str(&value) {
                Ok(id) => Ok((name, id)),
                Err(_) => Err(ApiError::invalid_parameter(
                    &name,
                    format!("{name} must be a UUID, got {value:?}"),
                )),
            })
            .collect::<Result<_, _>>()
            .map(UuidPath)
    }
}

/// `GET /orders/{id}`, `/customers/{id}`, `/customers/{id}/orders`.
pub async fn item(
    State(app): State<Arc<AppState>>,
    auth: Authorized<FeedRead>,
    _ids: UuidPath,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenancy = Tenancy::of(&auth.claims)?;
    forward(&app, &tenancy, &path_and_query(&uri), &headers, None).await
}

/// `GET /orders`.
pub async fn list(
    State(app): State<Arc<AppState>>,
    auth: Authorized<FeedRead>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenancy = Tenancy::of(&auth.claims)?;
    forward(&app, &tenancy, &path_and_query(&uri), &headers, None).await
}

/// `GET /feed`: Server-Sent Events, streamed through. `Last-Event-ID` and the query string
/// go along. Each stream holds a place under the caps of [`crate::streams`] while it lives.
pub async fn feed(
    State(app): State<Arc<AppState>>,
    access: FeedAccess,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenancy = Tenancy::of(&access.claims)?;
    let guard = app.streams.open(&access.claims.sub)?;
    forward(&app, &tenancy, &path_and_query(&uri), &headers, Some(guard)).await
}

/// The path and query to ask order-view for, without `access_token` or `ticket`: they are
/// the gateway's business and must not end up in order-view's logs.
fn path_and_query(uri: &Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_owned();
    };
    // Pairs are kept as sent (no re-encoding); only the token goes.
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next();
            !pair.is_empty() && name != Some("access_token") && name != Some("ticket")
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

async fn forward(
    app: &AppState,
    tenancy: &Tenancy,
    path_and_query: &str,
    headers: &HeaderMap,
    stream: Option<StreamGuard>,
) -> Result<Response, ApiError> {
    let view = &app.order_view;
    let request = |mut request: reqwest::RequestBuilder| {
        for name in FORWARDED_REQUEST {
            for value in headers.get_all(*name) {
                request = request.header(*name, value);
            }
        }
        if let Some(tenant) = tenancy.header() {
            request = request.header(TENANT_HEADER, tenant);
        }
        if stream.is_none() {
            request = request.timeout(view.timeout());
        }
        request
    };
    // A failed attempt is retried on another replica inside; only the feed's stream, once
    // it flows, is never sent again.
    // A feed keeps to one replica (its event ids are that replica's); a query goes to any.
    let affinity = stream.as_ref().map(|_| path_and_query);
    let upstream = view
        .get(path_and_query, affinity, request)
        .await
        .map_err(|error| {
            app.metrics
                .upstream_errors
                .with_label_values(&[error.kind()])
                .inc();
            tracing::warn!(error = %error, path = path_and_query, "order-view call failed");
            // The details (which name the internal address) go to the log, not the client.
            match error {
                UpstreamError::Timeout => ApiError::upstream_timeout(),
                _ => ApiError::upstream_unavailable(),
            }
        })?;

    // Clients are promised no 5xx but a 503 with Retry-After: whatever else order-view
    // answers with (a 500, a 503 without the header) is that, its body not passed on.
    let status = upstream.status();
    if status.is_server_error()
        && !(status == StatusCode::SERVICE_UNAVAILABLE
            && upstream.headers().contains_key(header::RETRY_AFTER))
    {
        app.metrics
            .upstream_errors
            .with_label_values(&["server_error"])
            .inc();
        tracing::warn!(%status, path = path_and_query, "order-view answered with a server error");
        return Err(ApiError::upstream_unavailable());
    }

    let mut response = Response::builder().status(status);
    for (name, value) in upstream.headers() {
        if !DROPPED_RESPONSE.contains(&name.as_str()) {
            response = response.header(name, value);
        }
    }
    // The feed never ends by itself; shutdown ends it, so the graceful drain can finish.
    let shutdown = app.shutdown.clone().cancelled_owned();
    let body = match stream {
        Some(guard) => Body::from_stream(
            crate::streams::live(upstream.bytes_stream(), guard, app.keep_alive)
                .take_until(shutdown),
        ),
        None => Body::from_stream(upstream.bytes_stream().take_until(shutdown)),
    };
    response
        .body(body)
        .map_err(|e| ApiError::internal(format!("cannot build the proxied response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_is_stripped_from_the_query() {
        let uri: Uri = "/feed?order_id=a%20b&access_token=x.y.z&since=3"
            .parse()
            .unwrap();
        assert_eq!(path_and_query(&uri), "/feed?order_id=a%20b&since=3");
        let only: Uri = "/feed?access_token=x&ticket=y".parse().unwrap();
        assert_eq!(path_and_query(&only), "/feed");
        let none: Uri = "/orders".parse().unwrap();
        assert_eq!(path_and_query(&none), "/orders");
        let kept: Uri = "/orders?status=APPROVED&limit=5".parse().unwrap();
        assert_eq!(path_and_query(&kept), "/orders?status=APPROVED&limit=5");
    }
}
