//! One file: one config section; only its tests take it past 600 lines.
//!
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
use crate::jwt::Expected;
use crate::limits::LimitsConfig;

/// The signing secret of dev mode when no key is configured: published, so anyone can forge
/// tokens with it, and refused outside dev mode.
pub const DEV_JWT_SECRET: &str = "feedline-dev-only-jwt-secret-do-not-use-in-production";

/// SHA-256 of `demo-secret`, the demo client's published secret.
pub const DEMO_SECRET_SHA256: &str =
    "cd577fe2561ebff23505db0bb006300c7cdecbd46bc0e03c449afafaca2c25bf";

/// HS256 keys shorter than the hash output weaken it (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Base URL of order-view, which answers the queries and serves the live feed: one, or
    /// several separated by commas (replicas, or a Kubernetes Service's DNS name). With
    /// `discover_order_view` the list is only the fallback while the Directory knows no
    /// serving instance.
    pub order_view_url: String,
    /// Balance over the order-view instances the platform's Directory (the `_services`
    /// topic) lists as serving, rather than over `order_view_url` alone.
    pub discover_order_view: bool,
    /// Local development: allows the built-in development secret (used when no key is
    /// configured) and the demo client, both refused otherwise.
    pub dev_mode: bool,
    /// HS256 key of the access tokens, shared by every gateway replica; its key id is
    /// [`DEFAULT_KEY_ID`]. `[gateway.keys]` holds several (for rotation).
    #[serde(default)]
    pub jwt_secret: Option<SecretString>,
    /// HS256 keys by key id (`kid`): tokens signed by any of them verify.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyConfig>,
    /// The key new tokens are signed with; may be left out when there is only one.
    #[serde(default)]
    pub signing_key_id: Option<String>,
    /// `iss` of the tokens this gateway issues, and required of the ones it verifies.
    pub issuer: String,
    /// `aud` of the tokens this gateway issues, and required of the ones it verifies.
    pub audience: String,
    /// Tolerated clock difference on `exp` and `nbf`: replicas' (and an external
    /// issuer's) clocks are never exactly equal.
    pub leeway_secs: u64,
    /// An identity provider whose RS256/ES256 tokens are accepted besides the gateway's own.
    #[serde(default)]
    pub external_issuer: Option<ExternalIssuerConfig>,
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
    /// Rate limits, caps on streams and waits, timeouts (see [`crate::limits`]).
    pub limits: LimitsConfig,
    /// OAuth2 clients allowed to get tokens, by client id.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientConfig>,
}

/// The key id of `gateway.jwt_secret`, and of tokens that carry none (issued before keys
/// had ids).
pub const DEFAULT_KEY_ID: &str = "default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// HS256 secret, at least 32 bytes.
    pub secret: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// Where the issuer publishes its public keys (a JSON Web Key Set), over HTTPS.
    pub jwks_url: String,
    /// `iss` its tokens must carry.
    pub issuer: String,
    /// `aud` its tokens must carry (one of, when a list).
    pub audience: String,
    /// How old the cached key set may grow before it is fetched again.
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// PEM CA certificates to trust for `jwks_url`, besides the system's (a private CA).
    #[serde(default)]
    pub ca_location: Option<std::path::PathBuf>,
}

fn default_refresh_secs() -> u64 {
    300
}

impl ExternalIssuerConfig {
    pub fn refresh(&self) -> Duration {
        Duration::from_secs(self.refresh_secs)
    }
}

