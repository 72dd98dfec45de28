//! JSON Web Tokens (RFC 7519): the gateway's own HS256 tokens, written out rather than taken
//! from a JWT crate, and the claim checks every token passes, whoever issued it.
//!
//! The gateway issues and verifies its tokens with shared secrets, by key id (`kid`), so
//! that a new key can sign while the old one still verifies. HS256 with RustCrypto's `hmac`
//! and `sha2` is some 100 lines and accepts nothing but `"alg": "HS256"` here: RS256 and
//! ES256 belong to the external issuer ([`crate::jwks`]), so the algorithm picks the key
//! family and no public key can be misused as an HMAC secret.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::config::DEFAULT_KEY_ID;

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused before any decoding work.
const MAX_TOKEN_LEN: usize = 8192;

/// What a token says. Optional claims default, so tokens of other issuers (which carry
/// what they like) and claims added later still parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued the token.
    #[serde(default)]
    pub iss: String,
    /// The client (or, from an external issuer, the subject) the token was issued to.
    pub sub: String,
    /// Who the token is for: one of these must be the audience the verifier expects.
    #[serde(
        default,
        deserialize_with = "one_or_many",
        serialize_with = "one_or_list"
    )]
    pub aud: Vec<String>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: i64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
    /// Granted scopes, space-separated (RFC 8693 `scope`).
    #[serde(default)]
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

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn one_or_list<S: Serializer>(aud: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => serializer.serialize_str(one),
        many => many.serialize(serializer),
    }
}

/// Why a token was refused; the label of the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT signed with HS256, RS256 or ES256")]
    Malformed,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token is signed with a key this gateway does not know")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from an issuer this gateway does not trust")]
    WrongIssuer,
    #[error("the token is not meant for this API")]
    WrongAudience,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
        }
    }
}

/// The JOSE header fields looked at.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A compact JWS split and its header decoded; nothing verified yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub header: Header,
    /// `header.payload`, what the signature covers.
    pub signing_input: &'a str,
    payload: &'a str,
    pub signature: Vec<u8>,
}

impl<'a> Parsed<'a> {
    pub fn new(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        Ok(Parsed {
            header,
            signing_input: &token[..token.len() - signature.len() - 1],
            payload,
            signature: decode(signature)?,
        })
    }

    /// The claims: to be called only once the signature is verified.
    pub fn claims(&self) -> Result<Claims, TokenError> {
        serde_json::from_slice(&decode(self.payload)?).map_err(|_| TokenError::Malformed)
    }
}

fn decode(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

/// What a verified token's claims must say: the issuer, the audience, and a validity window
/// containing now, give or take the leeway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: i64,
}

impl Expected {
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(), TokenError> {
        if now >= claims.exp.saturating_add(self.leeway_secs) {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| now < nbf.saturating_sub(self.leeway_secs))
        {
            return Err(TokenError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::WrongAudience);
        }
        Ok(())
    }
}

/// The gateway's HS256 keys by key id, prepared once (HMAC's inner and outer pads) and
/// cloned per token, with the one that signs.
#[derive(Clone)]
pub struct TokenKeys {
    by_kid: HashMap<String, HmacSha256>,
    signing_kid: String,
    /// The header of signed tokens, encoded once.
    signing_header: String,
    pub expected: Expected,
}

// By hand: the prepared MAC states are derived from the secrets.
impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("signing_kid", &self.signing_kid)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// `keys` by key id; `signing_kid` must be one of them.
    pub fn new<'a>(
        keys: impl IntoIterator<Item = (&'a String, &'a SecretString)>,
        signing_kid: &str,
        expected: Expected,
    ) -> Self {
        let by_kid = keys
            .into_iter()
            .map(|(kid, secret)| (kid.clone(), mac(secret.expose_secret().as_bytes())))
            .collect();
        Self::with_macs(by_kid, signing_kid, expected)
    }

    /// One key, [`DEFAULT_KEY_ID`], with the default issuer and audience: for tests and
    /// tools that mint tokens for a gateway configured with `jwt_secret`.
    pub fn from_bytes(secret: &[u8]) -> Self {
        let by_kid = HashMap::from([(DEFAULT_KEY_ID.to_owned(), mac(secret))]);
        Self::with_macs(by_kid, DEFAULT_KEY_ID, Expected::default())
    }

    fn with_macs(
        by_kid: HashMap<String, HmacSha256>,
        signing_kid: &str,
        expected: Expected,
    ) -> Self {
        assert!(
            by_kid.contains_key(signing_kid),
            "the config validation checks the signing key exists"
        );
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": signing_kid});
        TokenKeys {
            by_kid,
            signing_kid: signing_kid.to_owned(),
            signing_header: URL_SAFE_NO_PAD.encode(header.to_string()),
            expected,
        }
    }

    /// The claims of a new token for `sub`, valid from `now` for `ttl_secs`.
    pub fn claims_for(&self, sub: &str, scope: String, now: i64, ttl_secs: u64) -> Claims {
        Claims {
            iss: self.expected.issuer.clone(),
            sub: sub.to_owned(),
            aud: vec![self.expected.audience.clone()],
            iat: now,
            nbf: Some(now),
            exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            scope,
            jti: uuid::Uuid::new_v4().to_string(),
            tenant: None,
        }
    }

    /// Signs `claims` into a compact JWT with the signing key, its id in the header.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialize");
        let mut token = String::with_capacity(320);
        token.push_str(&self.signing_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let mut mac = self.by_kid[&self.signing_kid].clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Checks the signature (in constant time) with the key the header names (a token
    /// without a `kid` predates them: [`DEFAULT_KEY_ID`]) before looking at the claims,
    /// then the claims against `now` (seconds since the epoch).
    pub fn verify_parsed(&self, token: &Parsed<'_>, now: i64) -> Result<Claims, TokenError> {
        if token.header.alg != "HS256" {
            return Err(TokenError::Malformed);
        }
        let kid = token.header.kid.as_deref().unwrap_or(DEFAULT_KEY_ID);
        let mut mac = self.by_kid.get(kid).ok_or(TokenError::UnknownKey)?.clone();
        mac.update(token.signing_input.as_bytes());
        mac.verify_slice(&token.signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = token.claims()?;
        self.expected.check(&claims, now)?;
        Ok(claims)
    }

    pub fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        self.verify_parsed(&Parsed::new(token)?, now)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, now())
    }
}

