//! Schema look-ups: the [`SchemaResolver`] trait, the registry's client (on
//! `schema_registry_converter`), and a fixed in-memory resolver for tests and benchmarks.

use std::error::Error;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_schema_by_id, get_schema_by_subject_and_version, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SuppliedSchema};
use secrecy::ExposeSecret;
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
/// Redpanda's), built on `schema_registry_converter`: look-ups by id and subject,
/// registration, basic auth and a private CA come from it; the framing and the bytes stay
/// feedline's ([`super::DirectCodec`]). Transient failures are retried with backoff before
/// they surface.
#[derive(Clone)]
pub struct RegistryClient {
    sr: SrSettings,
    url: String,
    /// Credentials and CA for the compatibility check, which the crate answers only with a
    /// yes or no; the password stays a `SecretString`.
    settings: RegistrySettings,
    attempts: u32,
}

// By hand: only the URL and the user, never the password (`SrSettings` would print it).
impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .field("username", &self.settings.username)
            .finish_non_exhaustive()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a failed call means for the caller.
enum Failure {
    /// The registry is away or overloaded (no answer, 5xx): worth another attempt.
    Transient(String),
    /// The registry answered no; `code` is its `error_code` (40403: no schema with that id).
    Refused {
        status: u16,
        code: Option<u32>,
        message: String,
    },
}

impl Failure {
    fn from_src(e: &SRCError) -> Failure {
        let source = e.source();
        if let Some(raw) = source.and_then(|s| s.downcast_ref::<RawError>()) {
            // Confluent's error codes start with the HTTP status (40403 is a 404); a body that
            // is not the registry's own JSON (a proxy's) leaves only the status in the text.
            let status = match raw.error_code {
                code @ 10_000..=59_999 => (code / 100) as u16,
                _ => status_in(&e.error).unwrap_or(0),
            };
            if status >= 500 {
                return Failure::Transient(format!("HTTP {status}: {}", raw.message));
            }
            return Failure::Refused {
                status,
                code: (raw.error_code != 0).then_some(raw.error_code),
                message: raw.message.clone(),
            };
        }
        if e.retriable {
            // The request was not answered: connection refused, TLS, timeout.
            let reason = source.map_or_else(|| e.error.clone(), error_chain);
            return Failure::Transient(reason);
        }
        let reason = source.map_or_else(String::new, |s| format!(": {}", error_chain(s)));
        Failure::Refused {
            status: 200,
            code: None,
            message: format!("unexpected response: {}{reason}", e.error),
        }
    }
}

/// "... failed with status 404 Not Found" → 404.
fn status_in(text: &str) -> Option<u16> {
    let rest = &text[text.find("status ")? + "status ".len()..];
    rest.get(..3)?.parse().ok()
}

/// An error and its causes on one line (reqwest's own text omits the cause: "error sending
/// request" says nothing of a refused connection).
fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(&format!(": {cause}"));
        next = cause.source();
    }
    text
}

impl RegistryClient {
    pub fn new(settings: &RegistrySettings) -> Self {
        let url = settings.url.trim_end_matches('/').to_owned();
        let mut builder = SrSettings::new_builder(url.clone());
        builder.set_timeout(TIMEOUT);
        // An empty user name, as an unset variable in docker-compose gives, means none.
        if let Some(user) = settings.username.as_deref().filter(|u| !u.is_empty()) {
            let password = settings.password.as_ref().map_or("", |p| p.expose_secret());
            builder.set_basic_authorization(user, Some(password));
        }
        let sr = builder
            .build_with(reqwest::Client::builder().tls_certs_merge(ca_certificates(settings)))
            .expect("a reqwest client with PEM-parsed roots builds");
        RegistryClient {
            sr,
            url,
            settings: settings.clone(),
            attempts: 5,
        }
    }

