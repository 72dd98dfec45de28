//! Handlers for subjects and their versions: listing, reading, registering, looking up,
//! deleting.

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::bodies::{SchemaRequest, VersionBody};
use super::extract::{ApiJson, ApiPath, Params};
use super::{AppState, ok, raw_response, unexpected};
use crate::error::ApiError;
use crate::ops::{self, Command, Outcome, RefRequest, VersionSpec};
use crate::record::Reference;
use crate::schema;
use crate::state::{Content, State, StoredSchema};

pub(super) async fn root() -> Response {
    ok(&json!({}))
}

pub(super) async fn list_subjects(Extract(app): AppState, params: Params) -> Response {
    app.lookup("subjects");
    let deleted = params.flag("deleted");
    let deleted_only = params.flag("deletedOnly");
    // Confluent's default prefix ":*:" means every subject of the default context.
    let prefix = params
        .get("subjectPrefix")
        .filter(|p| *p != ":*:")
        .unwrap_or("");
    let state = app.read();
    let subjects: Vec<&String> = state
        .subjects()
        .filter(|(name, _)| name.starts_with(prefix))
        .filter(|(_, s)| match (deleted_only, deleted) {
            (true, _) => !s.is_live(),
            (false, true) => true,
            (false, false) => s.is_live(),
        })
        .map(|(name, _)| name)
        .collect();
    ok(&subjects)
}

pub(super) async fn list_versions(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("versions");
    let deleted_only = params.flag("deletedOnly");
    let deleted = params.flag("deleted") || deleted_only;
    let state = app.read();
    let s = state
        .visible_subject(&subject, deleted)
        .ok_or_else(|| ApiError::subject_not_found(&subject))?;
    let versions: Vec<u32> = s
        .versions
        .iter()
        .filter(|(_, v)| {
            if deleted_only {
                v.deleted
            } else {
                deleted || !v.deleted
            }
        })
        .map(|(n, _)| *n)
        .collect();
    Ok(ok(&versions))
}

/// Finds `subject`/`version` for a read: 42202, 40401 and 40402 as Confluent orders them.
fn find_version<'s>(
    state: &'s State,
    subject: &str,
    version: &str,
    deleted: bool,
) -> Result<(u32, &'s StoredSchema), ApiError> {
    let spec = VersionSpec::parse(version)?;
    let s = state
        .visible_subject(subject, deleted)
        .ok_or_else(|| ApiError::subject_not_found(subject))?;
    let n = spec.resolve(s, deleted)?;
    let stored = state
        .schema(s.versions[&n].id)
        .ok_or_else(|| ApiError::version_not_found(n))?;
    Ok((n, &stored.schema))
}

pub(super) async fn get_version(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("version");
    let state = app.read();
    let (n, stored) = find_version(&state, &subject, &version, params.flag("deleted"))?;
    Ok(ok(&VersionBody::new(&subject, n, stored)))
}

pub(super) async fn get_version_schema(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("version_schema");
    let state = app.read();
    let (_, stored) = find_version(&state, &subject, &version, params.flag("deleted"))?;
    Ok(raw_response(
        StatusCode::OK,
        Bytes::from(stored.schema.clone()),
    ))
}

pub(super) async fn referenced_by(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("referenced_by");
    let state = app.read();
    let (n, _) = find_version(&state, &subject, &version, params.flag("deleted"))?;
    Ok(ok(&state.referenced_by(&subject, n)))
}

pub(super) async fn register(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    ApiJson(request): ApiJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let new = request.validate()?;
    // The common case, every producer at start-up: the schema is already this subject's.
    // Answered here without the writer; references with `-1` go the long way.
    if let Some(references) = concrete_references(&new.references) {
        let content = Content::new(schema::AVRO, &new.schema, &references);
        if let Some((_, v)) = app.read().find_in_subject(&subject, &content, false) {
            app.metrics
                .registrations
                .with_label_values(&["existing"])
                .inc();
            return Ok(ok(&json!({ "id": v.id })));
        }
    }
    let command = Command::Register {
        subject,
        schema: new,
    };
    match app.writer.submit(command).await? {
        Outcome::Registered { id, new, .. } => {
            let outcome = if new { "new_version" } else { "existing" };
            app.metrics
                .registrations
                .with_label_values(&[outcome])
                .inc();
            Ok(ok(&json!({ "id": id })))
        }
        other => Err(unexpected(other)),
    }
}

/// References as stored, when none needs resolving (`version` -1).
fn concrete_references(references: &[RefRequest]) -> Option<Vec<Reference>> {
    references
        .iter()
        .map(|r| {
            u32::try_from(r.version)
                .ok()
                .filter(|v| *v > 0)
                .map(|version| Reference {
                    name: r.name.clone(),
                    subject: r.subject.clone(),
                    version,
                })
        })
        .collect()
}

pub(super) async fn lookup(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    params: Params,
    ApiJson(request): ApiJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    app.lookup("lookup");
    let new = request.validate()?;
    let deleted = params.flag("deleted");
    let state = app.read();
    if state.visible_subject(&subject, deleted).is_none() {
        return Err(ApiError::subject_not_found(&subject));
    }
    let references = ops::resolve_references(&state, &new.references)?;
    let content = Content::new(schema::AVRO, &new.schema, &references);
    match state.find_in_subject(&subject, &content, deleted) {
        Some((version, v)) => {
            let stored = &state
                .schema(v.id)
                .ok_or_else(ApiError::schema_not_found)?
                .schema;
            Ok(ok(&VersionBody::new(&subject, version, stored)))
        }
        None => {
            // Not found; an invalid schema deserves to hear why instead.
            ops::parse_new(&state, &new.schema, &references)?;
            Err(ApiError::schema_not_found())
        }
    }
}

pub(super) async fn delete_subject(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let command = Command::DeleteSubject {
        subject,
        permanent: params.flag("permanent"),
    };
    match app.writer.submit(command).await? {
        Outcome::DeletedVersions(versions) => Ok(ok(&versions)),
        other => Err(unexpected(other)),
    }
}

pub(super) async fn delete_version(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let command = Command::DeleteVersion {
        subject,
        version: VersionSpec::parse(&version)?,
        permanent: params.flag("permanent"),
    };
    match app.writer.submit(command).await? {
        Outcome::DeletedVersion(n) => Ok(ok(&n)),
        other => Err(unexpected(other)),
    }
}
