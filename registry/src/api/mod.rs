//! The Confluent-compatible REST API: routes, handlers, and extractors whose rejections come
//! out in Confluent's error format.
//!
//! Reads are answered from this instance's in-memory state (a map lookup, no parsing);
//! writes go through the writer and are answered once applied here (read your writes).

mod bodies;
mod compatibility;
mod config;
mod extract;
mod schemas;
mod subjects;

use std::sync::{Arc, RwLockReadGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State as Extract};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use feedline::Metrics;
use serde::Serialize;

pub use self::extract::{ApiJson, ApiPath, Params};
use crate::auth::{self, Authenticator};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::RegistryMetrics;
use crate::ops::Outcome;
use crate::state::State;
use crate::store::{SharedState, WriteHandle};

/// Confluent's media type, served by default.
pub const CONTENT_TYPE_V1: &str = "application/vnd.schemaregistry.v1+json";
const CONTENT_TYPE_UNVERSIONED: &str = "application/vnd.schemaregistry+json";
const CONTENT_TYPE_JSON: &str = "application/json";

/// Request bodies up to this size; large Avro schemas run to hundreds of kilobytes.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    pub state: SharedState,
    pub writer: WriteHandle,
    pub metrics: Arc<RegistryMetrics>,
}

type AppState = Extract<Arc<App>>;

impl App {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().expect("state poisoned")
    }

    fn lookup(&self, endpoint: &str) {
        self.metrics.lookups.with_label_values(&[endpoint]).inc();
    }
}

/// The whole API; with an `auth`enticator every route but the probes and metrics needs
/// credentials (without one, in dev mode, the registry is open).
pub fn router(
    app: Arc<App>,
    platform_metrics: Arc<Metrics>,
    health: feedline::Health,
    auth: Option<Arc<Authenticator>>,
) -> Router {
    let api = Router::new()
        .route("/", get(subjects::root))
        .route("/subjects", get(subjects::list_subjects))
        .route(
            "/subjects/{subject}",
            post(subjects::lookup).delete(subjects::delete_subject),
        )
        .route(
            "/subjects/{subject}/versions",
            get(subjects::list_versions).post(subjects::register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(subjects::get_version).delete(subjects::delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(subjects::get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(subjects::referenced_by),
        )
        .route("/schemas", get(schemas::list_schemas))
        .route("/schemas/types", get(schemas::schema_types))
        .route("/schemas/ids/{id}", get(schemas::schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schemas::raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(schemas::subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(schemas::versions_by_id))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility::check_against_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility::check_against_version),
        )
        .route(
            "/config",
            get(config::global_config)
                .put(config::set_global_config)
                .delete(config::delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(config::subject_config)
                .put(config::set_subject_config)
                .delete(config::delete_subject_config),
        )
        .route("/mode", get(config::mode))
        .with_state(Arc::clone(&app));
    let mut router = api
        .merge(feedline::http::ops_router(platform_metrics, health))
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT));
    // Inside the negotiation layer, so 401 and 403 are counted like any other error.
    if let Some(auth) = auth {
        router = router.layer(middleware::from_fn_with_state(auth, auth::authenticate));
    }
    router.layer(middleware::from_fn_with_state(app, negotiate_and_count))
}

// ---- responses ----

/// A JSON response in Confluent's media type (the negotiation middleware may relabel it).
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    raw_response(status, bytes.into())
}

fn raw_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_V1));
    response
}

fn ok<T: Serialize + ?Sized>(body: &T) -> Response {
    json_response(StatusCode::OK, body)
}

/// Serves the media type the client asked for (Confluent's clients send the versioned one,
/// curl users often `application/json`), and counts error responses by code.
async fn negotiate_and_count(Extract(app): AppState, request: Request, next: Next) -> Response {
    let wanted = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(media_type_for);
    let mut response = next.run(request).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        app.metrics
            .errors
            .with_label_values(&[&code.0.to_string()])
            .inc();
    }
    let ours = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct == CONTENT_TYPE_V1);
    if let (true, Some(wanted)) = (ours, wanted) {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(wanted));
    }
    response
}

/// The media type to answer with for an `Accept` header; `None` keeps the default.
fn media_type_for(accept: &str) -> Option<&'static str> {
    let accept = accept.to_ascii_lowercase();
    if accept.contains(CONTENT_TYPE_V1) || accept.contains("*/*") {
        None
    } else if accept.contains(CONTENT_TYPE_UNVERSIONED) {
        Some(CONTENT_TYPE_UNVERSIONED)
    } else if accept.contains(CONTENT_TYPE_JSON) {
        Some(CONTENT_TYPE_JSON)
    } else {
        None
    }
}

fn unexpected(outcome: Outcome) -> ApiError {
    ApiError::store(format!("unexpected write outcome {outcome:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_media_type() {
        assert_eq!(media_type_for("application/json"), Some(CONTENT_TYPE_JSON));
        assert_eq!(
            media_type_for("application/vnd.schemaregistry.v1+json, application/json"),
            None
        );
        assert_eq!(
            media_type_for("application/vnd.schemaregistry+json"),
            Some(CONTENT_TYPE_UNVERSIONED)
        );
        assert_eq!(media_type_for("*/*"), None);
        assert_eq!(media_type_for("text/html"), None);
    }
}
