//! The gateway's test setup on testkit: each test gets its own topic prefix on the real broker
//! (started by `infra/up.sh`), its own schema registry (the workspace's `registry/` crate,
//! in-process on port 0) and a gateway spawned on port 0 by [`TestApp::spawn`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use feedline::codec::{AvroDecoder, RegistryClient};
use feedline::{CancellationToken, Settings};
use feedline_gateway::jwt::{Claims, TokenKeys};
use feedline_testkit::{
    Events, PATIENCE, Reader, eventually, kafka_bootstrap, metric, random_prefix, start_registry,
};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinHandle;

/// The signing secret of every test gateway, so tests can mint their own tokens.
pub const JWT_SECRET: &str = "test-only-jwt-secret-of-more-than-32-bytes";
/// A client that may only place and cancel orders, of its tenant's customers.
pub const LIMITED_ID: &str = "limited";
pub const LIMITED_SECRET: &str = "limited-secret";
pub const LIMITED_TENANT: &str = "limited-tenant";

/// A local address where nothing listens.
pub async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// What differs between test gateways.
#[derive(Debug, Clone)]
pub struct Options {
    /// order-view's URL; by default a port where nothing listens.
    pub order_view_url: Option<String>,
    /// The gateway's Kafka (the registry always uses the real broker).
    pub kafka_bootstrap: Option<String>,
    pub ensure_topics: bool,
    pub message_timeout_ms: u32,
    /// More TOML, appended to the gateway's settings.
    pub extra_toml: String,
    /// More keys of the `[gateway]` table itself.
    pub gateway_toml: String,
    /// `gateway.jwt_secret` (key id `default`); `None` leaves it out.
    pub jwt_secret: Option<String>,
    /// `gateway.dev_mode`: on by default, as the tests get their tokens as the demo client.
    pub dev_mode: bool,
    /// The topic prefix and registry URL of services already running, to join them;
    /// by default a fresh prefix and a registry of the gateway's own.
    pub join: Option<(String, String)>,
    /// Starts the real order-view in-process (on the test's topics and registry, an
    /// in-memory read model) and points the gateway at it; `order_view_url` is then unused.
    pub real_order_view: bool,
    /// `gateway.max_wait_secs`: the longest `?wait` a command may ask for.
    pub max_wait_secs: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            order_view_url: None,
            kafka_bootstrap: None,
            ensure_topics: true,
            message_timeout_ms: 10_000,
            extra_toml: String::new(),
            gateway_toml: String::new(),
            jwt_secret: Some(JWT_SECRET.to_owned()),
            dev_mode: true,
            join: None,
            real_order_view: false,
            max_wait_secs: 30,
        }
    }
}

