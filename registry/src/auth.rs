//! HTTP basic authentication and roles, as Confluent's and Karapace's registries do it: the
//! same header, the same 401 challenge, the same error codes (40101, 40301), so their
//! clients' credential settings work unchanged.
//!
//! Passwords are checked against argon2id hashes. Argon2 is slow on purpose, far too slow to
//! run on every request, so a successful check is remembered for a short while under a
//! salted digest of the credentials (never the password itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{Role, ServerSettings};
use crate::error::ApiError;

/// The challenge sent with every 401.
pub const CHALLENGE: &str = r#"Basic realm="feedline-registry""#;

/// How long a verified password is taken as good without running argon2 again. Short, so a
/// password changed in the config (and the registry restarted elsewhere) does not linger.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Verified credentials remembered at most; past this the expired ones are dropped, then all.
const CACHE_MAX: usize = 10_000;

/// A registry user, as the authenticator holds it.
struct User {
    hash: SecretString,
    role: Role,
}

/// Checks credentials against the configured users.
pub struct Authenticator {
    users: HashMap<String, User>,
    anonymous_read: bool,
    /// Checked for unknown users, so they cost as much time as a wrong password.
    decoy: SecretString,
    /// Mixed into the cache keys, so the cache holds nothing a password can be guessed from
    /// without this process's memory.
    salt: [u8; 32],
    verified: Mutex<HashMap<[u8; 32], (Role, Instant)>>,
    /// Argon2 takes tens of megabytes per check: bounds how many run at once, so a flood of
    /// wrong passwords cannot take the machine's memory.
    hashing: Semaphore,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .field("anonymous_read", &self.anonymous_read)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `settings` must have been validated (every hash a PHC string).
    pub fn new(settings: &ServerSettings) -> Self {
        let users = settings
            .users
            .iter()
            .map(|(name, user)| {
                let user = User {
                    hash: user.password_hash.clone(),
                    role: user.role,
                };
                (name.clone(), user)
            })
            .collect();
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            users,
            anonymous_read: settings.anonymous_read,
            decoy: hash_password(&random_text()).into(),
            salt: rand::random(),
            verified: Mutex::new(HashMap::new()),
            hashing: Semaphore::new(parallel),
        }
    }

    /// The role of `user` if `password` is theirs.
    pub async fn verify(self: &Arc<Self>, user: &str, password: &SecretString) -> Option<Role> {
        let key = self.cache_key(user, password);
        if let Some(role) = self.cached(&key) {
            return Some(role);
        }
        let _permit = self.hashing.acquire().await.ok()?;
        let this = Arc::clone(self);
        let (user, password) = (user.to_owned(), password.clone());
        let role = tokio::task::spawn_blocking(move || this.verify_slowly(&user, &password))
            .await
            .ok()??;
        self.remember(key, role);
        Some(role)
    }

    fn verify_slowly(&self, user: &str, password: &SecretString) -> Option<Role> {
        let (hash, role) = match self.users.get(user) {
            Some(known) => (&known.hash, Some(known.role)),
            None => (&self.decoy, None),
        };
        let hash = PasswordHash::new(hash.expose_secret()).ok()?;
        Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &hash)
            .ok()
            .and(role)
    }

    fn cache_key(&self, user: &str, password: &SecretString) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(self.salt);
        digest.update(user.as_bytes());
        // A user name never holds a NUL, so "ab"+"c" and "a"+"bc" differ.
        digest.update([0]);
        digest.update(password.expose_secret().as_bytes());
        digest.finalize().into()
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Role> {
        let verified = self.verified.lock().expect("auth cache poisoned");
        verified
            .get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(role, _)| *role)
    }

    fn remember(&self, key: [u8; 32], role: Role) {
        let mut verified = self.verified.lock().expect("auth cache poisoned");
        if verified.len() >= CACHE_MAX {
            verified.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if verified.len() >= CACHE_MAX {
                verified.clear();
            }
        }
        verified.insert(key, (role, Instant::now()));
    }
}

/// The role a request needs; `None` for the probes and metrics, which stay open so
/// orchestrators and Prometheus need no credentials.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if path == "/health" || path.starts_with("/health/") || path == "/metrics" {
        return None;
    }
    let role = match *method {
        Method::GET | Method::HEAD => Role::Read,
        Method::DELETE => Role::Admin,
        Method::PUT if path == "/mode" || path.starts_with("/mode/") => Role::Admin,
        // Registrations, look-ups, compatibility checks, config changes, and any other
        // method (which then gets its 405 only once authenticated).
        _ => Role::Write,
    };
    Some(role)
}

