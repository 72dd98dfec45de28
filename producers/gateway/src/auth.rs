//! Who may call what: scopes, the registered clients (secrets stored hashed, compared in
//! constant time), and the extractor that checks a route's bearer token.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::config::ClientConfig;
use crate::error::ApiError;
use crate::jwks::ExternalIssuer;
use crate::jwt::{self, Claims, Parsed, TokenError, TokenKeys};

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "orders:write")]
    OrdersWrite,
    #[serde(rename = "customers:write")]
    CustomersWrite,
    #[serde(rename = "feed:read")]
    FeedRead,
    /// Every tenant's customers and orders, with no tenant filter (see [`crate::tenancy`]).
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::OrdersWrite,
        Scope::CustomersWrite,
        Scope::FeedRead,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::OrdersWrite => "orders:write",
            Scope::CustomersWrite => "customers:write",
            Scope::FeedRead => "feed:read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scope::OrdersWrite => "place and cancel orders",
            Scope::CustomersWrite => "register customers and change credit limits",
            Scope::FeedRead => "query orders and customers, and follow the live feed",
            Scope::Admin => "see and act on every tenant's customers and orders",
        }
    }
}

/// Lower-case hex SHA-256 of a client secret: how secrets are stored in the config.
///
/// A plain hash (no salt, no slow KDF) is enough for *client* secrets: they are generated,
/// high-entropy random strings (128 bits or more), so neither a dictionary nor brute force
/// can invert the hash, and a slow KDF would only make every token request an easy way to
/// burn the gateway's CPU. User-chosen passwords would need argon2; clients have none.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[derive(Debug)]
pub struct Client {
    pub id: String,
    secret_sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    /// The tenant whose customers the client's tokens see (`gateway.clients.<id>.tenant`).
    pub tenant: Option<String>,
}

/// The enabled clients, by id.
#[derive(Debug)]
pub struct Clients {
    by_id: HashMap<String, Client>,
}

impl Clients {
    /// Skips disabled clients; the config was validated, so every hash is 64 hex digits.
    pub fn new(config: &BTreeMap<String, ClientConfig>) -> Self {
        let by_id = config
            .iter()
            .filter(|(_, c)| c.enabled)
            .filter_map(|(id, c)| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&c.secret_sha256, &mut hash).ok()?;
                let mut scopes = c.scopes.clone();
                scopes.sort();
                scopes.dedup();
                Some((
                    id.clone(),
                    Client {
                        id: id.clone(),
                        secret_sha256: hash,
                        scopes,
                        tenant: c.tenant.clone(),
                    },
                ))
            })
            .collect();
        Clients { by_id }
    }

    /// The client whose id and secret match. An unknown id costs the same hash and
    /// comparison as a known one, so response times do not tell which ids exist.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<&Client> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let client = self.by_id.get(id);
        let expected = client.map_or([0u8; 32], |c| c.secret_sha256);
        let matches: bool = presented.ct_eq(&expected).into();
        client.filter(|_| matches)
    }
}

/// Token issuing and checking, shared by the token endpoint and every route.
#[derive(Debug)]
pub struct Auth {
    pub keys: TokenKeys,
    /// An identity provider whose RS256/ES256 tokens are accepted too.
    pub external: Option<Arc<ExternalIssuer>>,
    pub clients: Clients,
    pub token_ttl_secs: u64,
}

impl Auth {
    /// The claims of a valid token: the gateway's own (HS256) or the external issuer's
    /// (RS256, ES256). The algorithm picks who may have signed it, so neither's keys are
    /// ever tried on the other's tokens.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let parsed = Parsed::new(token)?;
        let now = jwt::now();
        match (parsed.header.alg.as_str(), &self.external) {
            ("HS256", _) => self.keys.verify_parsed(&parsed, now),
            ("RS256" | "ES256", Some(external)) => external.verify(&parsed, now).await,
            ("RS256" | "ES256", None) => Err(TokenError::UnknownKey),
            _ => Err(TokenError::Malformed),
        }
    }
}

/// A route's requirement: the scope it needs. Tokens come only in the `Authorization`
/// header; a browser's feed uses a one-use ticket instead (see `ticket.rs`).
pub trait Requirement: Send + Sync + 'static {
    const SCOPE: Scope;
}

#[derive(Debug)]
pub struct OrdersWrite;
#[derive(Debug)]
pub struct CustomersWrite;
/// Queries proxied to order-view.
#[derive(Debug)]
pub struct FeedRead;

/// Operations' views (`/fleet`), which name internal addresses.
#[derive(Debug)]
pub struct Admin;

