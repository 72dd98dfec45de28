//! Handlers for compatibility checks against one version or all the level asks for.

use axum::extract::State as Extract;
use axum::response::Response;
use serde_json::json;

use super::bodies::SchemaRequest;
use super::extract::{ApiJson, ApiPath, Params};
use super::{AppState, ok};
use crate::error::ApiError;
use crate::ops::{self, NewSchema, VersionSpec};
use crate::state::State;

/// Parses a compatibility request's schema against the state (42201 when it is invalid).
fn parse_request(state: &State, new: &NewSchema) -> Result<apache_avro::Schema, ApiError> {
    let references = ops::resolve_references(state, &new.references)?;
    ops::parse_new(state, &new.schema, &references)
}

fn compatibility_answer(messages: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({ "is_compatible": messages.is_empty() });
    if verbose {
        body["messages"] = json!(messages);
    }
    ok(&body)
}

pub(super) async fn check_against_version(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
    ApiJson(request): ApiJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    app.lookup("compatibility");
    let spec = VersionSpec::parse(&version)?;
    let new = request.validate()?;
    let state = app.read();
    let parsed = parse_request(&state, &new)?;
    let s = state
        .visible_subject(&subject, false)
        .ok_or_else(|| ApiError::subject_not_found(&subject))?;
    let n = spec.resolve(s, false)?;
    let messages = ops::check_level(&state, &subject, &parsed, Some(n))?;
    Ok(compatibility_answer(messages, params.flag("verbose")))
}

pub(super) async fn check_against_all(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    params: Params,
    ApiJson(request): ApiJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    app.lookup("compatibility");
    let new = request.validate()?;
    let state = app.read();
    let parsed = parse_request(&state, &new)?;
    // Against every version the level asks for; a subject without versions accepts anything.
    let messages = ops::check_level(&state, &subject, &parsed, None)?;
    Ok(compatibility_answer(messages, params.flag("verbose")))
}