/// The middleware: lets a request through only with credentials whose role suffices.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(needed) = required_role(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let user = match basic_credentials(request.headers()) {
        Credentials::None if auth.anonymous_read && needed == Role::Read => {
            return next.run(request).await;
        }
        Credentials::None | Credentials::Malformed => return unauthorized(),
        Credentials::Basic { user, password } => match auth.verify(&user, &password).await {
            Some(role) if role >= needed => return next.run(request).await,
            Some(_) => user,
            None => {
                tracing::debug!(%user, "registry credentials rejected");
                return unauthorized();
            }
        },
    };
    tracing::debug!(%user, needed = needed.as_str(), "registry request denied");
    ApiError::forbidden(&user, needed.as_str()).into_response()
}

fn unauthorized() -> Response {
    let mut response = ApiError::unauthorized().into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}

enum Credentials {
    None,
    Malformed,
    Basic {
        user: String,
        password: SecretString,
    },
}

fn basic_credentials(headers: &HeaderMap) -> Credentials {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Credentials::None;
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| STANDARD.decode(encoded.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (user, password) = text.split_once(':')?;
            Some((user.to_owned(), SecretString::from(password.to_owned())))
        });
    match parsed {
        Some((user, password)) => Credentials::Basic { user, password },
        None => Credentials::Malformed,
    }
}

/// An argon2id PHC string for `password`, with argon2's default (OWASP-recommended) costs.
pub fn hash_password(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

fn random_text() -> String {
    let bytes: [u8; 24] = rand::random();
    STANDARD.encode(bytes)
}

/// `feedline-registry hash-password`: reads a password from standard input (one line, or
/// everything piped in, without the final line break) and prints its PHC hash.
pub fn hash_password_from_stdin() -> anyhow::Result<()> {
    use std::io::Read;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| anyhow::anyhow!("failed to read the password from standard input: {e}"))?;
    let password = input
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&input);
    anyhow::ensure!(
        !password.is_empty(),
        "no password on standard input (try: echo -n 'secret' | feedline-registry hash-password)"
    );
    println!("{}", hash_password(password));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_method_and_path() {
        assert_eq!(required_role(&Method::GET, "/metrics"), None);
        assert_eq!(required_role(&Method::GET, "/health/ready"), None);
        assert_eq!(required_role(&Method::GET, "/subjects"), Some(Role::Read));
        assert_eq!(
            required_role(&Method::POST, "/subjects/a/versions"),
            Some(Role::Write)
        );
        assert_eq!(required_role(&Method::PUT, "/config"), Some(Role::Write));
        assert_eq!(required_role(&Method::PUT, "/mode"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::DELETE, "/subjects/a"),
            Some(Role::Admin)
        );
    }

    #[tokio::test]
    async fn successes_are_cached_and_failures_are_not() {
        let settings: ServerSettings = feedline::Settings::from_toml(&format!(
            "[registry_server.users.ci]\npassword_hash = \"{}\"\nrole = \"write\"",
            hash_password("right")
        ))
        .unwrap()
        .section(crate::config::SECTION)
        .unwrap();
        let auth = Arc::new(Authenticator::new(&settings));
        let cached = || auth.verified.lock().unwrap().len();
        assert_eq!(auth.verify("ci", &"wrong".into()).await, None);
        assert_eq!(auth.verify("nobody", &"right".into()).await, None);
        assert_eq!(cached(), 0);
        assert_eq!(auth.verify("ci", &"right".into()).await, Some(Role::Write));
        assert_eq!(cached(), 1);
        let key = auth.cache_key("ci", &"right".into());
        assert_eq!(auth.cached(&key), Some(Role::Write));
        assert_eq!(auth.verify("ci", &"right".into()).await, Some(Role::Write));
        assert_eq!(cached(), 1);
    }

    #[test]
    fn malformed_headers_are_told_apart_from_none() {
        let mut headers = HeaderMap::new();
        assert!(matches!(basic_credentials(&headers), Credentials::None));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert!(matches!(
            basic_credentials(&headers),
            Credentials::Malformed
        ));
        let encoded = format!("Basic {}", STANDARD.encode("ci:pa:ss"));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&encoded).unwrap());
        match basic_credentials(&headers) {
            Credentials::Basic { user, password } => {
                assert_eq!(user, "ci");
                assert_eq!(password.expose_secret(), "pa:ss");
            }
            _ => panic!("basic credentials expected"),
        }
    }
}