    /// Runs `call` until it succeeds, is refused, or `attempts` transient failures have
    /// passed; `refused` turns the registry's "no" into the caller's error.
    async fn call<T, Fut>(
        &self,
        call: impl Fn() -> Fut,
        refused: impl Fn(u16, Option<u32>, String) -> CodecError,
    ) -> Result<T, CodecError>
    where
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let reason = match call().await {
                Ok(value) => return Ok(value),
                Err(Failure::Refused {
                    status,
                    code,
                    message,
                }) => return Err(refused(status, code, message)),
                Err(Failure::Transient(reason)) => reason,
            };
            if attempt >= self.attempts {
                return Err(CodecError::RegistryUnavailable {
                    url: self.url.clone(),
                    reason,
                });
            }
            tracing::warn!(url = %self.url, attempt, %reason, "schema registry call failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

/// The registry's "no", as it is.
fn refused(status: u16, _code: Option<u32>, message: String) -> CodecError {
    CodecError::Registry { status, message }
}

/// The certificates of `ca_location`: read and checked at load already
/// ([`RegistrySettings::load_ca`]), but kept there, and the crate wants a client builder.
fn ca_certificates(settings: &RegistrySettings) -> Vec<reqwest::Certificate> {
    let Some(path) = &settings.ca_location else {
        return Vec::new();
    };
    std::fs::read(path)
        .ok()
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).ok())
        .unwrap_or_else(|| panic!("registry.ca_location {} was read at load", path.display()))
}

impl SchemaResolver for RegistryClient {
    async fn schema(&self, id: u32) -> Result<String, CodecError> {
        self.call(
            || async {
                get_schema_by_id(id, &self.sr)
                    .await
                    .map(|s| s.schema)
                    .map_err(|e| Failure::from_src(&e))
            },
            // Only the registry's own "schema not found" condemns the message: a 404 from a
            // proxy or a wrong path is the registry being unreachable.
            |status, code, message| match (status, code) {
                (404, Some(40403)) => CodecError::UnknownSchemaId(id),
                _ => refused(status, code, message),
            },
        )
        .await
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32, CodecError> {
        self.call(
            || async {
                let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
                post_schema(&self.sr, subject.to_owned(), supplied)
                    .await
                    .map(|s| s.id)
                    .map_err(|e| Failure::from_src(&e))
            },
            refused,
        )
        .await
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

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<u32>,
    message: Option<String>,
}

/// Registry operations beyond the codec's needs: what the CLI and the gate use.
impl RegistryClient {
    pub async fn subjects(&self) -> Result<Vec<String>, CodecError> {
        self.call(
            || async {
                get_all_subjects(&self.sr)
                    .await
                    .map_err(|e| Failure::from_src(&e))
            },
            refused,
        )
        .await
    }

    /// `version` is a number or `latest`; `None` when the subject or version does not exist.
    pub async fn version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<Option<SubjectVersion>, CodecError> {
        let number = match version {
            "latest" => None,
            n => Some(n.parse::<u32>().map_err(|_| CodecError::Registry {
                status: 422,
                message: format!("version {n} is neither a number nor `latest`"),
            })?),
        };
        let found = self
            .call(
                || async {
                    get_schema_by_subject_and_version(&self.sr, subject, number)
                        .await
                        .map_err(|e| Failure::from_src(&e))
                },
                refused,
            )
            .await;
        match found {
            Ok(s) => Ok(Some(SubjectVersion {
                subject: s.subject.unwrap_or_else(|| subject.to_owned()),
                version: s.version.map_or(-1, i64::from),
                id: s.id,
                schema: s.schema,
            })),
            Err(CodecError::Registry { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checks `schema` against the subject's latest version under the subject's
    /// compatibility level; `None` when the subject does not exist yet (nothing to break).
    /// By hand: the crate's check answers only yes or no, and the gate prints the reasons.
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
        let http = self.settings.http_client(TIMEOUT);
        let found = self
            .call(
                || async {
                    let request = http
                        .post(&url)
                        .header(reqwest::header::ACCEPT, CONTENT_TYPE)
                        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                        .json(&payload);
                    let response = self
                        .settings
                        .authorize(request)
                        .send()
                        .await
                        .map_err(|e| Failure::Transient(error_chain(&e)))?;
                    let status = response.status().as_u16();
                    if response.status().is_success() {
                        return response.json::<Compatibility>().await.map_err(|e| {
                            Failure::Refused {
                                status,
                                code: None,
                                message: format!("unexpected response body: {e}"),
                            }
                        });
                    }
                    let body: Option<ErrorBody> = response.json().await.ok();
                    let (code, message) = body.map_or((None, None), |b| (b.error_code, b.message));
                    let message = message.unwrap_or_else(|| "no message".to_owned());
                    Err(if status >= 500 {
                        Failure::Transient(format!("HTTP {status}: {message}"))
                    } else {
                        Failure::Refused {
                            status,
                            code,
                            message,
                        }
                    })
                },
                refused,
            )
            .await;
        match found {
            Ok(v) => Ok(Some(v)),
            Err(CodecError::Registry { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

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
