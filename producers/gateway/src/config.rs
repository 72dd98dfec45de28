//! The gateway's own section of the configuration, `[gateway]`.

use std::collections::BTreeMap;
use std::time::Duration;

use feedline::Settings;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::admission::AdmissionConfig;
use crate::auth::Scope;

/// The signing secret shipped in [`crate::DEFAULTS`] for local runs; a warning is logged
/// whenever it is in use.
pub const DEV_JWT_SECRET: &str = "feedline-dev-only-jwt-secret-do-not-use-in-production";

/// SHA-256 of `demo-secret`, the demo client's published secret.
pub const DEMO_SECRET_SHA256: &str =
    "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf";

/// HS256 keys shorter than the hash output weaken it (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Base URL of order-view, which answers the queries and serves the live feed.
    pub order_view_url: String,
    /// HS256 key of the access tokens; shared by every gateway replica.
    pub jwt_secret: SecretString,
    /// Lifetime of an access token.
    pub token_ttl_secs: u64,
    /// Upper bound of `?wait=` / `Prefer: wait=`.
    pub max_wait_secs: u64,
    /// Time limit of a proxied query (not of the live feed, which streams for as long as
    /// the client stays).
    pub proxy_timeout_ms: u64,
    /// Create the topics at start-up. Off where topics are managed elsewhere (or the
    /// gateway's principal may not create them).
    pub ensure_topics: bool,
    /// Names this replica in the `producer` field of every command (`gateway-<replica>`);
    /// the host name, or a random id, when not set.
    #[serde(default)]
    pub replica: Option<String>,
    /// When to refuse commands because the services behind are too far behind.
    pub admission: AdmissionConfig,
    /// How many answers to `Idempotency-Key` requests are kept, and for how long.
    pub idempotency: IdempotencyConfig,
    /// OAuth2 clients allowed to get tokens, by client id.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Lower-case hex SHA-256 of the client secret (`printf %s "$secret" | sha256sum`).
    pub secret_sha256: String,
    /// The scopes the client may ask for.
    pub scopes: Vec<Scope>,
    /// The tenant whose customers the client sees and acts on; customers it registers
    /// belong to it. Every client needs one unless it has the `admin` scope (which sees
    /// every tenant and must have none).
    #[serde(default)]
    pub tenant: Option<String>,
    /// `false` removes a client the defaults define (such as `demo`) without deleting it.
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long a keyed answer is replayed to a retry.
    pub ttl_secs: u64,
    /// At most this many answers are kept (the oldest go first); 0 keeps none, and a retry
    /// is then only deduplicated by the services.
    pub max_entries: usize,
}

impl IdempotencyConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct InvalidConfig {
    pub field: String,
    pub reason: String,
}

