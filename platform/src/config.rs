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

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub sasl_password: Option<SecretString>,
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

impl Settings {
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

    /// Settings shared by every client: brokers, statistics, pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        // librdkafka property names never hold '_', so `security_protocol` (what an
        // environment variable can spell) means `security.protocol`.
        for (key, value) in &self.properties {
            config.set(key.replace('_', "."), value);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose_secret());
        }
        config
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
            "[kafka.properties]\nsecurity_protocol = \"SASL_SSL\"\n\"sasl.mechanism\" = \"PLAIN\"",
        )
        .unwrap();
        let config = settings.kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
    }

    #[test]
    fn producer_is_idempotent_with_acks_all() {
        let settings = Settings::from_toml("").unwrap();
        let config = settings.kafka.producer_config();
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("acks"), Some("all"));
    }
}
