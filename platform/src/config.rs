//! One file: the settings tree is one typed value loaded in one place; a third of it is tests.
//!
//! Typed, layered configuration: built-in defaults, then an optional TOML file, then
//! `FEEDLINE_*` environment variables. Secrets are `SecretString`s so they never reach a log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

const DEFAULTS: &str = include_str!("defaults.toml");

const TOP_LEVEL: &[&str] = &["service_name"];

/// Environment variable naming an optional config file.
pub const CONFIG_FILE_ENV: &str = "FEEDLINE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to load configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("config file {0} does not exist")]
    MissingFile(String),
}

/// The settings every service shares. A service's own settings live in a section named
/// after it (`[gateway]`, ...), read with [`Settings::section`].
#[derive(Clone, Deserialize)]
pub struct Settings {
    pub service_name: String,
    pub kafka: KafkaSettings,
    pub consumer: ConsumerSettings,
    pub registry: RegistrySettings,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub dedup: DedupSettings,
    pub discovery: crate::discovery::DiscoverySettings,
    pub telemetry: TelemetrySettings,
    /// Every layer merged, kept for the service sections.
    #[serde(skip)]
    figment: Option<Figment>,
}

// By hand: the merged layers hold every secret in clear text and must not be printed.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("service_name", &self.service_name)
            .field("kafka", &self.kafka)
            .field("consumer", &self.consumer)
            .field("registry", &self.registry)
            .field("database", &self.database)
            .field("http", &self.http)
            .field("dedup", &self.dedup)
            .field("discovery", &self.discovery)
            .field("telemetry", &self.telemetry)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How clients talk to the brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    #[serde(alias = "SSL")]
    Ssl,
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// The SASL mechanisms librdkafka implements itself (no Cyrus SASL, no Kerberos).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// librdkafka properties that have a typed key under `[kafka]`; setting them in
/// `[kafka.properties]` too would leave two places deciding one thing.
const TYPED_PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "kafka.security_protocol"),
    ("ssl.ca.location", "kafka.ssl_ca_location"),
    ("ssl.certificate.location", "kafka.ssl_certificate_location"),
    ("ssl.key.location", "kafka.ssl_key_location"),
    ("ssl.key.password", "kafka.ssl_key_password"),
    ("sasl.mechanism", "kafka.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.sasl_mechanism"),
    ("sasl.username", "kafka.sasl_username"),
    ("sasl.password", "kafka.sasl_password"),
];

/// Whether a librdkafka property holds a secret (its value is masked wherever it is shown).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret")
}

/// `properties` as they may be printed: secret values masked.
pub fn redacted_properties<K: AsRef<str>, V: AsRef<str>>(
    properties: impl IntoIterator<Item = (K, V)>,
) -> BTreeMap<String, String> {
    properties
        .into_iter()
        .map(|(key, value)| {
            let (key, value) = (key.as_ref(), value.as_ref());
            let shown = if is_secret_property(key) {
                "[REDACTED]"
            } else {
                value
            };
            (key.to_owned(), shown.to_owned())
        })
        .collect()
}

/// A client configuration as it may be printed: secret values masked. rdkafka's own
/// `Debug` of a `ClientConfig` shows every value, passwords included.
pub fn redacted_client_config(config: &ClientConfig) -> BTreeMap<String, String> {
    redacted_properties(config.config_map())
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub compression: Compression,
    pub linger_ms: u32,
    pub batch_size: u32,
    pub message_timeout_ms: u32,
    pub replication_factor: i32,
    pub default_partitions: i32,
    pub statistics_interval_ms: u32,
    /// `retention.ms` of the event topics a read model is rebuilt from (-1: forever).
    pub event_retention_ms: i64,
    /// Topic-level config by unprefixed topic name, over what feedline sets itself:
    /// `[kafka.topic_config.order-events] "retention.ms" = "2592000000"`.
    #[serde(default)]
    pub topic_config: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// `plaintext` (the default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CA(s) the brokers' certificates are checked against (with `ssl` or
    /// `sasl_ssl`); without it, the system's trust store.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM file of this client's certificate, for brokers that require client certificates.
    #[serde(default)]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM file of the private key of `ssl_certificate_location`.
    #[serde(default)]
    pub ssl_key_location: Option<PathBuf>,
    /// Password of an encrypted `ssl_key_location`.
    #[serde(default)]
    pub ssl_key_password: Option<SecretString>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with `sasl_plaintext` or `sasl_ssl`).
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<SecretString>,
}

