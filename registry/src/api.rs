//! The Confluent-compatible REST API: routes, handlers, and extractors whose rejections come
//! out in Confluent's error format.
//!
//! Reads are answered from this instance's in-memory state (a map lookup, no parsing);
//! writes go through the writer and are answered once applied here (read your writes).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLockReadGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State as Extract};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use feedline::Metrics;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::{self, Authenticator};
use crate::compat::{DEFAULT_LEVEL, Level};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::RegistryMetrics;
use crate::ops::{self, Command, NewSchema, Outcome, RefRequest, VersionSpec};
use crate::record::Reference;
use crate::schema;
use crate::state::{Content, State, StoredSchema};
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
        .route("/", get(root))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas", get(list_schemas))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route(
            "/config",
            get(global_config)
                .put(set_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(mode))
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

// ---- extractors ----

/// A JSON body, whatever the request's content type says (Confluent's clients send
/// `application/vnd.schemaregistry.v1+json`, curl users anything). Unparseable JSON is a
/// 400 with error_code 400, as Confluent's rest-utils answers it.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; expected a JSON object",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let e = e.into_inner();
            if !e.is_data() {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            } else if path == "." || path.is_empty() {
                ApiError::bad_request(format!("the request body must be a JSON object: {e}"))
            } else {
                // The field is named, as every client-facing validation error does.
                ApiError::bad_request(format!(
                    "unexpected JSON in the request body, field `{path}`: {e}"
                ))
            }
        })?;
        de.end().map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        Ok(ApiJson(value))
    }
}

/// Path parameters, with axum's rejection in Confluent's format.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))
    }
}

/// Query parameters. Every parameter Confluent's clients send is accepted; the ones that
/// mean nothing here (`normalize`, `format`, ...) are ignored.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::from_rejection(e.status(), e.body_text()))
    }
}

impl Params {
    /// A boolean parameter; like Jersey, anything but `true` is false.
    fn flag(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn number(&self, name: &str) -> Option<usize> {
        self.get(name).and_then(|v| v.trim().parse().ok())
    }
}

// ---- request and response bodies ----

/// The body of register, lookup and compatibility requests. Fields Confluent added later
/// (`metadata`, `ruleSet`, `id`, `version`, ...) are accepted and ignored.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<RefRequest>>,
}

impl SchemaRequest {
    /// Checks the type and that the schema text is JSON, before anything looks it up.
    fn validate(self) -> Result<NewSchema, ApiError> {
        schema::check_type(self.schema_type.as_deref()).map_err(ApiError::invalid_schema)?;
        let text = match self.schema {
            Some(Value::String(text)) => text,
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_schema(schema::SchemaError::Empty));
            }
            Some(other) => {
                return Err(ApiError::invalid_schema(format!(
                    "\"schema\" must be a string holding the schema's JSON text, not {}",
                    json_kind(&other)
                )));
            }
        };
        schema::parse_json(&text).map_err(ApiError::invalid_schema)?;
        Ok(NewSchema {
            schema: text,
            references: self.references.unwrap_or_default(),
        })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `{"compatibility": "BACKWARD"}`; `compatibilityLevel` (the GET shape) is accepted too.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRequest {
    #[serde(default)]
    compatibility: Option<String>,
    #[serde(default)]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(&self) -> Result<Level, ApiError> {
        self.compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .and_then(|l| l.parse().ok())
            .ok_or_else(ApiError::invalid_compatibility_level)
    }
}

/// A subject version with its schema, as `GET /subjects/{s}/versions/{v}` and the lookup
/// answer it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionBody<'a> {
    subject: &'a str,
    version: u32,
    id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Reference]>::is_empty")]
    references: &'a [Reference],
    schema: &'a str,
}

impl<'a> VersionBody<'a> {
    fn new(subject: &'a str, version: u32, stored: &'a StoredSchema) -> Self {
        VersionBody {
            subject,
            version,
            id: stored.id,
            schema_type: stored.served_type(),
            references: &stored.references,
            schema: &stored.schema,
        }
    }
}

// ---- handlers: subjects and versions ----

async fn root() -> Response {
    ok(&json!({}))
}

async fn list_subjects(Extract(app): AppState, params: Params) -> Response {
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

async fn list_versions(
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

async fn get_version(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("version");
    let state = app.read();
    let (n, stored) = find_version(&state, &subject, &version, params.flag("deleted"))?;
    Ok(ok(&VersionBody::new(&subject, n, stored)))
}

async fn get_version_schema(
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

async fn referenced_by(
    Extract(app): AppState,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    app.lookup("referenced_by");
    let state = app.read();
    let (n, _) = find_version(&state, &subject, &version, params.flag("deleted"))?;
    Ok(ok(&state.referenced_by(&subject, n)))
}

async fn register(
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

async fn lookup(
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

async fn delete_subject(
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

async fn delete_version(
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

// ---- handlers: schemas by id ----

fn parse_id(id: &str) -> Result<u32, ApiError> {
    id.parse::<u32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::id_not_found(id))
}

async fn schema_by_id(
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

async fn raw_schema_by_id(
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

async fn subjects_by_id(
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

async fn versions_by_id(
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

async fn schema_types() -> Response {
    ok(schema::SUPPORTED_TYPES)
}

/// `GET /schemas`: every subject version with its schema, filtered like Confluent's.
async fn list_schemas(Extract(app): AppState, params: Params) -> Response {
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

// ---- handlers: compatibility ----

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

async fn check_against_version(
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

async fn check_against_all(
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

// ---- handlers: config ----

fn level_body(level: Level) -> Value {
    json!({ "compatibilityLevel": level })
}

async fn global_config(Extract(app): AppState) -> Response {
    app.lookup("config");
    let level = app.read().global_level().unwrap_or(DEFAULT_LEVEL);
    ok(&level_body(level))
}

async fn subject_config(
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

async fn set_global_config(
    Extract(app): AppState,
    ApiJson(request): ApiJson<ConfigRequest>,
) -> Result<Response, ApiError> {
    set_config(&app, None, request).await
}

async fn set_subject_config(
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

async fn delete_global_config(Extract(app): AppState) -> Result<Response, ApiError> {
    delete_config(&app, None).await
}

async fn delete_subject_config(
    Extract(app): AppState,
    ApiPath(subject): ApiPath<String>,
) -> Result<Response, ApiError> {
    delete_config(&app, Some(subject)).await
}

/// Only READWRITE exists here (no IMPORT/READONLY modes); answered for clients that ask.
async fn mode() -> Response {
    ok(&json!({ "mode": "READWRITE" }))
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
