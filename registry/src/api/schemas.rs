//! Handlers for schemas by id, and the listings of schemas and their types.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::bodies::VersionBody;
use super::extract::{ApiPath, Params};
use super::{AppState, ok, raw_response};
use crate::error::ApiError;
use crate::schema;
use crate::state::State;

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse::<u32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::id_not_found(id))
}

pub(super) async fn schema_by_id(
    Extract(app): AppState,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("schema_by_id");
    let id = parse_id(&id)?;
    let state = app.read();
    let entry = state.schema(id).ok_or_else(|| ApiError::id_not_found(id))?;
    if params.flag("fetchMaxId") {
        let mut body: Value =
            serde_json::from_slice(&entry.schema.by_id_body).expect("rendered by us");
        body["maxId"] = json!(state.max_id());
        return Ok(ok(&body));
    }
    Ok(raw_response(
        StatusCode::OK,
        entry.schema.by_id_body.clone(),
    ))
}

pub(super) async fn raw_schema_by_id(
    Extract(app): AppState,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.lookup("raw_schema_by_id");
    let id = parse_id(&id)?;
    let state = app.read();
    let entry = state.schema(id).ok_or_else(|| ApiError::id_not_found(id))?;
    Ok(raw_response(
        StatusCode::OK,
        Bytes::from(entry.schema.schema.clone()),
    ))
}

/// The subject versions using `id`: live ones, or all with `deleted=true`.
fn usages(state: &State, id: u32, deleted: bool) -> Result<Vec<(String, u32)>, ApiError> {
    let entry = state.schema(id).ok_or_else(|| ApiError::id_not_found(id))?;
    Ok(entry
        .usages
        .iter()
        .filter(|(s, n)| {
            deleted
                || state
                    .subject(s)
                    .and_then(|s| s.versions.get(n))
                    .is_some_and(|v| !v.deleted)
        })
        .cloned()
        .collect())
}

pub(super) async fn subjects_by_id(
    Extract(app): AppState,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("subjects_by_id");
    let id = parse_id(&id)?;
    let state = app.read();
    let subjects: BTreeSet<String> = usages(&state, id, params.flag("deleted"))?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    Ok(ok(&subjects))
}

pub(super) async fn versions_by_id(
    Extract(app): AppState,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("versions_by_id");
    let id = parse_id(&id)?;
    let state = app.read();
    let versions: Vec<Value> = usages(&state, id, params.flag("deleted"))?
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    Ok(ok(&versions))
}

pub(super) async fn schema_types() -> Response {
    ok(schema::SUPPORTED_TYPES)
}

/// `GET /schemas`: every subject version with its schema, filtered like Confluent's.
pub(super) async fn list_schemas(Extract(app): AppState, params: Params) -> Response {
    app.lookup("schemas");
    let deleted = params.flag("deleted");
    let latest_only = params.flag("latestOnly");
    let prefix = params.get("subjectPrefix").unwrap_or("");
    let offset = params.number("offset").unwrap_or(0);
    let limit = params
        .number("limit")
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let state = app.read();
    let mut bodies = Vec::new();
    for (subject, s) in state
        .subjects()
        .filter(|(name, _)| name.starts_with(prefix))
    {
        let versions: Vec<(u32, u32)> = s
            .versions
            .iter()
            .filter(|(_, v)| deleted || !v.deleted)
            .map(|(n, v)| (*n, v.id))
            .collect();
        let chosen = if latest_only {
            versions.last().copied().into_iter().collect()
        } else {
            versions
        };
        for (n, id) in chosen {
            if let Some(entry) = state.schema(id) {
                bodies.push(VersionBody::new(subject, n, &entry.schema));
            }
        }
    }
    let page: Vec<_> = bodies.into_iter().skip(offset).take(limit).collect();
    ok(&page)
}