// By hand: pass-through properties may hold secrets (`ssl.keystore.password`, ...).
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic_prefix", &self.topic_prefix)
            .field("compression", &self.compression)
            .field("linger_ms", &self.linger_ms)
            .field("batch_size", &self.batch_size)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("replication_factor", &self.replication_factor)
            .field("default_partitions", &self.default_partitions)
            .field("statistics_interval_ms", &self.statistics_interval_ms)
            .field("event_retention_ms", &self.event_retention_ms)
            .field("topic_config", &self.topic_config)
            .field("properties", &redacted_properties(&self.properties))
            .field("security_protocol", &self.security_protocol)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("ssl_key_password", &self.ssl_key_password)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSettings {
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub session_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub queued_max_kbytes: u32,
    pub fetch_queue_backoff_ms: u32,
    pub max_poll_interval_ms: u64,
    pub unknown_error_attempts: u32,
    pub stall_timeout_ms: u64,
}

/// How to reach the schema registry: its URL, the basic-auth user the registry knows this
/// service as, and for `https://` a CA to trust besides the system's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    /// A PEM file of CA certificates (a private CA's, or a self-signed registry's).
    #[serde(default)]
    pub ca_location: Option<PathBuf>,
    /// `ca_location`'s certificates, read once at load so a bad file fails at start-up.
    #[serde(skip)]
    ca: Vec<reqwest::Certificate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
}

/// How long `processed_events` remembers an event id, and how its pruning runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSettings {
    /// Ids of events processed longer ago than this are deleted: a redelivery comes from
    /// uncommitted offsets or a relay's retry, minutes after the first copy, not days.
    pub retention_hours: u64,
    /// Seconds between pruning runs.
    pub prune_interval_secs: u64,
    /// Rows deleted per statement: each chunk is its own short transaction, so pruning never
    /// holds locks for long.
    pub prune_chunk: u32,
}

impl DedupSettings {
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_hours * 3600)
    }
    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_secs)
    }
}

/// The `[telemetry]` section: where traces go, and how many.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP over HTTP (`http://jaeger:4318`); empty keeps every span in the process (trace
    /// ids still reach the logs and the messages).
    pub otlp_endpoint: String,
    /// The share of new traces recorded (0.0 to 1.0); a message or request that arrives with
    /// a trace follows its parent's decision.
    pub sampling_ratio: f64,
    /// The `service.name` of this process's spans; empty means `service_name`.
    pub service_name: String,
}

impl TelemetrySettings {
    pub fn exports(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }
}

impl Settings {
    /// The name this process's spans carry.
    pub fn trace_service_name(&self) -> &str {
        match self.telemetry.service_name.trim() {
            "" => &self.service_name,
            name => name,
        }
    }

    /// Loads defaults, then `service_defaults` (a TOML snippet of the service's own
    /// defaults), then `file` (or the file named by `FEEDLINE_CONFIG`), then the environment.
    pub fn load(service_defaults: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let env_file = std::env::var(CONFIG_FILE_ENV).ok();
        let file = file.map(Path::to_path_buf).or(env_file.map(Into::into));
        let mut figment = Figment::new()
            .merge(Toml::string(DEFAULTS))
            .merge(Toml::string(service_defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.display().to_string()));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `FEEDLINE_SECTION__KEY` variables (and the top-level keys): FEEDLINE_CACHE and
        // friends belong to the scripts.
        let env = Env::prefixed("FEEDLINE_").split("__").filter(|key| {
            let key = key.as_str();
            key.contains('.') || TOP_LEVEL.contains(&key)
        });
        figment = figment.merge(env);
        Self::from_figment(figment)
    }

