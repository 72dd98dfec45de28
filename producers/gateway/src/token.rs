//! The identity provider: `POST /auth/token`, OAuth 2.0's client credentials grant
//! (RFC 6749 §4.4). Credentials come as HTTP Basic or in the body (form or JSON).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::Scope;
use crate::error::{ApiError, is_json, parse_json, unsupported_media_type};
use crate::jwt;

const FORM: &str = "application/x-www-form-urlencoded";

#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

/// RFC 6749 §5.1's successful response.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
}

/// `POST /auth/token`.
pub async fn issue(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut response = match grant(&app, &headers, body) {
        Ok(token) => axum::Json(token).into_response(),
        Err(error) => {
            if error.status == StatusCode::UNAUTHORIZED || error.code == "invalid_scope" {
                app.metrics
                    .auth_failures
                    .with_label_values(&[error.code])
                    .inc();
            }
            error.into_response()
        }
    };
    // RFC 6749 §5.1: token responses must not be cached.
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn grant(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, ApiError> {
    let request = parse_body(headers, &body?)?;
    let basic = basic_credentials(headers)?;
    let used_basic = basic.is_some();

    match request.grant_type.as_deref() {
        None | Some("") => {
            return Err(invalid_request("grant_type is required").field("grant_type"));
        }
        Some("client_credentials") => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported; use client_credentials"),
            )
            .field("grant_type"));
        }
    }

    // RFC 6749 §2.3: one authentication method per request.
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if request.client_secret.is_some() {
                return Err(invalid_request(
                    "send the client secret either with HTTP Basic or in the body, not both",
                )
                .field("client_secret"));
            }
            if request
                .client_id
                .as_ref()
                .is_some_and(|body_id| *body_id != id)
            {
                return Err(invalid_request(
                    "client_id in the body differs from the HTTP Basic user",
                )
                .field("client_id"));
            }
            (id, secret)
        }
        None => match (request.client_id, request.client_secret) {
            (Some(id), Some(secret)) => (id, secret),
            (None, _) => return Err(invalid_client("client_id is required", false)),
            (Some(_), None) => return Err(invalid_client("client_secret is required", false)),
        },
    };

    crate::limits::admit_token_client(app, &client_id)?;
    let Some(client) = app.auth.clients.authenticate(&client_id, &secret) else {
        tracing::info!(client_id, "token refused: unknown client or wrong secret");
        return Err(invalid_client("unknown client or wrong secret", used_basic));
    };

    // No scope asked: everything the client may have (RFC 6749 §3.3 lets the server choose).
    let requested: Vec<&str> = request
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    let mut granted = Vec::new();
    for name in &requested {
        match Scope::parse(name) {
            Some(scope) if client.scopes.contains(&scope) => granted.push(scope),
            Some(_) => {
                return Err(invalid_scope(format!(
                    "client {} may not have scope {name}",
                    client.id
                )));
            }
            None => return Err(invalid_scope(format!("unknown scope {name:?}"))),
        }
    }
    if requested.is_empty() {
        granted = client.scopes.clone();
    }
    // Whom a token sees is the client's binding, not a choice per token: a client without
    // a tenant is an admin (the config allows no other), and a token of it without the
    // admin scope could see nothing at all. So its tokens always carry it, and the answer's
    // `scope` says so (RFC 6749 §3.3 lets the server grant other than asked).
    if client.tenant.is_none() {
        granted.push(Scope::Admin);
    }
    granted.sort();
    granted.dedup();
    let scope = granted
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");

    let ttl = app.auth.token_ttl_secs;
    let mut claims = app
        .auth
        .keys
        .claims_for(&client.id, scope.clone(), jwt::now(), ttl);
    claims.tenant = client.tenant.clone();
    app.metrics
        .tokens_issued
        .with_label_values(&[&client.id])
        .inc();
    tracing::info!(client_id = %client.id, %scope, tenant = ?client.tenant, "token issued");
    Ok(TokenResponse {
        access_token: app.auth.keys.sign(&claims),
        token_type: "Bearer".to_owned(),
        expires_in: ttl,
        scope,
    })
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(FORM) {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| invalid_request(format!("malformed form body: {e}")))
    } else if is_json(headers) {
        // A wrong type is a malformed token request (400) in OAuth's terms, not a 422.
        parse_json(body).map_err(|mut e| {
            if e.status == StatusCode::UNPROCESSABLE_ENTITY {
                e.status = StatusCode::BAD_REQUEST;
                e.code = "invalid_request";
            }
            e
        })
    } else if body.is_empty() {
        Ok(TokenRequest::default())
    } else {
        Err(unsupported_media_type(FORM))
    }
}

/// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || invalid_client("malformed HTTP Basic credentials", true);
    let value = value.to_str().map_err(|_| bad())?.trim();
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid_client(
            "the token endpoint takes HTTP Basic client credentials",
            true,
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let id = form_decode(id).ok_or_else(bad)?;
    let secret = form_decode(secret).ok_or_else(bad)?;
    Ok(Some((id, secret)))
}

/// application/x-www-form-urlencoded decoding of one value.
fn form_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn invalid_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn invalid_scope(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_scope", message).field("scope")
}

/// RFC 6749 §5.2: 401, with a `WWW-Authenticate` matching the scheme the client used.
fn invalid_client(message: &str, basic: bool) -> ApiError {
    let error = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_client", message);
    if basic {
        error.header(header::WWW_AUTHENTICATE, r#"Basic realm="feedline""#)
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("my%20client:s%3Acret+x");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        let (id, secret) = basic_credentials(&headers).unwrap().unwrap();
        assert_eq!(id, "my client");
        assert_eq!(secret, "s:cret x");

        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(
            basic_credentials(&headers).unwrap_err().code,
            "invalid_client"
        );
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(
            basic_credentials(&headers).unwrap_err().code,
            "invalid_client"
        );
    }

    #[test]
    fn bodies_as_form_or_json() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FORM));
        let form = parse_body(&headers, b"grant_type=client_credentials&scope=a+b").unwrap();
        assert_eq!(form.scope.as_deref(), Some("a b"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let json = parse_body(&headers, br#"{"client_id": "demo"}"#).unwrap();
        assert_eq!(json.client_id.as_deref(), Some("demo"));
        let wrong = parse_body(&headers, br#"{"client_id": 5}"#).unwrap_err();
        assert_eq!(
            (wrong.status, wrong.code, wrong.field.as_deref()),
            (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("client_id")
            )
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let media = parse_body(&headers, b"x").unwrap_err();
        assert_eq!(media.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