/// A gateway and its registry, stopped when dropped.
pub struct TestApp {
    pub url: String,
    pub http: reqwest::Client,
    pub settings: Settings,
    /// Stops the registry, and the gateway with it.
    registry: CancellationToken,
    /// Stops the gateway only.
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// The real order-view's SQLite file, removed with the app.
    order_view_db: Option<PathBuf>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.registry.cancel();
        if let Some(db) = self.order_view_db.take() {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = db.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A response, read whole: status, headers, text and (when JSON) body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// Asserts an error answer in the gateway's shape: status, JSON content type,
    /// `error.code`, `error.message` and (if given) `error.field`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{self:#?}");
        assert!(
            self.header("content-type").starts_with("application/json"),
            "{self:#?}"
        );
        let error = &self.body["error"];
        assert_eq!(error["code"], code, "{self:#?}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:#?}"
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{self:#?}");
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> TestApp {
        feedline::telemetry::init();
        let registry = CancellationToken::new();
        let (prefix, registry_url) = match options.join.clone() {
            Some(joined) => joined,
            None => {
                let prefix = random_prefix();
                let url = start_registry(&prefix, registry.clone()).await;
                (prefix, url)
            }
        };
        let order_view_db = options
            .real_order_view
            .then(|| std::env::temp_dir().join(format!("{prefix}order-view.db")));
        let mut options = options;
        if let Some(db) = &order_view_db {
            let url = start_order_view(&prefix, &registry_url, db, registry.child_token()).await;
            options.order_view_url = Some(url);
        }
        let settings = Self::settings(options, &prefix, &registry_url).await;
        let mut app = Self::start(settings, registry).await;
        app.order_view_db = order_view_db;
        app
    }

    /// The settings of a test gateway on `prefix` and the registry at `registry_url`.
    async fn settings(options: Options, prefix: &str, registry_url: &str) -> Settings {
        let order_view_url = match options.order_view_url {
            Some(url) => url,
            None => closed_port().await,
        };
        let jwt_secret = options
            .jwt_secret
            .map(|secret| format!("jwt_secret = \"{secret}\""))
            .unwrap_or_default();
        Settings::from_toml(&format!(
            r#"
            service_name = "gateway"
            [kafka]
            bootstrap_servers = "{bootstrap}"
            topic_prefix = "{prefix}"
            default_partitions = 3
            linger_ms = 1
            message_timeout_ms = {timeout}
            [registry]
            url = "{registry_url}"
            [http]
            host = "127.0.0.1"
            port = 0
            [gateway]
            order_view_url = "{order_view_url}"
            {jwt_secret}
            {gateway}
            dev_mode = {dev_mode}
            replica = "test"
            ensure_topics = {ensure}
            max_wait_secs = {max_wait}
            [gateway.clients.{LIMITED_ID}]
            secret_sha256 = "{limited}"
            scopes = ["orders:write"]
            tenant = "{LIMITED_TENANT}"
            {extra}
            "#,
            bootstrap = options.kafka_bootstrap.unwrap_or_else(kafka_bootstrap),
            timeout = options.message_timeout_ms,
            ensure = options.ensure_topics,
            max_wait = options.max_wait_secs,
            limited = feedline_gateway::auth::hash_secret(LIMITED_SECRET),
            extra = options.extra_toml,
            gateway = options.gateway_toml,
            dev_mode = options.dev_mode,
        ))
        .expect("test settings")
    }

    /// A gateway on `settings`, stopped with `registry`.
    async fn start(settings: Settings, registry: CancellationToken) -> TestApp {
        let token = registry.child_token();
        let (addr, handle) = tokio::time::timeout(
            PATIENCE,
            feedline_gateway::spawn(settings.clone(), token.clone()),
        )
        .await
        .expect("gateway started in time")
        .expect("gateway started");
        TestApp {
            url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            settings,
            registry,
            token,
            handle: Some(handle),
            order_view_db: None,
        }
    }

    /// `true` while the gateway's task has not ended (it ends on shutdown, an error or a
    /// panic). Used by the fuzz test, which includes this file.
    #[allow(dead_code)]
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the gateway and checks it stopped cleanly and in time.
    pub async fn stop(mut self) {
        self.stop_gateway().await;
    }

    async fn stop_gateway(&mut self) {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("gateway stopped in time")
            .expect("gateway task joined")
            .expect("gateway stopped cleanly");
    }

    /// Stops this gateway and starts a fresh one on the same settings, topics and registry
    /// (on another port): a restart, or another replica, as a client sees it.
    pub async fn restart(mut self) -> TestApp {
        self.stop_gateway().await;
        // The registry lives on in the new gateway's hands.
        let registry = std::mem::replace(&mut self.registry, CancellationToken::new());
        let mut app = Self::start(self.settings.clone(), registry).await;
        app.order_view_db = self.order_view_db.take();
        app
    }

    /// Stops this gateway and starts one configured by `options` on the same topics and
    /// registry: a redeployment with another configuration.
    pub async fn restart_as(mut self, options: Options) -> TestApp {
        self.stop_gateway().await;
        let registry = std::mem::replace(&mut self.registry, CancellationToken::new());
        let settings = Self::settings(
            options,
            &self.settings.kafka.topic_prefix,
            &self.settings.registry.url,
        )
        .await;
        Self::start(settings, registry).await
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A token of the demo client, for `scope` (all its scopes when `None`).
    pub async fn token(&self, scope: Option<&str>) -> String {
        self.token_for("demo", "demo-secret", scope).await
    }

    pub async fn token_for(&self, id: &str, secret: &str, scope: Option<&str>) -> String {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        let answer = self
            .send(self.http.post(self.at("/auth/token")).form(&form))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        answer.body["access_token"].as_str().unwrap().to_owned()
    }

    /// A one-use feed ticket for `token`.
    pub async fn ticket(&self, token: &str) -> String {
        let answer = self
            .send(self.http.post(self.at("/feed/ticket")).bearer_auth(token))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:#?}");
        assert!(answer.body["expires_in"].as_u64() >= Some(1), "{answer:#?}");
        assert_eq!(answer.header("cache-control"), "no-store");
        answer.body["ticket"].as_str().unwrap().to_owned()
    }

    /// Sends and reads the whole answer; a 5xx other than the ones a test expects fails
    /// there, in the test.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        Answer::read(request.send().await.expect("request sent")).await
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.send(self.http.post(self.at(path)).bearer_auth(token).json(body))
            .await
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.at("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of the series `name` (or `name{label="value",...}`) on `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    /// Waits until metric `name` is `value`.
    pub async fn until_metric(&self, name: &str, value: f64) {
        eventually(&format!("{name} to be {value}"), PATIENCE, async || {
            let now = self.metric(name).await;
            if now == value {
                Ok(())
            } else {
                Err(format!("value {now}"))
            }
        })
        .await;
    }

    /// Reads `count` messages of the (unprefixed) `topic` from the beginning and decodes
    /// them with the registry: `(key, value)` pairs.
    pub async fn read_commands<T: DeserializeOwned>(
        &self,
        topic: &str,
        count: usize,
    ) -> Vec<(String, T)> {
        let full = self.settings.kafka.name(topic);
        let schema = feedline_schemas::envelope_schema(topic).expect("a contract");
        let decoder: AvroDecoder<T, RegistryClient> = AvroDecoder::new(
            Arc::new(RegistryClient::new(&self.settings.registry)),
            schema,
            None,
        )
        .unwrap();
        let mut events = Events::new(Reader::new(&full), decoder);
        events
            .until(&format!("{count} message(s) on {full}"), |e| {
                e.len() >= count
            })
            .await;
        events.events.truncate(count);
        events.events
    }
}

/// The real order-view on `prefix`'s topics and `registry_url`, its read model the fresh
/// SQLite file `db`, running until `token` is cancelled; returns its URL.
async fn start_order_view(
    prefix: &str,
    registry_url: &str,
    db: &Path,
    token: CancellationToken,
) -> String {
    let settings = Settings::from_toml(&format!(
        r#"
        service_name = "order-view"
        [kafka]
        bootstrap_servers = "{bootstrap}"
        topic_prefix = "{prefix}"
        default_partitions = 3
        linger_ms = 1
        [consumer]
        session_timeout_ms = 6000
        drain_timeout_ms = 3000
        [registry]
        url = "{registry_url}"
        [database]
        url = "sqlite:{db}"
        max_connections = 4
        [http]
        host = "127.0.0.1"
        port = 0
        "#,
        bootstrap = kafka_bootstrap(),
        db = db.display(),
    ))
    .expect("order-view settings");
    let (addr, _) = tokio::time::timeout(PATIENCE, feedline_order_view::spawn(settings, token))
        .await
        .expect("order-view started in time")
        .expect("order-view started");
    format!("http://{addr}")
}

/// Signs `claims` with `secret`: how tests forge, tamper with and expire tokens.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    TokenKeys::from_bytes(secret).sign(claims)
}

/// Claims as the gateway issues them, for `scope` and a client of tenant `demo`, expiring
/// in `exp_in` seconds (negative: already expired).
pub fn claims(scope: &str, exp_in: i64) -> Claims {
    let now = feedline_gateway::jwt::now();
    let mut claims =
        TokenKeys::from_bytes(JWT_SECRET.as_bytes()).claims_for("demo", scope.into(), now, 0);
    claims.exp = now + exp_in;
    claims.tenant = Some("demo".into());
    claims
}

/// A read route: with a token it accepts, the request gets past auth to the absent
/// order-view (503); with one it refuses, 401.
pub async fn read_orders(app: &TestApp, token: &str) -> Answer {
    app.send(app.http.get(app.at("/orders")).bearer_auth(token))
        .await
}

/// Past auth, to the absent order-view.
#[track_caller]
pub fn assert_accepted(answer: &Answer) {
    answer.assert_error(503, "upstream_unavailable", None);
}

/// Refused as an invalid token, for a reason naming `message`.
#[track_caller]
pub fn assert_refused(answer: &Answer, message: &str) {
    answer.assert_error(401, "invalid_token", None);
    let text = answer.body["error"]["message"].as_str().unwrap();
    assert!(text.contains(message), "{message:?} in {answer:#?}");
}