    /// Defaults plus explicit overrides, ignoring the environment: what tests use.
    pub fn from_toml(overrides: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::new()
                .merge(Toml::string(DEFAULTS))
                .merge(Toml::string(overrides)),
        )
    }

    /// These settings with `overrides` (TOML) on top of every layer: how a launcher that
    /// starts several services tells each where the others listen.
    pub fn with_overrides(&self, overrides: &str) -> Result<Self, ConfigError> {
        let base = self.figment.clone().unwrap_or_default();
        Self::from_figment(base.merge(Toml::string(overrides)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        settings.registry.load_ca()?;
        settings.figment = Some(figment);
        Ok(settings)
    }

    /// A service's own section (`[gateway]`, ...), from the same layers as the rest.
    /// A missing section deserializes from nothing, so `#[serde(default)]` fields apply.
    pub fn section<X: DeserializeOwned>(&self, name: &str) -> Result<X, ConfigError> {
        match &self.figment {
            Some(figment) if figment.contains(name) => {
                figment.extract_inner(name).map_err(|e| Box::new(e).into())
            }
            _ => Figment::new().extract().map_err(|e| Box::new(e).into()),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers", "must name at least one broker");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return invalid("telemetry.sampling_ratio", "must be between 0.0 and 1.0");
        }
        if self.telemetry.exports()
            && !(self.telemetry.otlp_endpoint.starts_with("http://")
                || self.telemetry.otlp_endpoint.starts_with("https://"))
        {
            return invalid(
                "telemetry.otlp_endpoint",
                "must start with http:// or https:// (OTLP over HTTP)",
            );
        }
        if self.consumer.batch_max == 0 {
            return invalid("consumer.batch_max", "must be at least 1");
        }
        if self.consumer.drain_timeout_ms >= self.consumer.session_timeout_ms {
            return invalid(
                "consumer.drain_timeout_ms",
                "must be below consumer.session_timeout_ms, or a draining consumer is evicted from its group",
            );
        }
        if !(self.registry.url.starts_with("http://") || self.registry.url.starts_with("https://"))
        {
            return invalid("registry.url", "must start with http:// or https://");
        }
        let db = self.database.url.expose_secret();
        if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|scheme| db.starts_with(scheme))
        {
            return invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            );
        }
        self.kafka.validate_security()?;
        if self.kafka.default_partitions < 1 {
            return invalid("kafka.default_partitions", "must be at least 1");
        }
        if self.dedup.retention_hours == 0 {
            return invalid("dedup.retention_hours", "must be at least 1");
        }
        if self.dedup.prune_interval_secs == 0 {
            return invalid("dedup.prune_interval_secs", "must be at least 1");
        }
        if self.dedup.prune_chunk == 0 {
            return invalid("dedup.prune_chunk", "must be at least 1");
        }
        if let Err((field, reason)) = self.discovery.validate() {
            return invalid(field, &reason);
        }
        Ok(())
    }

    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        format!("{}:{}", self.http.host, self.http.port)
            .parse()
            .map_err(|e| ConfigError::Invalid {
                field: "http.host",
                reason: format!("{e}"),
            })
    }
}

impl RegistrySettings {
    /// Reads the certificates of `ca_location` (none when unset). Settings loaded through
    /// [`Settings::load`] have them read already; call this after changing `ca_location`.
    pub fn load_ca(&mut self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "registry.ca_location",
            reason,
        };
        self.ca = match &self.ca_location {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    invalid(format!("{} holds no PEM certificate: {e}", path.display()))
                })?;
                if certs.is_empty() {
                    return Err(invalid(format!(
                        "{} holds no PEM certificate",
                        path.display()
                    )));
                }
                certs
            }
        };
        Ok(())
    }

    /// An HTTP client for the registry: rustls, trusting the system's roots and the
    /// configured CA, every request bounded by `timeout`.
    pub fn http_client(&self, timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .tls_certs_merge(self.ca.iter().cloned())
            .build()
            .expect("a reqwest client with PEM-parsed roots builds")
    }

    /// `request` with this service's credentials, if it has any (an empty user name, as an
    /// unset variable in docker-compose gives, means none).
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.username.as_deref().filter(|user| !user.is_empty()) {
            Some(user) => request.basic_auth(
                user,
                Some(self.password.as_ref().map_or("", |p| p.expose_secret())),
            ),
            None => request,
        }
    }
}

