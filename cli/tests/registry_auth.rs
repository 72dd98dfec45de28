//! The CLI against a registry that authenticates: credentials from flags or the
//! environment, a CA for HTTPS, and one line saying what to fix when the registry refuses.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use feedline::codec::{RegistryClient, SchemaResolver};
use feedline::{CancellationToken, Settings};
use feedline_registry::auth::hash_password;

const CONTRACTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro");

struct Registry {
    prefix: String,
    url: String,
    _token: tokio_util::sync::DropGuard,
}

/// A registry with a `reader` (password `read-pw`) and a `writer` (`write-pw`), on HTTPS
/// when `tls` names a certificate and key.
async fn start(tls: Option<(&PathBuf, &PathBuf)>) -> Registry {
    let prefix = format!("auth{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bootstrap =
        std::env::var("FEEDLINE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mut toml = format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic_prefix = \"{prefix}\"\n[http]\nport = 0\n\
         [registry_server.users.reader]\npassword_hash = \"{}\"\nrole = \"read\"\n\
         [registry_server.users.writer]\npassword_hash = \"{}\"\nrole = \"write\"\n",
        hash_password("read-pw"),
        hash_password("write-pw"),
    );
    if let Some((cert, key)) = tls {
        toml.push_str(&format!(
            "[registry_server]\ncert_location = \"{}\"\nkey_location = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    let token = CancellationToken::new();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        feedline_registry::spawn(Settings::from_toml(&toml).unwrap(), token.clone()),
    )
    .await
    .expect("registry started in time")
    .expect("registry started");
    let scheme = if tls.is_some() { "https" } else { "http" };
    Registry {
        prefix,
        url: format!("{scheme}://localhost:{}", running.addr.port()),
        _token: token.drop_guard(),
    }
}

impl Registry {
    /// Runs `feedline` with `args` and `env`, none of the caller's registry variables.
    fn feedline(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_feedline"))
            .args(args)
            .args(["--registry-url", &self.url])
            .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &self.prefix)
            .env_remove("FEEDLINE_REGISTRY_USER")
            .env_remove("FEEDLINE_REGISTRY_PASSWORD")
            .env_remove("FEEDLINE_REGISTRY__USERNAME")
            .env_remove("FEEDLINE_REGISTRY__PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn register_one(&self, ca: Option<&PathBuf>) {
        let ca = ca
            .map(|p| format!("ca_location = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let settings = Settings::from_toml(&format!(
            "[registry]\nurl = \"{}\"\nusername = \"writer\"\npassword = \"write-pw\"\n{ca}",
            self.url
        ))
        .unwrap();
        RegistryClient::new(&settings.registry)
            .register(
                "probe-value",
                r#"{"type":"record","name":"Probe","fields":[{"name":"id","type":"long"}]}"#,
            )
            .await
            .unwrap();
    }
}

/// One `error:` line on stderr, and nothing else.
#[track_caller]
fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_flags_or_environment_and_a_clear_error_without() {
    let reg = start(None).await;
    reg.register_one(None).await;

    let (code, out, err) = reg.feedline(
        &["schema", "list", "--registry-user", "reader:read-pw"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("probe-value"), "{out}");

    let (code, out, err) = reg.feedline(
        &["schema", "list", "--registry-user", "reader"],
        &[("FEEDLINE_REGISTRY_PASSWORD", "read-pw")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("probe-value"), "{out}");

    let (code, _, err) = reg.feedline(
        &["schema", "list"],
        &[
            ("FEEDLINE_REGISTRY_USER", "reader"),
            ("FEEDLINE_REGISTRY_PASSWORD", "read-pw"),
        ],
    );
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = reg.feedline(&["schema", "list"], &[]);
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(line.contains("needs credentials"), "{line}");
    assert!(line.contains("--registry-user"), "{line}");

    let (code, _, err) = reg.feedline(&["schema", "list", "--registry-user", "reader:nope"], &[]);
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(
        line.contains("rejected the password of user 'reader'"),
        "{line}"
    );
    assert!(!line.contains("nope"), "{line}");

    let (code, _, err) = reg.feedline(
        &[
            "schema",
            "register",
            "--dir",
            CONTRACTS,
            "--registry-user",
            "reader:read-pw",
        ],
        &[],
    );
    assert_eq!(code, 1);
    let line = one_error_line(&err);
    assert!(
        line.contains("user 'reader'") && line.contains("write role"),
        "{line}"
    );

    let (code, out, err) = reg.feedline(
        &[
            "schema",
            "register",
            "--dir",
            CONTRACTS,
            "--registry-user",
            "writer:write-pw",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("id "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ca_lets_the_cli_reach_an_https_registry() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!(
        "feedline-cli-tls-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let reg = start(Some((&cert_path, &key_path))).await;
    reg.register_one(Some(&ca_path)).await;
    let ca = ca_path.display().to_string();
    let (code, out, err) = reg.feedline(
        &[
            "schema",
            "list",
            "--registry-user",
            "reader:read-pw",
            "--registry-ca",
            &ca,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("probe-value"), "{out}");

    let (code, _, err) = reg.feedline(
        &["schema", "list", "--registry-user", "reader:read-pw"],
        &[],
    );
    assert_eq!(code, 1, "an untrusted certificate must fail: {err}");
    one_error_line(&err);
}