impl Requirement for Admin {
    const SCOPE: Scope = Scope::Admin;
}
impl Requirement for OrdersWrite {
    const SCOPE: Scope = Scope::OrdersWrite;
}
impl Requirement for CustomersWrite {
    const SCOPE: Scope = Scope::CustomersWrite;
}
impl Requirement for FeedRead {
    const SCOPE: Scope = Scope::FeedRead;
}

/// A request whose bearer token is valid and carries `R`'s scope. As an extractor it comes
/// before the body, so an unauthenticated request never has its body read.
#[derive(Debug)]
pub struct Authorized<R> {
    pub claims: Claims,
    _requirement: PhantomData<fn() -> R>,
}

/// Why a request was refused before it reached its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Token(TokenError),
    Scope(Scope),
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Token(e) => e.reason(),
            Refusal::Scope(_) => "insufficient_scope",
        }
    }

    fn into_error(self) -> ApiError {
        match self {
            Refusal::Scope(scope) => ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this route needs a token with scope {}", scope.as_str()),
            )
            .header(
                header::WWW_AUTHENTICATE,
                &format!(
                    r#"Bearer realm="feedline", error="insufficient_scope", scope="{}""#,
                    scope.as_str()
                ),
            ),
            Refusal::Missing | Refusal::Token(_) => {
                let message = match self {
                    Refusal::Token(e) => e.to_string(),
                    _ => "an access token is required: Authorization: Bearer <token>".to_owned(),
                };
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", &message).header(
                    header::WWW_AUTHENTICATE,
                    &format!(
                        r#"Bearer realm="feedline", error="invalid_token", error_description="{message}""#
                    ),
                )
            }
        }
    }
}

impl<R: Requirement> FromRequestParts<Arc<AppState>> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        match check::<R>(parts, &state.auth).await {
            Ok(claims) => {
                // Per client: only a verified token says which client is asking.
                crate::limits::admit_api_client(state, &claims.sub)?;
                Ok(Authorized {
                    claims,
                    _requirement: PhantomData,
                })
            }
            Err(refusal) => {
                state
                    .metrics
                    .auth_failures
                    .with_label_values(&[refusal.reason()])
                    .inc();
                tracing::debug!(
                    reason = refusal.reason(),
                    path = parts.uri.path(),
                    "request refused"
                );
                Err(refusal.into_error())
            }
        }
    }
}

async fn check<R: Requirement>(parts: &Parts, auth: &Auth) -> Result<Claims, Refusal> {
    let token = match parts.headers.get(header::AUTHORIZATION) {
        Some(value) => bearer(value.as_bytes()).ok_or(Refusal::Token(TokenError::Malformed))?,
        None => return Err(Refusal::Missing),
    };
    let claims = auth.verify(&token).await.map_err(Refusal::Token)?;
    if !claims.has_scope(R::SCOPE.as_str()) {
        return Err(Refusal::Scope(R::SCOPE));
    }
    Ok(claims)
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients() -> Clients {
        let mut config = BTreeMap::new();
        config.insert(
            "demo".to_owned(),
            ClientConfig {
                secret_sha256: hash_secret("demo-secret"),
                scopes: vec![Scope::FeedRead, Scope::OrdersWrite, Scope::FeedRead],
                tenant: Some("acme".into()),
                enabled: true,
            },
        );
        config.insert(
            "off".to_owned(),
            ClientConfig {
                secret_sha256: hash_secret("off-secret"),
                scopes: vec![Scope::FeedRead],
                tenant: Some("acme".into()),
                enabled: false,
            },
        );
        Clients::new(&config)
    }

    #[test]
    fn clients_authenticate_by_hashed_secret() {
        let clients = clients();
        let demo = clients.authenticate("demo", "demo-secret").unwrap();
        assert_eq!(demo.scopes, [Scope::OrdersWrite, Scope::FeedRead]);
        assert!(clients.authenticate("demo", "demo-secreT").is_none());
        assert!(clients.authenticate("demo", "").is_none());
        assert!(clients.authenticate("nobody", "demo-secret").is_none());
        assert!(clients.authenticate("off", "off-secret").is_none());
    }

    #[test]
    fn scopes_round_trip_their_names() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
            let json = serde_json::to_string(&scope).unwrap();
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
        }
        assert_eq!(Scope::parse("orders"), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer(b"Bearer abc.def.ghi").as_deref(),
            Some("abc.def.ghi")
        );
        assert_eq!(bearer(b"bearer  abc").as_deref(), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