impl KafkaSettings {
    /// A topic or group name with the configured prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.topic_prefix, base)
    }

    /// Settings shared by every client: brokers, statistics, TLS and SASL, pass-through
    /// properties. Every producer, consumer and admin client is built from this.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        // librdkafka property names never hold '_', so `socket_timeout_ms` (what an
        // environment variable can spell) means `socket.timeout.ms`.
        for (key, value) in &self.properties {
            config.set(property_name(key), value);
        }
        self.apply_security(&mut config);
        config
    }

    fn apply_security(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.security_protocol.as_str());
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", path(ca));
        }
        if let Some(certificate) = &self.ssl_certificate_location {
            config.set("ssl.certificate.location", path(certificate));
        }
        if let Some(key) = &self.ssl_key_location {
            config.set("ssl.key.location", path(key));
        }
        if let Some(password) = &self.ssl_key_password {
            config.set("ssl.key.password", password.expose_secret());
        }
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose_secret());
        }
    }

    /// The combinations librdkafka would reject only when a client is created (or, worse,
    /// accept and then fail to connect for ever) are refused at load, naming the key.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        for key in self.properties.keys() {
            let name = property_name(key);
            if let Some((_, typed)) = TYPED_PROPERTIES.iter().find(|(p, _)| *p == name) {
                return invalid("kafka.properties", format!("set {typed} instead of {key}"));
            }
        }
        let protocol = self.security_protocol;
        let named = |field: &str| {
            format!(
                "{field} is set but kafka.security_protocol is {}",
                protocol.as_str()
            )
        };
        if !protocol.uses_tls() {
            let tls_keys = [
                ("kafka.ssl_ca_location", self.ssl_ca_location.is_some()),
                (
                    "kafka.ssl_certificate_location",
                    self.ssl_certificate_location.is_some(),
                ),
                ("kafka.ssl_key_location", self.ssl_key_location.is_some()),
                ("kafka.ssl_key_password", self.ssl_key_password.is_some()),
            ];
            if let Some((field, _)) = tls_keys.iter().find(|(_, set)| *set) {
                return invalid(
                    field,
                    format!("{}; TLS needs ssl or sasl_ssl", named(field)),
                );
            }
        }
        if !protocol.uses_sasl() {
            let sasl_keys = [
                ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("kafka.sasl_username", self.sasl_username.is_some()),
                ("kafka.sasl_password", self.sasl_password.is_some()),
            ];
            if let Some((field, _)) = sasl_keys.iter().find(|(_, set)| *set) {
                return invalid(
                    field,
                    format!("{}; SASL needs sasl_plaintext or sasl_ssl", named(field)),
                );
            }
        } else {
            let needs = format!(
                "required with kafka.security_protocol = {}",
                protocol.as_str()
            );
            if self.sasl_mechanism.is_none() {
                return invalid(
                    "kafka.sasl_mechanism",
                    format!("{needs} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"),
                );
            }
            if self
                .sasl_username
                .as_deref()
                .is_none_or(|u| u.trim().is_empty())
            {
                return invalid("kafka.sasl_username", needs);
            }
            if self
                .sasl_password
                .as_ref()
                .is_none_or(|p| p.expose_secret().is_empty())
            {
                return invalid("kafka.sasl_password", needs);
            }
        }
        match (&self.ssl_certificate_location, &self.ssl_key_location) {
            (Some(_), None) => {
                return invalid(
                    "kafka.ssl_key_location",
                    "required with kafka.ssl_certificate_location".into(),
                );
            }
            (None, Some(_)) => {
                return invalid(
                    "kafka.ssl_certificate_location",
                    "required with kafka.ssl_key_location".into(),
                );
            }
            _ => {}
        }
        if self.ssl_key_password.is_some() && self.ssl_key_location.is_none() {
            return invalid(
                "kafka.ssl_key_password",
                "is set but kafka.ssl_key_location is not".into(),
            );
        }
        // A missing file otherwise surfaces as a client that cannot be created, from deep
        // inside whichever service started first.
        let files = [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ];
        for (field, file) in files {
            if let Some(file) = file
                && !file.is_file()
            {
                return invalid(field, format!("{} is not a readable file", file.display()));
            }
        }
        Ok(())
    }

    /// Idempotent producer with `acks=all`: a send is done only once every in-sync replica has it.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_size.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string());
        config
    }

    /// Consumer in `group`: offsets are stored by the runtime only after the handler
    /// committed, and auto-committed from that store (never ahead of the work).
    pub fn consumer_config(&self, group: &str, consumer: &ConsumerSettings) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                consumer.session_timeout_ms.to_string(),
            )
            .set(
                "queued.max.messages.kbytes",
                consumer.queued_max_kbytes.to_string(),
            )
            .set(
                "fetch.queue.backoff.ms",
                consumer.fetch_queue_backoff_ms.to_string(),
            )
            .set(
                "max.poll.interval.ms",
                consumer.max_poll_interval_ms.to_string(),
            );
        config
    }
}

/// librdkafka property names never hold '_': `socket_timeout_ms` is `socket.timeout.ms`.
fn property_name(key: &str) -> String {
    key.replace('_', ".")
}