impl GatewayConfig {
    /// The `[gateway]` section of `settings` layered over this crate's [`crate::DEFAULTS`],
    /// so settings built without the service defaults (as tests often are) still get them,
    /// then validated.
    pub fn from_settings(settings: &Settings) -> Result<Self, InvalidConfig> {
        let layered: figment::value::Dict = settings.section("gateway").unwrap_or_default();
        let config: GatewayConfig = Figment::from(Toml::string(crate::DEFAULTS))
            .focus("gateway")
            .merge(Serialized::defaults(layered))
            .extract()
            .map_err(|e| InvalidConfig {
                field: std::iter::once("gateway".to_owned())
                    .chain(e.path.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("."),
                reason: e.kind.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |field: &str, reason: &str| {
            Err(InvalidConfig {
                field: format!("gateway.{field}"),
                reason: reason.to_owned(),
            })
        };
        if !(self.order_view_url.starts_with("http://")
            || self.order_view_url.starts_with("https://"))
        {
            return invalid("order_view_url", "must start with http:// or https://");
        }
        if self.jwt_secret.expose_secret().len() < MIN_SECRET_BYTES {
            return invalid("jwt_secret", "must be at least 32 bytes long");
        }
        if self.token_ttl_secs == 0 {
            return invalid("token_ttl_secs", "must be at least 1");
        }
        if self.admission.max_backlog > 0 && self.admission.check_interval_ms == 0 {
            return invalid("admission.check_interval_ms", "must be at least 1");
        }
        if self.idempotency.ttl_secs == 0 {
            return invalid("idempotency.ttl_secs", "must be at least 1");
        }
        if self.max_wait_secs > 30 {
            return invalid(
                "max_wait_secs",
                "must be at most 30: longer waits belong on the live feed",
            );
        }
        for (id, client) in &self.clients {
            let hash = &client.secret_sha256;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return invalid(
                    &format!("clients.{id}.secret_sha256"),
                    "must be 64 hex digits (the SHA-256 of the secret)",
                );
            }
            let admin = client.scopes.contains(&Scope::Admin);
            match &client.tenant {
                Some(tenant) if !crate::tenancy::valid_name(tenant) => {
                    return invalid(&format!("clients.{id}.tenant"), crate::tenancy::NAME_RULE);
                }
                Some(_) if admin => {
                    return invalid(
                        &format!("clients.{id}.tenant"),
                        "an admin client sees every tenant and must not name one",
                    );
                }
                // Refused here rather than seeing everything or nothing: a client is
                // bound to a tenant, or is explicitly an admin.
                None if !admin && client.enabled => {
                    return invalid(
                        &format!("clients.{id}.tenant"),
                        "is required unless the client has the admin scope",
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn uses_dev_secret(&self) -> bool {
        self.jwt_secret.expose_secret() == DEV_JWT_SECRET
    }

    /// The demo client, when it is enabled with its published secret.
    pub fn demo_client_enabled(&self) -> bool {
        self.clients
            .values()
            .any(|c| c.enabled && c.secret_sha256.eq_ignore_ascii_case(DEMO_SECRET_SHA256))
    }

    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    pub fn proxy_timeout(&self) -> Duration {
        Duration::from_millis(self.proxy_timeout_ms)
    }

    /// `gateway-<replica>`: the `producer` of every command this process publishes.
    pub fn producer_name(&self) -> String {
        let replica = self
            .replica
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(feedline::service::replica_id);
        format!("gateway-{replica}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(overrides: &str) -> Result<GatewayConfig, String> {
        let settings = Settings::from_toml(overrides).map_err(|e| e.to_string())?;
        GatewayConfig::from_settings(&settings).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_ship_the_demo_client_and_the_dev_secret() {
        let config = load("").unwrap();
        assert!(config.uses_dev_secret());
        assert!(config.demo_client_enabled());
        let demo = &config.clients["demo"];
        assert_eq!(demo.scopes, Scope::ALL);
        assert_eq!(config.order_view_url, "http://127.0.0.1:8093");
        assert_eq!(config.max_wait(), Duration::from_secs(30));
    }

    #[test]
    fn demo_secret_hash_is_the_hash_of_demo_secret() {
        assert_eq!(crate::auth::hash_secret("demo-secret"), DEMO_SECRET_SHA256);
    }

    #[test]
    fn demo_client_can_be_disabled() {
        let config = load("[gateway.clients.demo]\nenabled = false").unwrap();
        assert!(!config.demo_client_enabled());
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let config = load("").unwrap();
        assert!(!format!("{config:?}").contains(DEV_JWT_SECRET));
    }

    #[test]
    fn bad_values_name_the_key() {
        let short = load("[gateway]\njwt_secret = \"short\"").unwrap_err();
        assert!(short.contains("jwt_secret"), "{short}");
        let scope =
            load("[gateway.clients.x]\nsecret_sha256 = \"00\"\nscopes = [\"root\"]").unwrap_err();
        assert!(scope.contains("root"), "{scope}");
        let hash = load("[gateway.clients.x]\nsecret_sha256 = \"00\"\nscopes = []").unwrap_err();
        assert!(hash.contains("clients.x.secret_sha256"), "{hash}");
        let unknown = load("[gateway]\norderview = \"x\"").unwrap_err();
        assert!(unknown.contains("orderview"), "{unknown}");
        let wait = load("[gateway]\nmax_wait_secs = 60").unwrap_err();
        assert!(wait.contains("max_wait_secs"), "{wait}");
    }

    #[test]
    fn every_client_has_a_tenant_or_is_an_admin_never_both() {
        let client = |scopes: &str, tenant: &str| {
            format!(
                "[gateway.clients.x]\nsecret_sha256 = \"{}\"\nscopes = [{scopes}]\n{tenant}",
                DEMO_SECRET_SHA256
            )
        };
        let tenant = load(&client("\"feed:read\"", "tenant = \"acme-eu.1\"")).unwrap();
        assert_eq!(tenant.clients["x"].tenant.as_deref(), Some("acme-eu.1"));
        load(&client("\"feed:read\", \"admin\"", "")).unwrap();
        for (scopes, tenant) in [
            ("\"feed:read\"", ""),
            ("\"feed:read\", \"admin\"", "tenant = \"acme\""),
            ("\"feed:read\"", "tenant = \"a b\""),
            ("\"feed:read\"", "tenant = \"\""),
        ] {
            let error = load(&client(scopes, tenant)).unwrap_err();
            assert!(error.contains("clients.x.tenant"), "{error}");
        }
        // A disabled client needs neither: it gets no tokens.
        load(&client("\"feed:read\"", "enabled = false")).unwrap();
        assert!(
            load("").unwrap().clients["demo"]
                .scopes
                .contains(&Scope::Admin)
        );
    }

    #[test]
    fn producer_name_prefers_the_configured_replica() {
        let config = load("[gateway]\nreplica = \"a7\"").unwrap();
        assert_eq!(config.producer_name(), "gateway-a7");
        assert!(load("").unwrap().producer_name().starts_with("gateway-"));
    }
}
