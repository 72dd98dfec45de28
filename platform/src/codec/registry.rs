//! Schema look-ups: the [`SchemaResolver`] trait, the registry's REST client, and a fixed
//! in-memory resolver for tests and benchmarks.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::CodecError;
use crate::config::RegistrySettings;

/// Where schemas come from. Called on cache misses only, never per message.
pub trait SchemaResolver: Send + Sync + 'static {
    /// The schema text registered under `id`.
    fn schema(&self, id: u32) -> impl Future<Output = Result<String, CodecError>> + Send;
    /// Registers `schema` under `subject` (or finds it there) and returns its id.
    fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> impl Future<Output = Result<u32, CodecError>> + Send;
}

/// A client of any Confluent-compatible registry (feedline's own, Confluent's, Karapace,
/// Redpanda's). Transient failures are retried with backoff before they surface.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    url: String,
    /// Credentials and CA; the password stays a `SecretString`.
    settings: RegistrySettings,
    attempts: u32,
}

// By hand: only the URL and the user, never the password.
impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .field("username", &self.settings.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl RegistryClient {
    pub fn new(settings: &RegistrySettings) -> Self {
        RegistryClient {
            http: settings.http_client(Duration::from_secs(10)),
            url: settings.url.trim_end_matches('/').to_owned(),
            settings: settings.clone(),
            attempts: 5,
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        not_found: impl Fn(Option<i64>) -> Option<CodecError>,
    ) -> Result<T, CodecError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let builder = self
                .settings
                .authorize(request().header(reqwest::header::ACCEPT, CONTENT_TYPE));
            let failure = match builder.send().await {
                Ok(response) if response.status().is_success() => {
                    return response
                        .json::<T>()
                        .await
                        .map_err(|e| CodecError::Registry {
                            status: 200,
                            message: format!("unexpected response body: {e}"),
                        });
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Option<ErrorBody> = response.json().await.ok();
                    let code = body.as_ref().and_then(|b| b.error_code);
                    if status == 404
                        && let Some(e) = not_found(code)
                    {
                        return Err(e);
                    }
                    let message = body
                        .and_then(|b| b.message)
                        .unwrap_or_else(|| "no message".to_owned());
                    if status < 500 {
                        return Err(CodecError::Registry { status, message });
                    }
                    format!("HTTP {status}: {message}")
                }
                Err(e) => format!("{e}"),
            };
            if attempt >= self.attempts {
                return Err(CodecError::RegistryUnavailable {
                    url: self.url.clone(),
                    reason: failure,
                });
            }
            tracing::warn!(url = %self.url, attempt, reason = %failure, "schema registry call failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

impl SchemaResolver for RegistryClient {
    async fn schema(&self, id: u32) -> Result<String, CodecError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        let body: SchemaBody = self
            .call(
                || self.http.get(&url),
                // Only the registry's own "schema not found" condemns the message: a 404
                // from a proxy or a wrong path is the registry being unreachable.
                |code| (code == Some(40403)).then_some(CodecError::UnknownSchemaId(id)),
            )
            .await?;
        Ok(body.schema)
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32, CodecError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let payload = serde_json::json!({ "schema": schema });
        let body: IdBody = self
            .call(
                || {
                    self.http
                        .post(&url)
                        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                        .json(&payload)
                },
                |_| None,
            )
            .await?;
        Ok(body.id)
    }
}

/// One version of a subject, as the registry returns it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i64,
    pub id: u32,
    pub schema: String,
}

/// The registry's verdict on a candidate schema.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Compatibility {
    pub is_compatible: bool,
    #[serde(default)]
    pub messages: Vec<String>,
}

/// Registry operations beyond the codec's needs: what the CLI and the gate use.
impl RegistryClient {
    pub async fn subjects(&self) -> Result<Vec<String>, CodecError> {
        let url = format!("{}/subjects", self.url);
        self.call(|| self.http.get(&url), |_| None).await
    }

    /// `version` is a number or `latest`; `None` when the subject or version does not exist.
    pub async fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<Option<SubjectVersion>, CodecError> {
        let url = format!("{}/subjects/{subject}/versions/{version}", self.url);
        match self.call(|| self.http.get(&url), |_| Some(NOT_FOUND)).await {
            Ok(v) => Ok(Some(v)),
            Err(CodecError::Registry { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks `schema` against the subject's latest version under the subject's
    /// compatibility level; `None` when the subject does not exist yet (nothing to break).
    pub async fn check(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<Compatibility>, CodecError> {
        let url = format!(
            "{}/compatibility/subjects/{subject}/versions/latest?verbose=true",
            self.url
        );
        let payload = serde_json::json!({ "schema": schema });
        let request = || {
            self.http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                .json(&payload)
        };
        match self.call(request, |_| Some(NOT_FOUND)).await {
            Ok(v) => Ok(Some(v)),
            Err(CodecError::Registry { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

const NOT_FOUND: CodecError = CodecError::Registry {
    status: 404,
    message: String::new(),
};

/// Schemas held in memory, ids handed out in registration order: for tests and benchmarks
/// that must not depend on a registry.
#[derive(Debug, Default)]
pub struct FixedResolver {
    schemas: Mutex<Vec<String>>,
}

impl FixedResolver {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SchemaResolver for FixedResolver {
    async fn schema(&self, id: u32) -> Result<String, CodecError> {
        let schemas = self.schemas.lock().expect("resolver poisoned");
        id.checked_sub(1)
            .and_then(|i| schemas.get(i as usize))
            .cloned()
            .ok_or(CodecError::UnknownSchemaId(id))
    }

    async fn register(&self, _subject: &str, schema: &str) -> Result<u32, CodecError> {
        let mut schemas = self.schemas.lock().expect("resolver poisoned");
        let index = match schemas.iter().position(|s| s == schema) {
            Some(i) => i,
            None => {
                schemas.push(schema.to_owned());
                schemas.len() - 1
            }
        };
        Ok(index as u32 + 1)
    }
}
