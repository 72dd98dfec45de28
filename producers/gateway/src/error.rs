//! The one error shape every route answers with:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}` (`field` only when one
//! input is to blame: every `invalid_field` and `missing_field` names it), plus the extractors that turn axum's own rejections into it.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A request that could not be served, as the client will see it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, ...).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            headers: Vec::new(),
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Adds a header; values come from our own constants and ids, never from raw input.
    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// A JSON body field failed validation.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
    }

    /// A path segment, query parameter or header is malformed.
    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).field(field)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn kafka_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka_unavailable",
            "the command could not be stored durably and was not accepted; retry later",
        )
        .header(header::RETRY_AFTER, "5")
    }

    /// A service behind the gateway failed. The message is fixed: what went wrong names
    /// internal hosts and URLs, and belongs in the gateway's log, not in the answer.
    pub fn upstream_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "a service behind the gateway is unavailable; retry later",
        )
        .header(header::RETRY_AFTER, "5")
    }

    /// order-view did not answer in time.
    pub fn upstream_timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_timeout",
            "a service behind the gateway did not answer in time; retry later",
        )
        .header(header::RETRY_AFTER, "5")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// Unknown routes: the same error shape as everything else.
pub async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        request.method(),
        request.uri().path()
    ))
}

pub async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "invalid_body"
        };
        // axum's status is always a 4xx for a body the client sent.
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        let error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            rejection.body_text(),
        );
        // The parameter to blame, where axum knows it (a segment that is not UTF-8, say).
        let key = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                _ => None,
            },
            _ => None,
        };
        match key {
            Some(key) => error.field(key),
            None => error,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            rejection.body_text(),
        )
    }
}

/// `true` for `application/json` and `application/*+json`, parameters ignored.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

/// A JSON request body whose problems come back in [`ApiError`]'s shape: wrong content type
/// 415, unparsable JSON 400, a field of the wrong type or value 422 naming the field.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(unsupported_media_type("application/json"));
        }
        let bytes = Bytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], for bodies that may be left out entirely (no body at all is `None`;
/// a body that is there must be JSON).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(unsupported_media_type("application/json"));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

pub fn unsupported_media_type(expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("expected a request body with Content-Type: {expected}"),
    )
    .header(header::ACCEPT, expected)
}

/// Deserializes `bytes`, telling syntax (400) from content (422) and naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })?;
    de.end().map_err(|e| json_error(".", e))?;
    Ok(value)
}

fn json_error(path: &str, error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the request body is not valid JSON: {error}"),
        ),
        Category::Data => {
            let message = error.to_string();
            let mut error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "");
            let field = field_name(path, &message);
            if message.starts_with("missing field") {
                error.code = "missing_field";
            }
            match &field {
                Some(field) => error.message = format!("{field}: {message}"),
                // No field to blame: the body as a whole is of the wrong shape (an array,
                // a number, ... where an object belongs).
                None => {
                    error.code = "invalid_body";
                    error.message = format!("the request body must be a JSON object: {message}");
                }
            }
            error.field = field;
            error
        }
    }
}

/// The field a data error is about: serde_path_to_error's path, completed with the name
/// from serde's "missing field `x`" (which is reported at the parent's path).
fn field_name(path: &str, message: &str) -> Option<String> {
    let parent = (path != "." && !path.is_empty()).then_some(path);
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (parent, missing) {
        (Some(parent), Some(name)) => Some(format!("{parent}.{name}")),
        (None, Some(name)) => Some(name.to_owned()),
        (Some(parent), None) => Some(parent.to_owned()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        inner: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let missing = parse_json::<Body>(br#"{"nested": null}"#).unwrap_err();
        assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(missing.code, "missing_field");
        assert_eq!(missing.field.as_deref(), Some("name"));

        let wrong = parse_json::<Body>(br#"{"name": 5}"#).unwrap_err();
        assert_eq!(wrong.code, "invalid_field");
        assert_eq!(wrong.field.as_deref(), Some("name"));

        let nested = parse_json::<Body>(br#"{"name": "x", "nested": {}}"#).unwrap_err();
        assert_eq!(nested.field.as_deref(), Some("nested.inner"));

        let syntax = parse_json::<Body>(br#"{"name": "#).unwrap_err();
        assert_eq!(syntax.status, StatusCode::BAD_REQUEST);
        assert_eq!(syntax.code, "malformed_json");

        let trailing = parse_json::<Body>(br#"{"name": "x"} {}"#).unwrap_err();
        assert_eq!(trailing.code, "malformed_json");

        let not_object = parse_json::<Body>(b"1").unwrap_err();
        assert_eq!(not_object.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(not_object.code, "invalid_body");
        assert_eq!(not_object.field, None);
    }

    #[test]
    fn json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), ok, "{value}");
        }
    }
}
