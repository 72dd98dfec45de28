//! Errors in the shape Confluent's clients parse: an HTTP status plus
//! `{"error_code": ..., "message": ...}`. Codes and message texts follow Confluent's
//! `Errors.java`, so client code that matches on them keeps working.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::json_response;

/// A request that could not be served, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

/// The error codes, named as in Confluent's `Errors.java`.
pub mod code {
    pub const BAD_REQUEST: u32 = 400;
    pub const NOT_FOUND: u32 = 404;
    pub const METHOD_NOT_ALLOWED: u32 = 405;
    pub const UNAUTHORIZED: u32 = 40101;
    pub const FORBIDDEN: u32 = 40301;
    pub const INCOMPATIBLE_SCHEMA: u32 = 409;
    pub const SUBJECT_NOT_FOUND: u32 = 40401;
    pub const VERSION_NOT_FOUND: u32 = 40402;
    pub const SCHEMA_NOT_FOUND: u32 = 40403;
    pub const SUBJECT_SOFT_DELETED: u32 = 40404;
    pub const SUBJECT_NOT_SOFT_DELETED: u32 = 40405;
    pub const VERSION_SOFT_DELETED: u32 = 40406;
    pub const VERSION_NOT_SOFT_DELETED: u32 = 40407;
    pub const SUBJECT_COMPATIBILITY_NOT_CONFIGURED: u32 = 40408;
    pub const INVALID_SCHEMA: u32 = 42201;
    pub const INVALID_VERSION: u32 = 42202;
    pub const INVALID_COMPATIBILITY_LEVEL: u32 = 42203;
    pub const REFERENCE_EXISTS: u32 = 42206;
    pub const STORE_ERROR: u32 = 50001;
    pub const OPERATION_TIMEOUT: u32 = 50002;
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SUBJECT_NOT_FOUND,
            format!("Subject '{subject}' not found."),
        )
    }

    pub fn version_not_found(version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::VERSION_NOT_FOUND,
            format!("Version {version} not found."),
        )
    }

    pub fn schema_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SCHEMA_NOT_FOUND,
            "Schema not found",
        )
    }

    pub fn id_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SCHEMA_NOT_FOUND,
            format!("Schema {id} not found"),
        )
    }

    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SUBJECT_SOFT_DELETED,
            format!(
                "Subject '{subject}' was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SUBJECT_NOT_SOFT_DELETED,
            format!("Subject '{subject}' was not deleted first before being permanently deleted"),
        )
    }

    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::VERSION_SOFT_DELETED,
            format!(
                "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
            ),
        )
    }

    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::VERSION_NOT_SOFT_DELETED,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
            ),
        )
    }

    pub fn subject_compatibility_not_configured(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            code::SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }

    pub fn incompatible(subject: &str, details: &[String]) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            code::INCOMPATIBLE_SCHEMA,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
                details.join(", ")
            ),
        )
    }

    pub fn invalid_schema(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::INVALID_SCHEMA,
            format!("Invalid schema: {message}"),
        )
    }

    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::INVALID_VERSION,
            format!(
                "The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
            ),
        )
    }

    pub fn invalid_compatibility_level() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::INVALID_COMPATIBILITY_LEVEL,
            "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive",
        )
    }

    pub fn reference_exists(subject: &str, version: u32, by: &[u32]) -> Self {
        let ids: Vec<String> = by.iter().map(u32::to_string).collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code::REFERENCE_EXISTS,
            format!(
                "One or more references exist to the schema {{subject={subject}, version={version}}}: referenced by schema ids [{}]",
                ids.join(", ")
            ),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }

    /// The store could not take or confirm the write: Confluent's code, with a 503 (and
    /// `Retry-After`) rather than its 500, since waiting and retrying is what helps.
    pub fn store(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::STORE_ERROR,
            format!("Error in the backend data store: {message}"),
        )
    }

    pub fn timeout(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::OPERATION_TIMEOUT,
            format!("Operation timed out: {message}"),
        )
    }

    /// No credentials, or wrong ones; the caller adds the `WWW-Authenticate` challenge.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHORIZED,
            "Unauthorized: send HTTP basic credentials of a registry user",
        )
    }

    pub fn forbidden(user: &str, needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            code::FORBIDDEN,
            format!("User '{user}' is denied this operation: it needs the {needed} role"),
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, code::NOT_FOUND, "HTTP 404 Not Found")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            code::METHOD_NOT_ALLOWED,
            "HTTP 405 Method Not Allowed",
        )
    }

    /// One of axum's own rejections (path, query, body), re-dressed in Confluent's shape.
    pub fn from_rejection(status: StatusCode, text: String) -> Self {
        Self::new(status, u32::from(status.as_u16()), text)
    }
}

/// The error code of an error response, left in the response's extensions for the metrics
/// middleware (which cannot see the body).
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub u32);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error_code": self.code, "message": self.message });
        let mut response = json_response(self.status, &body);
        response.extensions_mut().insert(ErrorCode(self.code));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("2"),
            );
        }
        response
    }
}
