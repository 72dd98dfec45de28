//! Handlers for compatibility configuration, global and per subject, and the mode.

use axum::extract::State as Extract;
use axum::response::Response;
use serde_json::{Value, json};

use super::bodies::ConfigRequest;
use super::extract::{ApiJson, ApiPath, Params};
use super::{App, AppState, ok, unexpected};
use crate::compat::{DEFAULT_LEVEL, Level};
use crate::error::ApiError;
use crate::ops::{Command, Outcome};

fn level_body(level: Level) -> Value {
    json!({ "compatibilityLevel": level })
}

pub(super) async fn global_config(Extract(app): AppState) -> Response {
    app.lookup("config");
    let level = app.read().global_level().unwrap_or(DEFAULT_LEVEL);
    ok(&level_body(level))
}

pub(super) async fn subject_config(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("config");
    let state = app.read();
    let level = match state.subject_level(&subject) {
        Some(level) => level,
        None if params.flag("defaultToGlobal") => state.global_level().unwrap_or(DEFAULT_LEVEL),
        None => return Err(ApiError::subject_compatibility_not_configured(&subject)),
    };
    Ok(ok(&level_body(level)))
}

async fn set_config(
    app: &App,
    subject: Option<String>,
    request: ConfigRequest,
) -> Result<Response, ApiError> {
    let level = request.level()?;
    match app
        .writer
        .submit(Command::SetConfig { subject, level })
        .await?
    {
        Outcome::Config(level) => Ok(ok(&json!({ "compatibility": level }))),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn set_global_config(
    Extract(app): AppState,
    ApiJson(request): ApiJson<ConfigRequest>,
) -> Result<Response, ApiError> {
    set_config(&app, None, request).await
}

pub(super) async fn set_subject_config(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    ApiJson(request): ApiJson<ConfigRequest>,
) -> Result<Response, ApiError> {
    set_config(&app, Some(subject), request).await
}

async fn delete_config(app: &App, subject: Option<String>) -> Result<Response, ApiError> {
    match app.writer.submit(Command::DeleteConfig { subject }).await? {
        Outcome::Config(previous) => Ok(ok(&level_body(previous))),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn delete_global_config(Extract(app): AppState) -> Result<Response, ApiError> {
    delete_config(&app, None).await
}

pub(super) async fn delete_subject_config(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
) -> Result<Response, ApiError> {
    delete_config(&app, Some(subject)).await
}

/// Only READWRITE exists here (no IMPORT/READONLY modes); answered for clients that ask.
pub(super) async fn mode() -> Response {
    ok(&json!({ "mode": "READWRITE" }))
}
