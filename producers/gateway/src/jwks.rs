//! An external issuer (a company's identity provider: Keycloak, Auth0, Entra...): its RS256
//! and ES256 tokens verified with the public keys it publishes as a JSON Web Key Set
//! (RFC 7517), fetched over HTTPS and cached.
//!
//! The set is fetched again every `refresh_secs` in the background ([`refresh`]), and when a
//! token names a key it lacks (the provider rotated), but never more often than
//! [`MIN_FETCH_INTERVAL`]: otherwise a stream of tokens with made-up key ids would turn the
//! gateway into a client hammering the provider. A failed fetch keeps the cached set in
//! service, and no request waits on a routine refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use feedline::CancellationToken;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::ExternalIssuerConfig;
use crate::jwt::{Claims, Expected, Parsed, TokenError};

/// The least time between two fetches of the key set, whatever asks for them.
pub const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long one fetch may take: a request waiting on it waits this long at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A key set larger than this is not a key set.
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("failed to read the CA file {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to build the HTTPS client: {0}")]
    Client(reqwest::Error),
    #[error("failed to fetch the key set: {0}")]
    Fetch(reqwest::Error),
    #[error("the key set answer is HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not a JSON Web Key Set: {0}")]
    Parse(serde_json::Error),
}

/// A public key of the set, ready to verify with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point `04 || x || y`.
    P256(Vec<u8>),
}

impl PublicKey {
    fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Rsa { .. } => "RS256",
            PublicKey::P256(_) => "ES256",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            // JWS ES256 signatures are r || s, fixed width (RFC 7518 §3.4).
            PublicKey::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// One JWK as published; fields not used are ignored.
#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

impl Jwk {
    /// The key, when it is a signing key of a supported kind (others are skipped: a set
    /// may hold encryption keys and algorithms this gateway does not take).
    fn public_key(&self) -> Option<(String, PublicKey)> {
        let kid = self.kid.clone()?;
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let b64 = |field: &Option<String>| URL_SAFE_NO_PAD.decode(field.as_deref()?).ok();
        let key = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => PublicKey::Rsa {
                n: b64(&self.n)?,
                e: b64(&self.e)?,
            },
            ("EC", Some("P-256")) => {
                let (x, y) = (b64(&self.x)?, b64(&self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                PublicKey::P256([&[4u8][..], &x, &y].concat())
            }
            _ => return None,
        };
        if self
            .alg
            .as_deref()
            .is_some_and(|alg| alg != key.algorithm())
        {
            return None;
        }
        Some((kid, key))
    }
}

fn parse_set(body: &[u8]) -> Result<HashMap<String, PublicKey>, JwksError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(JwksError::Parse)?;
    Ok(set.keys.iter().filter_map(Jwk::public_key).collect())
}

#[derive(Debug, Default)]
struct Cache {
    keys: HashMap<String, PublicKey>,
}

/// The external issuer's expectations and its cached key set.
#[derive(Debug)]
pub struct ExternalIssuer {
    jwks_url: String,
    refresh: Duration,
    pub expected: Expected,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// When a fetch was last tried, successful or not; held while fetching, so concurrent
    /// requests wait for one fetch instead of each starting their own.
    last_attempt: Mutex<Option<Instant>>,
}

impl ExternalIssuer {
    pub fn new(config: &ExternalIssuerConfig, leeway_secs: i64) -> Result<Self, JwksError> {
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_location {
            let pem = std::fs::read(path).map_err(|source| JwksError::Ca {
                path: path.display().to_string(),
                source,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(JwksError::Client)? {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(ExternalIssuer {
            jwks_url: config.jwks_url.clone(),
            refresh: config.refresh(),
            expected: Expected {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs,
            },
            http: http.build().map_err(JwksError::Client)?,
            cache: RwLock::new(Cache::default()),
            last_attempt: Mutex::new(None),
        })
    }

    /// Verifies an RS256 or ES256 token: signature with the key its `kid` names, then the
    /// claims against the issuer's expectations.
    pub async fn verify(&self, token: &Parsed<'_>, now: i64) -> Result<Claims, TokenError> {
        let kid = token.header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = match self.key(kid).await {
            Some(key) => key,
            None => {
                self.fetch_if_allowed().await;
                self.key(kid).await.ok_or(TokenError::UnknownKey)?
            }
        };
        if key.algorithm() != token.header.alg {
            return Err(TokenError::BadSignature);
        }
        if !key.verify(token.signing_input.as_bytes(), &token.signature) {
            return Err(TokenError::BadSignature);
        }
        let claims = token.claims()?;
        self.expected.check(&claims, now)?;
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Option<PublicKey> {
        self.cache.read().await.keys.get(kid).cloned()
    }

    /// Fetches the set unless a fetch was tried within [`MIN_FETCH_INTERVAL`]. A failure
    /// is logged and the cached set kept.
    pub async fn fetch_if_allowed(&self) {
        let mut last_attempt = self.last_attempt.lock().await;
        if last_attempt.is_some_and(|at| at.elapsed() < MIN_FETCH_INTERVAL) {
            return;
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), url = %self.jwks_url, "external issuer key set fetched");
                self.cache.write().await.keys = keys;
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.jwks_url, "external issuer key set not fetched; the cached set stays in use");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, PublicKey>, JwksError> {
        let mut response = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(JwksError::Fetch)?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(JwksError::Fetch)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        parse_set(&body)
    }
}

/// Fetches `issuer`'s key set every `refresh_secs` until `token` is cancelled.
pub async fn refresh(issuer: Arc<ExternalIssuer>, token: CancellationToken) {
    let mut every = tokio::time::interval_at(Instant::now() + issuer.refresh, issuer.refresh);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = every.tick() => issuer.fetch_if_allowed().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_keep_only_supported_signing_keys() {
        let x = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let y = URL_SAFE_NO_PAD.encode([2u8; 32]);
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "use": "sig", "alg": "RS256"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": x, "y": y},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": x, "y": y},
            {"kty": "RSA", "kid": "enc", "n": "AQAB", "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "ps", "n": "AQAB", "e": "AQAB", "alg": "PS256"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse_set(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["e", "r"]);
        assert_eq!(keys["e"].algorithm(), "ES256");
        assert!(matches!(parse_set(b"[]"), Err(JwksError::Parse(_))));
    }
}