impl ConsumerSettings {
    pub fn batch_wait(&self) -> Duration {
        Duration::from_millis(self.batch_wait_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::from_toml("").unwrap();
        assert_eq!(settings.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(settings.kafka.compression, Compression::Lz4);
    }

    #[test]
    fn drain_timeout_must_stay_below_session_timeout() {
        let err = Settings::from_toml("[consumer]\ndrain_timeout_ms = 20000").unwrap_err();
        assert!(
            err.to_string().contains("consumer.drain_timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Settings::from_toml("[kafka]\nlinger_ms = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("linger_ms"), "{err}");
    }

    #[test]
    fn service_sections_are_typed_and_layered() {
        #[derive(Debug, Deserialize)]
        struct Gateway {
            token_ttl_secs: u64,
            #[serde(default)]
            issuer: Option<String>,
        }
        let settings = Settings::from_toml("[gateway]\ntoken_ttl_secs = 60").unwrap();
        let gateway: Gateway = settings.section("gateway").unwrap();
        assert_eq!(gateway.token_ttl_secs, 60);
        assert_eq!(gateway.issuer, None);
        let err = settings.section::<Gateway>("missing").unwrap_err();
        assert!(err.to_string().contains("token_ttl_secs"), "{err}");
    }

    #[test]
    fn overrides_go_on_top_of_every_layer() {
        let settings = Settings::from_toml("[http]\nport = 8081\n[gateway]\nurl = \"a\"").unwrap();
        let moved = settings
            .with_overrides("[http]\nport = 0\n[gateway]\nurl = \"b\"")
            .unwrap();
        assert_eq!(moved.http.port, 0);
        assert_eq!(
            moved.kafka.bootstrap_servers,
            settings.kafka.bootstrap_servers
        );
        let gateway: std::collections::HashMap<String, String> = moved.section("gateway").unwrap();
        assert_eq!(gateway["url"], "b");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Settings::from_toml("[kafka]\nbootstrap = \"x\"").unwrap_err();
        assert!(err.to_string().contains("bootstrap"), "{err}");
    }

    #[test]
    fn secrets_do_not_reach_debug_output() {
        let settings = Settings::from_toml(
            "[database]\nurl = \"postgres://u:hunter2@h/db\"\nmax_connections = 1",
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn registry_password_does_not_reach_debug_output() {
        let settings = Settings::from_toml(
            "[registry]\nurl = \"https://r\"\nusername = \"svc\"\npassword = \"hunter2\"",
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn an_unreadable_registry_ca_names_the_key() {
        let err =
            Settings::from_toml("[registry]\nca_location = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(err.to_string().contains("registry.ca_location"), "{err}");
    }

    #[test]
    fn pass_through_properties_accept_underscores_for_dots() {
        let settings = Settings::from_toml(
            "[kafka.properties]\nsocket_timeout_ms = \"5000\"\n\"client.id\" = \"x\"",
        )
        .unwrap();
        let config = settings.kafka.client_config();
        assert_eq!(config.get("socket.timeout.ms"), Some("5000"));
        assert_eq!(config.get("client.id"), Some("x"));
    }

    /// A file that exists, for the keys that name one.
    fn existing_file() -> String {
        let path = std::env::temp_dir().join("feedline-config-test.pem");
        std::fs::write(&path, "not checked here").unwrap();
        path.display().to_string()
    }

    fn invalid_field(toml: &str) -> &'static str {
        match Settings::from_toml(toml) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field for {toml:?}, got {other:?}"),
        }
    }

    #[test]
    fn sasl_ssl_with_scram_sets_every_client_property() {
        let ca = existing_file();
        let settings = Settings::from_toml(&format!(
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nssl_ca_location = \"{ca}\"\n\
             sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"svc\"\nsasl_password = \"pw\""
        ))
        .unwrap();
        for config in [
            settings.kafka.client_config(),
            settings.kafka.producer_config(),
            settings.kafka.consumer_config("g", &settings.consumer),
        ] {
            assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
            assert_eq!(config.get("ssl.ca.location"), Some(ca.as_str()));
            assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
            assert_eq!(config.get("sasl.username"), Some("svc"));
            assert_eq!(config.get("sasl.password"), Some("pw"));
        }
    }

    #[test]
    fn the_protocol_is_plaintext_unless_configured() {
        let settings = Settings::from_toml("").unwrap();
        assert_eq!(
            settings.kafka.security_protocol,
            SecurityProtocol::Plaintext
        );
        let config = settings.kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.mechanism"), None);
    }

    #[test]
    fn mutual_tls_takes_a_certificate_and_an_encrypted_key() {
        let file = existing_file();
        let settings = Settings::from_toml(&format!(
            "[kafka]\nsecurity_protocol = \"SSL\"\nssl_ca_location = \"{file}\"\n\
             ssl_certificate_location = \"{file}\"\nssl_key_location = \"{file}\"\n\
             ssl_key_password = \"hunter2\""
        ))
        .unwrap();
        let config = settings.kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("ssl.key.password"), Some("hunter2"));
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert!(!format!("{:?}", redacted_client_config(&config)).contains("hunter2"));
    }

    #[test]
    fn invalid_security_combinations_name_the_key() {
        let file = existing_file();
        let cases = [
            ("security_protocol = \"sasl_ssl\"", "kafka.sasl_mechanism"),
            (
                "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"",
                "kafka.sasl_username",
            ),
            (
                "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"u\"",
                "kafka.sasl_password",
            ),
            ("sasl_username = \"u\"", "kafka.sasl_username"),
            ("sasl_password = \"p\"", "kafka.sasl_password"),
            (
                &format!("ssl_ca_location = \"{file}\""),
                "kafka.ssl_ca_location",
            ),
            (
                &format!("security_protocol = \"ssl\"\nssl_certificate_location = \"{file}\""),
                "kafka.ssl_key_location",
            ),
            (
                &format!("security_protocol = \"ssl\"\nssl_key_location = \"{file}\""),
                "kafka.ssl_certificate_location",
            ),
            (
                "security_protocol = \"ssl\"\nssl_key_password = \"p\"",
                "kafka.ssl_key_password",
            ),
            (
                "security_protocol = \"ssl\"\nssl_ca_location = \"/nonexistent/ca.pem\"",
                "kafka.ssl_ca_location",
            ),
        ];
        for (kafka, field) in cases {
            assert_eq!(
                invalid_field(&format!("[kafka]\n{kafka}")),
                field,
                "{kafka}"
            );
        }
        let err = Settings::from_toml("[kafka]\nsecurity_protocol = \"tls\"").unwrap_err();
        assert!(err.to_string().contains("security_protocol"), "{err}");
        let err = Settings::from_toml(
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sasl_mechanism"), "{err}");
    }

    #[test]
    fn typed_keys_cannot_also_be_pass_through_properties() {
        for key in ["security_protocol", "\"sasl.password\"", "ssl_key_password"] {
            let toml = format!("[kafka.properties]\n{key} = \"x\"");
            assert_eq!(invalid_field(&toml), "kafka.properties", "{key}");
        }
    }

    #[test]
    fn secret_pass_through_properties_are_masked() {
        let settings = Settings::from_toml(
            "[kafka.properties]\n\"ssl.keystore.password\" = \"hunter2\"\n\
             \"sasl.oauthbearer.client.secret\" = \"hunter3\"\n\"client.id\" = \"visible\"",
        )
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(shown.contains("visible"), "{shown}");
        let shown = format!(
            "{:?}",
            redacted_client_config(&settings.kafka.client_config())
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
    }

    #[test]
    fn producer_is_idempotent_with_acks_all() {
        let settings = Settings::from_toml("").unwrap();
        let config = settings.kafka.producer_config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
    }

    #[test]
    fn telemetry_is_off_by_default_and_checked_when_set() {
        let settings = Settings::from_toml("service_name = \"orders\"").unwrap();
        assert!(!settings.telemetry.exports());
        assert_eq!(settings.telemetry.sampling_ratio, 1.0);
        assert_eq!(settings.trace_service_name(), "orders");
        let named = Settings::from_toml(
            "[telemetry]\notlp_endpoint = \"http://jaeger:4318\"\nservice_name = \"orders-eu\"",
        )
        .unwrap();
        assert!(named.telemetry.exports());
        assert_eq!(named.trace_service_name(), "orders-eu");
        for (bad, field) in [
            ("sampling_ratio = 1.5", "telemetry.sampling_ratio"),
            ("otlp_endpoint = \"jaeger:4318\"", "telemetry.otlp_endpoint"),
        ] {
            let err = Settings::from_toml(&format!("[telemetry]\n{bad}")).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