impl Default for Expected {
    /// The defaults of [`crate::DEFAULTS`] (a config test holds the two together).
    fn default() -> Self {
        Expected {
            issuer: "feedline-gateway".to_owned(),
            audience: "feedline-api".to_owned(),
            leeway_secs: 30,
        }
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
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

    const LEEWAY: i64 = 30;

    fn claims(exp: i64) -> Claims {
        Claims {
            iss: "feedline-gateway".into(),
            sub: "demo".into(),
            aud: vec!["feedline-api".into()],
            iat: 1_000,
            nbf: Some(1_000),
            exp,
            scope: "orders:write feed:read".into(),
            jti: "j".into(),
            tenant: Some("acme".into()),
        }
    }

    fn keys(pairs: &[(&str, &str)], signing: &str) -> TokenKeys {
        let pairs: Vec<(String, SecretString)> = pairs
            .iter()
            .map(|(kid, secret)| ((*kid).to_owned(), SecretString::from(*secret)))
            .collect();
        TokenKeys::new(
            pairs.iter().map(|(k, s)| (k, s)),
            signing,
            Expected::default(),
        )
    }

    #[test]
    fn signed_header_names_the_key() {
        let token = keys(&[("k1", "0123456789abcdef0123456789abcdef")], "k1").sign(&claims(5));
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"})
        );
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
    fn audience_is_a_string_or_a_list() {
        let one: Claims =
            serde_json::from_str(r#"{"sub":"a","exp":1,"aud":"feedline-api"}"#).unwrap();
        assert_eq!(one.aud, ["feedline-api"]);
        let many: Claims =
            serde_json::from_str(r#"{"sub":"a","exp":1,"aud":["x","feedline-api"]}"#).unwrap();
        assert_eq!(many.aud, ["x", "feedline-api"]);
        assert_eq!(serde_json::to_value(&one).unwrap()["aud"], "feedline-api");
        let expected = Expected::default();
        let mut claims = claims(5_000);
        claims.aud = many.aud;
        assert_eq!(expected.check(&claims, 2_000), Ok(()));
    }

    #[test]
    fn claims_are_checked_with_leeway() {
        let expected = Expected::default();
        let good = claims(5_000);
        assert_eq!(expected.check(&good, 5_000 + LEEWAY - 1), Ok(()));
        assert_eq!(
            expected.check(&good, 5_000 + LEEWAY),
            Err(TokenError::Expired)
        );
        assert_eq!(expected.check(&good, 1_000 - LEEWAY), Ok(()));
        assert_eq!(
            expected.check(&good, 1_000 - LEEWAY - 1),
            Err(TokenError::NotYetValid)
        );
        let mut wrong = claims(5_000);
        wrong.iss = "someone-else".into();
        assert_eq!(expected.check(&wrong, 2_000), Err(TokenError::WrongIssuer));
        let mut wrong = claims(5_000);
        wrong.aud = vec!["another-api".into()];
        assert_eq!(
            expected.check(&wrong, 2_000),
            Err(TokenError::WrongAudience)
        );
        wrong.aud = vec![];
        assert_eq!(
            expected.check(&wrong, 2_000),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn several_keys_verify_and_unknown_ids_do_not() {
        let old = "old key, thirty-two bytes or more";
        let new = "new key, thirty-two bytes or more";
        let before = keys(&[("old", old)], "old");
        let during = keys(&[("old", old), ("new", new)], "new");
        let after = keys(&[("new", new)], "new");
        let old_token = before.sign(&claims(5_000));
        let new_token = during.sign(&claims(5_000));
        assert!(during.verify_at(&old_token, 2_000).is_ok());
        assert!(after.verify_at(&new_token, 2_000).is_ok());
        assert_eq!(
            after.verify_at(&old_token, 2_000),
            Err(TokenError::UnknownKey)
        );
        // A known kid with another key's signature is a forgery, not an unknown key.
        let forged = keys(&[("new", old)], "new").sign(&claims(5_000));
        assert_eq!(
            after.verify_at(&forged, 2_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn verifies_the_rfc_7515_example() {
        // RFC 7515, appendix A.1: an HS256 JWS with its key, and no `kid`. Its payload has
        // no `sub`, so the signature must pass and the claims then fail as malformed.
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
            keys.verify_at(&token, 5_000 + LEEWAY),
            Err(TokenError::Expired)
        );
        assert!(keys.verify_at(&token, 5_000 + LEEWAY - 1).is_ok());

        for alg in ["none", "RS256", "HS512"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"default"}}"#));
            let odd = format!("{header}.{payload}.{signature}");
            assert_eq!(keys.verify_at(&odd, 2_000), Err(TokenError::Malformed));
        }
        for bad in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(9000)] {
            assert_eq!(
                keys.verify_at(bad, 2_000),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }
}
