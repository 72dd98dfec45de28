//! HS256 JSON Web Tokens (RFC 7519), written out rather than taken from a JWT crate.
//!
//! The gateway both issues and verifies its tokens with one shared secret, so it needs
//! exactly one algorithm. Doing HS256 with RustCrypto's `hmac` + `sha2` (already in the
//! build) is some 100 lines, accepts nothing but `"alg": "HS256"` (no `none`, no RSA/HMAC
//! key confusion to get wrong) and avoids the RSA and elliptic-curve crates that
//! `jsonwebtoken`'s pure-Rust backend compiles in.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Tolerated clock difference between the replica that issued a token and the one checking
/// it: replicas sit behind one load balancer and their clocks are never exactly equal.
pub const LEEWAY_SECS: i64 = 30;

/// Tokens longer than this are refused before any decoding work.
const MAX_TOKEN_LEN: usize = 4096;

/// The `{"alg":"HS256","typ":"JWT"}` header, encoded once.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// What a gateway token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client the token was issued to.
    pub sub: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
    /// Granted scopes, space-separated (RFC 8693 `scope`).
    pub scope: String,
    /// Unique per token, for audit logs.
    #[serde(default)]
    pub jti: String,
    /// The tenant whose customers the token sees and acts on; absent on admin tokens
    /// (see [`crate::tenancy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Claims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Why a token was refused; the label of the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed HS256 JWT")]
    Malformed,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
        }
    }
}

/// The signing key, prepared once (HMAC's inner and outer pads) and cloned per token.
#[derive(Clone)]
pub struct TokenKeys {
    mac: HmacSha256,
}

// By hand: the prepared MAC state is derived from the secret.
impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys").finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

impl TokenKeys {
    pub fn new(secret: &SecretString) -> Self {
        Self::from_bytes(secret.expose_secret().as_bytes())
    }

    pub fn from_bytes(secret: &[u8]) -> Self {
        TokenKeys {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"),
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = String::with_capacity(256);
        token.push_str(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Checks the signature (in constant time) before looking at the claims, then expiry
    /// against `now` (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)
        };
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Malformed);
        }
        let signature = decode(signature)?;
        let signed = &token[..token.len() - signature_len(token)];
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
        if now >= claims.exp + LEEWAY_SECS {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now())
    }
}

/// Length of the last segment plus its dot: what is left is the signing input.
fn signature_len(token: &str) -> usize {
    token.rsplit('.').next().map_or(0, |s| s.len() + 1)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "demo".into(),
            iat: 1_000,
            exp,
            scope: "orders:write feed:read".into(),
            jti: "j".into(),
            tenant: Some("acme".into()),
        }
    }

    #[test]
    fn header_constant_is_what_it_says() {
        let decoded = URL_SAFE_NO_PAD.decode(HEADER).unwrap();
        assert_eq!(decoded, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn round_trip_and_scopes() {
        let keys = TokenKeys::from_bytes(b"0123456789abcdef0123456789abcdef");
        let token = keys.sign(&claims(5_000));
        let back = keys.verify_at(&token, 2_000).unwrap();
        assert_eq!(back, claims(5_000));
        assert!(back.has_scope("feed:read"));
        assert!(!back.has_scope("feed"));
        assert!(!back.has_scope("customers:write"));
    }

    #[test]
    fn verifies_the_rfc_7515_example() {
        // RFC 7515, appendix A.1: an HS256 JWS with its key. Its payload has no `sub` or
        // `scope`, so the signature must pass and the claims then fail as malformed.
        let key = URL_SAFE_NO_PAD
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
            eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
            dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let keys = TokenKeys::from_bytes(&key);
        assert_eq!(keys.verify_at(token, 0), Err(TokenError::Malformed));
        let wrong = TokenKeys::from_bytes(b"not the key");
        assert_eq!(wrong.verify_at(token, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn refuses_forged_tampered_expired_and_odd_tokens() {
        let keys = TokenKeys::from_bytes(b"0123456789abcdef0123456789abcdef");
        let other = TokenKeys::from_bytes(b"another key of thirty-two bytes!");
        let token = keys.sign(&claims(5_000));

        let forged = other.sign(&claims(5_000));
        assert_eq!(
            keys.verify_at(&forged, 2_000),
            Err(TokenError::BadSignature)
        );

        let (header, rest) = token.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let mut wider = claims(5_000);
        wider.scope = "orders:write customers:write feed:read".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap());
        let tampered = format!("{header}.{payload}.{signature}");
        assert_eq!(
            keys.verify_at(&tampered, 2_000),
            Err(TokenError::BadSignature)
        );

        assert_eq!(
            keys.verify_at(&token, 5_000 + LEEWAY_SECS),
            Err(TokenError::Expired)
        );
        assert!(keys.verify_at(&token, 5_000 + LEEWAY_SECS - 1).is_ok());

        let none_alg = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#)
        );
        assert_eq!(keys.verify_at(&none_alg, 2_000), Err(TokenError::Malformed));
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(5000)] {
            assert_eq!(
                keys.verify_at(bad, 2_000),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }
}