/// Plain HTTP would let anyone on the path swap the keys; it is accepted only on the
/// loopback interface (a local identity provider, the tests).
fn is_loopback_http(url: &str) -> bool {
    ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| {
            url.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
        })
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

    /// The URLs of `order_view_url`, without trailing slashes, each once.
    pub fn order_view_urls(&self) -> Vec<String> {
        crate::upstream::source::replica_set(
            self.order_view_url
                .split(',')
                .map(|url| url.trim().to_owned()),
            &[],
        )
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |field: &str, reason: &str| {
            Err(InvalidConfig {
                field: format!("gateway.{field}"),
                reason: reason.to_owned(),
            })
        };
        if self.order_view_urls().is_empty() {
            return invalid("order_view_url", "must name at least one URL");
        }
        for url in self.order_view_urls() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(
                    "order_view_url",
                    &format!("{url:?} must start with http:// or https://"),
                );
            }
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.expose_secret().len() < MIN_SECRET_BYTES {
                return invalid("jwt_secret", "must be at least 32 bytes long");
            }
            if self.keys.contains_key(DEFAULT_KEY_ID) {
                return invalid(
                    &format!("keys.{DEFAULT_KEY_ID}"),
                    "is the key id of gateway.jwt_secret: set one or the other",
                );
            }
        }
        for (kid, key) in &self.keys {
            if kid.is_empty() {
                return invalid("keys", "a key id must not be empty");
            }
            if key.secret.expose_secret().len() < MIN_SECRET_BYTES {
                return invalid(
                    &format!("keys.{kid}.secret"),
                    "must be at least 32 bytes long",
                );
            }
        }
        self.signing_key()?;
        if self.issuer.trim().is_empty() {
            return invalid("issuer", "must not be empty");
        }
        if self.audience.trim().is_empty() {
            return invalid("audience", "must not be empty");
        }
        if let Some(external) = &self.external_issuer {
            if !(external.jwks_url.starts_with("https://") || is_loopback_http(&external.jwks_url))
            {
                return invalid(
                    "external_issuer.jwks_url",
                    "must start with https:// (plain http only on 127.0.0.1 or localhost)",
                );
            }
            if external.issuer.trim().is_empty() {
                return invalid("external_issuer.issuer", "must not be empty");
            }
            if external.audience.trim().is_empty() {
                return invalid("external_issuer.audience", "must not be empty");
            }
            if external.refresh_secs == 0 {
                return invalid("external_issuer.refresh_secs", "must be at least 1");
            }
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
        if let Some((key, reason)) = self.limits.problem() {
            return invalid(&format!("limits.{key}"), reason);
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

    /// Refuses what is only safe on a developer's machine unless dev mode says that is
    /// where it runs: the published development secret, no signing key at all (dev mode
    /// then signs with that secret), and the demo client with its published secret.
    pub fn check_safe(&self) -> Result<(), InvalidConfig> {
        if self.dev_mode {
            return Ok(());
        }
        let refuse = |field: &str, reason: &str| {
            Err(InvalidConfig {
                field: format!("gateway.{field}"),
                reason: format!(
                    "{reason} (or set gateway.dev_mode = true, FEEDLINE_GATEWAY__DEV_MODE=true, on a development machine)"
                ),
            })
        };
        if self.jwt_secret.is_none() && self.keys.is_empty() {
            return refuse(
                "jwt_secret",
                "no signing key is configured: set gateway.jwt_secret (FEEDLINE_GATEWAY__JWT_SECRET) to a random secret of at least 32 bytes, or [gateway.keys.<kid>] secret",
            );
        }
        if self.uses_dev_secret() {
            return refuse(
                "jwt_secret",
                "is the published development secret, with which anyone can forge tokens: set a random secret of at least 32 bytes",
            );
        }
        if self.demo_client_enabled() {
            return refuse(
                "clients.demo.enabled",
                "the demo client with the published secret demo-secret is enabled: set [gateway.clients.demo] enabled = false (FEEDLINE_GATEWAY__CLIENTS__DEMO__ENABLED=false) and configure clients of your own",
            );
        }
        Ok(())
    }

    /// The HS256 keys by key id: `gateway.keys`, `gateway.jwt_secret` under
    /// [`DEFAULT_KEY_ID`], and in dev mode with neither, the development secret.
    pub fn verification_keys(&self) -> BTreeMap<String, SecretString> {
        let mut keys: BTreeMap<String, SecretString> = self
            .keys
            .iter()
            .map(|(kid, key)| (kid.clone(), key.secret.clone()))
            .collect();
        match &self.jwt_secret {
            Some(secret) => {
                keys.insert(DEFAULT_KEY_ID.to_owned(), secret.clone());
            }
            None if keys.is_empty() && self.dev_mode => {
                keys.insert(DEFAULT_KEY_ID.to_owned(), DEV_JWT_SECRET.into());
            }
            None => {}
        }
        keys
    }

    /// What the gateway's own tokens must say.
    pub fn expected(&self) -> Expected {
        Expected {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway_secs: i64::try_from(self.leeway_secs).unwrap_or(i64::MAX),
        }
    }

    /// The id of the key new tokens are signed with: `signing_key_id`, or the only key.
    pub fn signing_key(&self) -> Result<String, InvalidConfig> {
        let keys = self.verification_keys();
        let invalid = |reason: String| InvalidConfig {
            field: "gateway.signing_key_id".to_owned(),
            reason,
        };
        match &self.signing_key_id {
            Some(kid) if keys.contains_key(kid) => Ok(kid.clone()),
            Some(kid) => Err(invalid(format!(
                "names {kid:?}, which is not a configured key (gateway.keys.<kid> or gateway.jwt_secret as {DEFAULT_KEY_ID:?})"
            ))),
            None if keys.len() <= 1 => Ok(keys
                .into_keys()
                .next()
                .unwrap_or_else(|| DEFAULT_KEY_ID.to_owned())),
            None => Err(invalid(
                "is required when several keys are configured: name the one that signs".to_owned(),
            )),
        }
    }

    pub fn uses_dev_secret(&self) -> bool {
        self.verification_keys()
            .values()
            .any(|secret| secret.expose_secret() == DEV_JWT_SECRET)
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
    fn defaults_ship_the_demo_client_and_no_key() {
        let config = load("").unwrap();
        assert!(!config.dev_mode);
        assert!(config.jwt_secret.is_none() && config.keys.is_empty());
        assert!(config.demo_client_enabled());
        let demo = &config.clients["demo"];
        assert_eq!(demo.scopes, Scope::ALL);
        assert_eq!(config.order_view_url, "http://127.0.0.1:8093");
        assert_eq!(config.max_wait(), Duration::from_secs(30));
        assert_eq!(
            (config.issuer.as_str(), config.audience.as_str()),
            ("feedline-gateway", "feedline-api")
        );
        assert_eq!(config.leeway_secs, 30);
        // What tests and tools mint tokens with (`TokenKeys::from_bytes`).
        assert_eq!(config.expected(), Expected::default());
    }

    #[test]
    fn only_dev_mode_allows_published_credentials() {
        let refused = |toml: &str| load(toml).unwrap().check_safe().unwrap_err().to_string();
        let no_key = refused("");
        assert!(no_key.contains("gateway.jwt_secret"), "{no_key}");
        let dev = refused(&format!(
            "[gateway]\njwt_secret = \"{DEV_JWT_SECRET}\"\n[gateway.clients.demo]\nenabled = false"
        ));
        assert!(dev.contains("development secret"), "{dev}");
        let demo = refused("[gateway]\njwt_secret = \"0123456789abcdef0123456789abcdef\"");
        assert!(demo.contains("gateway.clients.demo.enabled"), "{demo}");
        let safe = load(
            "[gateway]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n[gateway.clients.demo]\nenabled = false",
        )
        .unwrap();
        assert!(safe.check_safe().is_ok());

        // Dev mode with no key signs with the development secret.
        let dev = load("[gateway]\ndev_mode = true").unwrap();
        assert!(dev.check_safe().is_ok());
        assert!(dev.uses_dev_secret());
        assert_eq!(dev.signing_key().unwrap(), DEFAULT_KEY_ID);
    }

    #[test]
    fn keys_and_the_signing_key() {
        let secret = "0123456789abcdef0123456789abcdef";
        let two = format!(
            "[gateway.keys.a]\nsecret = \"{secret}\"\n[gateway.keys.b]\nsecret = \"{secret}\""
        );
        let unnamed = load(&two).unwrap_err();
        assert!(unnamed.contains("gateway.signing_key_id"), "{unnamed}");
        let config = load(&format!("[gateway]\nsigning_key_id = \"b\"\n{two}")).unwrap();
        assert_eq!(config.signing_key().unwrap(), "b");
        let keys: Vec<_> = config.verification_keys().into_keys().collect();
        assert_eq!(keys, ["a", "b"]);
        let missing = load(&format!("[gateway]\nsigning_key_id = \"c\"\n{two}")).unwrap_err();
        assert!(missing.contains("\"c\""), "{missing}");
        let one = load(&format!("[gateway.keys.only]\nsecret = \"{secret}\"")).unwrap();
        assert_eq!(one.signing_key().unwrap(), "only");
        let short = load("[gateway.keys.k]\nsecret = \"short\"").unwrap_err();
        assert!(short.contains("gateway.keys.k.secret"), "{short}");
        let clash = load(&format!(
            "[gateway]\njwt_secret = \"{secret}\"\n[gateway.keys.default]\nsecret = \"{secret}\""
        ))
        .unwrap_err();
        assert!(clash.contains("gateway.keys.default"), "{clash}");
    }

    #[test]
    fn the_external_issuer_needs_https_off_the_loopback() {
        let external = |url: &str| {
            load(&format!(
                "[gateway.external_issuer]\njwks_url = \"{url}\"\nissuer = \"i\"\naudience = \"a\""
            ))
        };
        let config = external("https://idp.example/certs").unwrap();
        assert_eq!(config.external_issuer.unwrap().refresh_secs, 300);
        for local in [
            "http://127.0.0.1:8443/certs",
            "http://localhost/certs",
            "http://[::1]:80",
        ] {
            assert!(external(local).is_ok(), "{local}");
        }
        for remote in [
            "http://idp.example/certs",
            "http://127.0.0.1.evil.example/",
            "ftp://x",
        ] {
            let err = external(remote).unwrap_err();
            assert!(err.contains("external_issuer.jwks_url"), "{remote}: {err}");
        }
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
        let secret = "0123456789abcdef0123456789abcdef";
        let config = load(&format!(
            "[gateway]\njwt_secret = \"{secret}\"\nsigning_key_id = \"k\"\n[gateway.keys.k]\nsecret = \"{secret}-k\""
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains(secret));
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
    fn order_view_url_is_one_url_or_a_comma_separated_list() {
        let one = load("").unwrap();
        assert_eq!(one.order_view_urls(), ["http://127.0.0.1:8093"]);
        assert!(one.discover_order_view, "on by default");
        let list = load(
            "[gateway]\norder_view_url = \"http://ov-0.ov:8093/, https://ov-1.ov:8093 ,http://ov-0.ov:8093\"\ndiscover_order_view = false",
        )
        .unwrap();
        assert_eq!(
            list.order_view_urls(),
            ["http://ov-0.ov:8093", "https://ov-1.ov:8093"]
        );
        assert!(!list.discover_order_view);
        for bad in ["http://a:1,ftp://b:2", " , ", "a:1"] {
            let error = load(&format!("[gateway]\norder_view_url = \"{bad}\"")).unwrap_err();
            assert!(error.contains("gateway.order_view_url"), "{bad}: {error}");
        }
        let ftp = load("[gateway]\norder_view_url = \"http://a:1,ftp://b:2\"").unwrap_err();
        assert!(ftp.contains("ftp://b:2"), "names the bad one: {ftp}");
    }

    #[test]
    fn producer_name_prefers_the_configured_replica() {
        let config = load("[gateway]\nreplica = \"a7\"").unwrap();
        assert_eq!(config.producer_name(), "gateway-a7");
        assert!(load("").unwrap().producer_name().starts_with("gateway-"));
    }
}
