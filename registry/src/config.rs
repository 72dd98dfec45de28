//! The registry's own section, `[registry_server]`: who may do what, and HTTPS.
//!
//! Safe by default: with no users configured the registry refuses to start, unless
//! `dev_mode` says an open registry is wanted.

use std::collections::BTreeMap;
use std::path::PathBuf;

use argon2::PasswordHash;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The section's name in the config file (`FEEDLINE_REGISTRY_SERVER__*` in the environment).
pub const SECTION: &str = "registry_server";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// GETs without credentials are served (writes still need a user).
    #[serde(default)]
    pub anonymous_read: bool,
    /// Allows starting with no users, that is an open registry: for development only.
    #[serde(default)]
    pub dev_mode: bool,
    /// PEM certificate chain and private key: both set, the registry serves HTTPS only.
    #[serde(default)]
    pub cert_location: Option<PathBuf>,
    #[serde(default)]
    pub key_location: Option<PathBuf>,
    /// Users by name: `[registry_server.users.ci] password_hash = "$argon2id$...", role = "write"`.
    #[serde(default)]
    pub users: BTreeMap<String, UserSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    /// An argon2id PHC string, as `feedline-registry hash-password` prints it. Not the
    /// password, but secret all the same: it allows guessing the password offline.
    pub password_hash: SecretString,
    pub role: Role,
}

/// What a user may do; each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every GET.
    Read,
    /// Read, and register, look up, check compatibility, set compatibility levels.
    Write,
    /// Write, and every delete, and setting the mode.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error(
        "registry_server.users is empty: configure at least one user (password_hash from `feedline-registry hash-password`, role read, write or admin), or set registry_server.dev_mode = true for an open development registry"
    )]
    NoUsers,
    #[error("registry_server.users.{user}.password_hash: not a PHC string ({reason})")]
    BadHash { user: String, reason: String },
    #[error("registry_server.cert_location and registry_server.key_location must be set together")]
    HalfTls,
}

/// Where the registry serves HTTPS from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerSettings {
    /// Checks the section; `Ok(false)` means the registry runs open (dev mode, no users).
    pub fn validate(&self) -> Result<bool, ServerConfigError> {
        for (user, settings) in &self.users {
            let bad = |reason: String| ServerConfigError::BadHash {
                user: user.clone(),
                reason,
            };
            let hash = PasswordHash::new(settings.password_hash.expose_secret())
                .map_err(|e| bad(e.to_string()))?;
            if hash.algorithm.as_str() != "argon2id" {
                return Err(bad(format!(
                    "{} is not argon2id; use `feedline-registry hash-password`",
                    hash.algorithm
                )));
            }
        }
        self.tls()?;
        match (self.users.is_empty(), self.dev_mode) {
            (false, _) => Ok(true),
            (true, true) => Ok(false),
            (true, false) => Err(ServerConfigError::NoUsers),
        }
    }

    pub fn tls(&self) -> Result<Option<TlsFiles>, ServerConfigError> {
        match (&self.cert_location, &self.key_location) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => Err(ServerConfigError::HalfTls),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> ServerSettings {
        let settings = feedline::Settings::from_toml(toml).unwrap();
        settings.section(SECTION).unwrap()
    }

    #[test]
    fn no_users_is_refused_outside_dev_mode() {
        let err = parse("").validate().unwrap_err();
        assert!(err.to_string().contains("dev_mode"), "{err}");
        let open = parse("[registry_server]\ndev_mode = true")
            .validate()
            .unwrap();
        assert!(!open);
    }

    #[test]
    fn a_bad_hash_names_its_user() {
        let err =
            parse("[registry_server.users.ci]\npassword_hash = \"hunter2\"\nrole = \"write\"")
                .validate()
                .unwrap_err();
        assert!(err.to_string().contains("users.ci.password_hash"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn roles_are_ordered_and_hashes_not_printed() {
        let hash = crate::auth::hash_password("pw");
        let settings = parse(&format!(
            "[registry_server.users.ops]\npassword_hash = \"{hash}\"\nrole = \"admin\""
        ));
        assert!(settings.validate().unwrap());
        assert_eq!(settings.users["ops"].role, Role::Admin);
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        assert!(!format!("{settings:?}").contains(&hash));
    }

    #[test]
    fn cert_and_key_go_together() {
        let err = parse("[registry_server]\ndev_mode = true\ncert_location = \"c.pem\"")
            .validate()
            .unwrap_err();
        assert!(matches!(err, ServerConfigError::HalfTls));
    }
}
