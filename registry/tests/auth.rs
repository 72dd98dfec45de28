//! One file: every case shares the same three users (hashed once per binary) and helpers.
//!
//! The registry authenticates: basic auth, roles, anonymous reads, HTTPS with a private CA,
//! and the clients (feedline's own and a Confluent one) sending credentials.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use feedline::codec::{AvroDecoder, CodecError, RegistryClient, SchemaResolver, write_header};
use feedline::{CancellationToken, Classify, ErrorClass, HandlerError, Outcome, Settings};
use feedline_registry::auth::hash_password;
use feedline_testkit::{PATIENCE, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

const READER: (&str, &str) = ("reader", "read-pw");
const WRITER: (&str, &str) = ("writer", "write-pw");
const ADMIN: (&str, &str) = ("admin", "admin-pw");

/// The users' section; hashed once per test binary (argon2 takes its time on purpose).
fn users() -> &'static str {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS.get_or_init(|| {
        [(READER, "read"), (WRITER, "write"), (ADMIN, "admin")]
            .iter()
            .map(|((user, password), role)| {
                format!(
                    "[registry_server.users.{user}]\npassword_hash = \"{}\"\nrole = \"{role}\"\n",
                    hash_password(password)
                )
            })
            .collect()
    })
}

/// A registry on its own topic with `extra` (TOML) over the test settings.
struct Secured {
    url: String,
    http: reqwest::Client,
    _token: tokio_util::sync::DropGuard,
}

async fn secured(extra: &str) -> Secured {
    secured_with(extra, "http", reqwest::Client::new()).await
}

async fn secured_with(extra: &str, scheme: &str, http: reqwest::Client) -> Secured {
    feedline::telemetry::init();
    let settings = settings(&random_prefix())
        .with_overrides(extra)
        .expect("auth settings");
    let token = CancellationToken::new();
    let running = tokio::time::timeout(
        Duration::from_secs(60),
        feedline_registry::spawn(settings, token.clone()),
    )
    .await
    .expect("registry started in time")
    .expect("registry started");
    Secured {
        url: format!("{scheme}://localhost:{}", running.addr.port()),
        http,
        _token: token.drop_guard(),
    }
}

/// Status, `WWW-Authenticate` and JSON body of one request.
async fn call(
    reg: &Secured,
    method: reqwest::Method,
    path: &str,
    user: Option<(&str, &str)>,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = reg.http.request(method, format!("{}{path}", reg.url));
    if let Some((user, password)) = user {
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, V1_MEDIA_TYPE)
            .body(body.to_string());
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, challenge, body)
}

fn schema_body(name: &str) -> Value {
    json!({ "schema": record(name, &[ID]) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_valid_credentials_get_401_with_a_challenge() {
    let reg = secured(users()).await;
    let get = reqwest::Method::GET;
    for user in [None, Some(("reader", "wrong")), Some(("nobody", "read-pw"))] {
        let (status, challenge, body) = call(&reg, get.clone(), "/subjects", user, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user:?}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Basic realm="feedline-registry""#)
        );
        assert_eq!(body["error_code"], json!(40101), "{body}");
    }
    // A bearer token is not basic credentials.
    let response = reg
        .http
        .get(format!("{}/subjects", reg.url))
        .bearer_auth("token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // An unknown route reveals nothing before authentication.
    let (status, ..) = call(&reg, get.clone(), "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Probes and metrics stay open.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let status = reg
            .http
            .get(format!("{}{path}", reg.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, body) = call(&reg, get, "/subjects", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_registers_configures_and_deletes() {
    use reqwest::Method;
    let reg = secured(users()).await;
    let register = "/subjects/things-value/versions";
    let forbidden = |(status, _, body): (StatusCode, Option<String>, Value), what: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(body["error_code"], json!(40301), "{what}: {body}");
    };
    let ok = |(status, _, body): (StatusCode, Option<String>, Value), what: &str| {
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        body
    };

    // read: every GET, nothing else.
    forbidden(
        call(
            &reg,
            Method::POST,
            register,
            Some(READER),
            Some(schema_body("Thing")),
        )
        .await,
        "read registers",
    );
    forbidden(
        call(
            &reg,
            Method::PUT,
            "/config",
            Some(READER),
            Some(json!({"compatibility": "NONE"})),
        )
        .await,
        "read sets config",
    );

    // write: register, look up, check, configure; no delete, no mode.
    let id = ok(
        call(
            &reg,
            Method::POST,
            register,
            Some(WRITER),
            Some(schema_body("Thing")),
        )
        .await,
        "write registers",
    )["id"]
        .clone();
    let found = ok(
        call(
            &reg,
            Method::POST,
            "/subjects/things-value",
            Some(WRITER),
            Some(schema_body("Thing")),
        )
        .await,
        "write looks up",
    );
    assert_eq!(found["id"], id);
    ok(
        call(
            &reg,
            Method::POST,
            "/compatibility/subjects/things-value/versions/latest",
            Some(WRITER),
            Some(schema_body("Thing")),
        )
        .await,
        "write checks compatibility",
    );
    ok(
        call(
            &reg,
            Method::PUT,
            "/config/things-value",
            Some(WRITER),
            Some(json!({"compatibility": "FULL"})),
        )
        .await,
        "write sets config",
    );
    forbidden(
        call(
            &reg,
            Method::DELETE,
            "/subjects/things-value",
            Some(WRITER),
            None,
        )
        .await,
        "write deletes",
    );
    forbidden(
        call(
            &reg,
            Method::PUT,
            "/mode",
            Some(WRITER),
            Some(json!({"mode": "READONLY"})),
        )
        .await,
        "write sets the mode",
    );

    // read sees what write registered.
    let version = ok(
        call(
            &reg,
            Method::GET,
            "/subjects/things-value/versions/1",
            Some(READER),
            None,
        )
        .await,
        "read gets",
    );
    assert_eq!(version["id"], id);
    forbidden(
        call(
            &reg,
            Method::DELETE,
            "/subjects/things-value",
            Some(READER),
            None,
        )
        .await,
        "read deletes",
    );

    // admin: deletes; setting the mode gets past authorization (this registry has no
    // writable mode, hence 405 rather than 403).
    ok(
        call(
            &reg,
            Method::DELETE,
            "/subjects/things-value",
            Some(ADMIN),
            None,
        )
        .await,
        "admin deletes",
    );
    let (status, _, body) = call(
        &reg,
        Method::PUT,
        "/mode",
        Some(ADMIN),
        Some(json!({"mode": "READONLY"})),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (status, ..) = call(&reg, Method::GET, "/subjects", Some(READER), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_read_serves_gets_only() {
    use reqwest::Method;
    let reg = secured(&format!(
        "{}[registry_server]\nanonymous_read = true\n",
        users()
    ))
    .await;
    let (status, _, body) = call(&reg, Method::GET, "/subjects", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, challenge, body) = call(
        &reg,
        Method::POST,
        "/subjects/a-value/versions",
        None,
        Some(schema_body("A")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(challenge.is_some());
    let (status, ..) = call(&reg, Method::DELETE, "/subjects/a-value", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Wrong credentials are still wrong, even where none would do.
    let (status, ..) = call(&reg, Method::GET, "/subjects", Some(("reader", "x")), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_users_outside_dev_mode() {
    let closed = settings(&random_prefix())
        .with_overrides("[registry_server]\ndev_mode = false\n")
        .unwrap();
    let err = feedline_registry::spawn(closed, CancellationToken::new())
        .await
        .expect_err("no users, no dev mode");
    let text = format!("{err:#}");
    assert!(text.contains("registry_server.users"), "{text}");
    assert!(text.contains("dev_mode"), "{text}");

    let bad = settings(&random_prefix())
        .with_overrides("[registry_server.users.ci]\npassword_hash = \"plain\"\nrole = \"write\"\n")
        .unwrap();
    let err = feedline_registry::spawn(bad, CancellationToken::new())
        .await
        .expect_err("a password where its hash belongs");
    assert!(
        format!("{err:#}").contains("users.ci.password_hash"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_clients_send_basic_auth() {
    use schema_registry_converter::async_impl::schema_registry::{
        SrSettings, get_all_subjects, post_schema,
    };
    use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
    let reg = secured(users()).await;
    let settings = |user: Option<(&str, &str)>| {
        let mut builder = SrSettings::new_builder(reg.url.clone());
        builder.no_proxy();
        if let Some((user, password)) = user {
            builder.set_basic_authorization(user, Some(password));
        }
        builder.build().expect("sr settings")
    };
    let schema = SuppliedSchema::new(None, SchemaType::Avro, record("Paid", &[ID]));
    let registered = post_schema(&settings(Some(WRITER)), "paid-value".into(), schema.clone())
        .await
        .expect("registered with credentials");
    assert!(registered.id > 0);
    assert_eq!(
        get_all_subjects(&settings(Some(READER))).await.unwrap(),
        vec!["paid-value".to_owned()]
    );
    let refused = post_schema(&settings(None), "other-value".into(), schema)
        .await
        .expect_err("no credentials");
    assert!(refused.error.contains("401"), "{refused:?}");
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Thing {
    id: i64,
}

fn message(payload: Vec<u8>) -> rdkafka::message::OwnedMessage {
    rdkafka::message::OwnedMessage::new(
        Some(payload),
        None,
        "things".into(),
        rdkafka::Timestamp::NotAvailable,
        0,
        0,
        None,
    )
}

/// A consumer whose credentials the registry refuses retries the batch (the registry's
/// fault, transient); only a schema id the registry does not know dead-letters a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refused_by_the_registry_retries_instead_of_dead_lettering() {
    let reg = secured(users()).await;
    let client = |user: &str, password: &str| {
        let settings = Settings::from_toml(&format!(
            "[registry]\nurl = \"{}\"\nusername = \"{user}\"\npassword = \"{password}\"\n",
            reg.url
        ))
        .unwrap();
        Arc::new(RegistryClient::new(&settings.registry))
    };
    let schema = record("Thing", &[ID]);
    let id = client(WRITER.0, WRITER.1)
        .register("things-value", &schema)
        .await
        .unwrap();
    let framed = |id: u32| {
        let mut bytes = Vec::new();
        write_header(&mut bytes, id);
        bytes.push(2); // the long 1, zig-zag encoded
        message(bytes)
    };

    for (user, password) in [("reader", "wrong"), ("nobody", "x")] {
        let refused = client(user, password);
        let err = refused.schema(id).await.unwrap_err();
        assert!(
            matches!(err, CodecError::Registry { status: 401, .. }),
            "{err}"
        );
        assert_eq!(err.class(), ErrorClass::Transient);

        let decoder = AvroDecoder::<Thing, _>::new(refused, &schema, None).unwrap();
        let mut outcome = Outcome::ok();
        let result = feedline::codec::decode_batch(&[framed(id)], &mut outcome, &decoder).await;
        assert!(
            matches!(result, Err(HandlerError::Transient(_))),
            "{result:?}"
        );
        assert!(outcome.rejected().is_empty(), "nothing dead-lettered");
    }

    let reader = client(READER.0, READER.1);
    let decoder = AvroDecoder::<Thing, _>::new(reader, &schema, None).unwrap();
    let mut outcome = Outcome::ok();
    let decoded =
        feedline::codec::decode_batch(&[framed(id), framed(id + 1000)], &mut outcome, &decoder)
            .await
            .expect("the unknown id is the message's fault, not the batch's");
    assert_eq!(decoded.len(), 1);
    assert_eq!(outcome.rejected().len(), 1);
    assert_eq!(outcome.rejected()[0].0, 1);
}

/// A CA, and a certificate it signed for localhost, in a fresh directory.
fn private_ca() -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("feedline-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "feedline test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca() {
    let (ca, cert, key) = private_ca();
    let extra = format!(
        "{}[registry_server]\ncert_location = \"{}\"\nkey_location = \"{}\"\n",
        users(),
        cert.display(),
        key.display()
    );
    let reg = secured_with(&extra, "https", reqwest::Client::new()).await;
    let client = |ca_location: Option<&PathBuf>| {
        let ca = ca_location
            .map(|p| format!("ca_location = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let settings = Settings::from_toml(&format!(
            "[registry]\nurl = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n{ca}",
            reg.url, WRITER.0, WRITER.1
        ))
        .unwrap();
        RegistryClient::new(&settings.registry)
    };

    let trusted = client(Some(&ca));
    let id = trusted
        .register("tls-value", &record("Tls", &[ID]))
        .await
        .expect("registered over https with the CA");
    assert!(trusted.schema(id).await.unwrap().contains("Tls"));
    assert_eq!(trusted.subjects().await.unwrap(), vec!["tls-value"]);

    // Without the CA the certificate is not trusted, whatever the credentials.
    let err = client(None).subjects().await.unwrap_err();
    assert!(
        matches!(err, CodecError::RegistryUnavailable { .. }),
        "{err}"
    );
    // Plain HTTP to the HTTPS port gets nowhere either.
    let plain = reg
        .url
        .replacen("https://", "http://", 1)
        .parse::<reqwest::Url>()
        .unwrap();
    let answered = reqwest::Client::new()
        .get(plain.join("/subjects").unwrap())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(answered.is_err(), "{answered:?}");
}

#[test]
fn hash_password_prints_an_argon2id_hash_of_standard_input() {
    use argon2::{Argon2, PasswordHash, PasswordVerifier};
    use std::io::Write;
    use std::process::{Command, Stdio};
    let run = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_feedline-registry"))
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run("s3cret\n");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let hash = PasswordHash::new(printed.trim()).unwrap();
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    // The line break that ends the typed line is not part of the password.
    assert!(Argon2::default().verify_password(b"s3cret", &hash).is_ok());
    assert!(!printed.contains("s3cret"));

    let empty = run("");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no password"));
}

/// A service's handler, decoding with the registry client it was given; its credentials can
/// be fixed while it runs, as an operator would fix a service's config.
#[derive(Clone)]
struct Decoding {
    refused: Arc<AvroDecoder<Thing, RegistryClient>>,
    allowed: Arc<AvroDecoder<Thing, RegistryClient>>,
    fixed: Arc<std::sync::atomic::AtomicBool>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    decoded: Arc<std::sync::Mutex<Vec<i64>>>,
}

impl feedline::Handler for Decoding {
    async fn handle(
        &self,
        batch: &[rdkafka::message::OwnedMessage],
    ) -> Result<Outcome, HandlerError> {
        use std::sync::atomic::Ordering;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let decoder = if self.fixed.load(Ordering::SeqCst) {
            &self.allowed
        } else {
            &self.refused
        };
        let mut outcome = Outcome::ok();
        let values = feedline::codec::decode_batch(batch, &mut outcome, &**decoder).await?;
        let mut decoded = self.decoded.lock().unwrap();
        decoded.extend(values.into_iter().map(|(_, thing)| thing.id));
        Ok(outcome)
    }
}

/// The consumer runtime, end to end: a registry refusing the service's credentials holds
/// the message back (retried, the consumer reported waiting) instead of dead-lettering it,
/// and it is processed once the credentials are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refused_by_the_registry_waits_and_then_processes_the_message() {
    use std::sync::atomic::Ordering;
    let reg = secured(users()).await;
    let prefix = random_prefix();
    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\nlinger_ms = 1\n\
         [consumer]\nsession_timeout_ms = 6000\ndrain_timeout_ms = 3000\nretry_backoff_ms = 50\nretry_backoff_max_ms = 200\n\
         [registry]\nurl = \"{}\"\nusername = \"reader\"\npassword = \"wrong\"\n",
        kafka_bootstrap(),
        reg.url
    ))
    .unwrap();
    let right = settings
        .with_overrides("[registry]\npassword = \"read-pw\"\n")
        .unwrap();
    let schema = record("Thing", &[ID]);
    let writer = settings
        .with_overrides("[registry]\nusername = \"writer\"\npassword = \"write-pw\"\n")
        .unwrap();
    let id = RegistryClient::new(&writer.registry)
        .register("things-value", &schema)
        .await
        .unwrap();

    let topic = settings.kafka.name("things");
    feedline::admin::Admin::new(&settings.kafka)
        .unwrap()
        .ensure_topics(&[feedline::admin::TopicSpec::new(&topic, 1)])
        .await
        .unwrap();
    let metrics = feedline::Metrics::new("auth-test");
    let producer = feedline::Producer::new(&settings.kafka, metrics.clone()).unwrap();
    let mut payload = Vec::new();
    write_header(&mut payload, id);
    payload.push(84); // the long 42, zig-zag encoded
    producer
        .send(feedline::Outgoing::new(
            &topic,
            Some(b"k".as_slice()),
            &payload,
        ))
        .await
        .unwrap();

    let decoder = |s: &Settings| {
        let client = Arc::new(RegistryClient::new(&s.registry));
        Arc::new(AvroDecoder::new(client, &schema, None).unwrap())
    };
    let handler = Decoding {
        refused: decoder(&settings),
        allowed: decoder(&right),
        fixed: Arc::default(),
        attempts: Arc::default(),
        decoded: Arc::default(),
    };
    let consumer = feedline::Consumer::new(
        &settings.kafka,
        &settings.consumer,
        &settings.kafka.name("g"),
        std::slice::from_ref(&topic),
        handler.clone(),
        producer,
        metrics,
    )
    .unwrap();
    let progress = consumer.progress();
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer.run(token.clone()));

    eventually(
        "the refused batch is retried and reported",
        PATIENCE,
        async || {
            (handler.attempts.load(Ordering::SeqCst) >= 3
                && progress
                    .ready()
                    .is_err_and(|e| e.contains("waiting for a dependency")))
            .then_some(())
        },
    )
    .await;
    assert!(handler.decoded.lock().unwrap().is_empty());

    handler.fixed.store(true, Ordering::SeqCst);
    eventually(
        "the message once the credentials are right",
        PATIENCE,
        async || (!handler.decoded.lock().unwrap().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(*handler.decoded.lock().unwrap(), vec![42]);
    token.cancel();
    task.await.unwrap().unwrap();
}
