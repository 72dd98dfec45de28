//! The registry's test setup on testkit's core (its `registry` feature would build this crate
//! a second time): each test gets its own topic prefix (so its own `_schemas` topic) on the
//! real broker started by `infra/kafka.sh start`, and registries spawned in-process on port 0.
#![allow(dead_code)]

use std::time::Duration;

use feedline::{CancellationToken, Settings};
use feedline_registry::Running;
// Not every test binary uses every helper (`dead_code` above does not cover imports).
#[allow(unused_imports)]
pub use feedline_testkit::{PATIENCE, eventually, kafka_bootstrap, random_prefix};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const V1_MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub fn settings(prefix: &str) -> Settings {
    feedline_testkit::registry_settings(prefix)
}

/// One registry instance running in-process, and an HTTP client for it.
pub struct TestRegistry {
    pub prefix: String,
    pub url: String,
    pub http: reqwest::Client,
    token: CancellationToken,
    running: Option<Running>,
}

/// A response: status, content type and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub text: String,
    pub body: Value,
}

impl Answer {
    /// Asserts a Confluent error answer and returns its message.
    #[track_caller]
    pub fn error(&self, status: u16, code: u64) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.body["error_code"], json!(code), "{self:?}");
        assert!(self.content_type.starts_with(V1_MEDIA_TYPE), "{self:?}");
        self.body["message"]
            .as_str()
            .expect("error message")
            .to_owned()
    }

    #[track_caller]
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        &self.body
    }
}

impl TestRegistry {
    /// A registry on a topic of its own.
    pub async fn start() -> Self {
        Self::on(&random_prefix()).await
    }

    /// A registry on the `_schemas` topic of `prefix` (shared with other instances).
    pub async fn on(prefix: &str) -> Self {
        Self::with(settings(prefix)).await
    }

    /// A registry with these settings.
    pub async fn with(settings: Settings) -> Self {
        feedline::telemetry::init();
        let prefix = settings.kafka.topic_prefix.clone();
        let prefix = prefix.as_str();
        let token = CancellationToken::new();
        let running = tokio::time::timeout(
            Duration::from_secs(60),
            feedline_registry::spawn(settings, token.clone()),
        )
        .await
        .expect("registry started in time")
        .expect("registry started");
        TestRegistry {
            prefix: prefix.to_owned(),
            url: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
            token,
            running: Some(running),
        }
    }

    pub fn fingerprint(&self) -> String {
        self.running.as_ref().expect("running").fingerprint()
    }

    /// Stops the instance and waits until it has.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(15), running.handle)
                .await
                .expect("registry stopped in time")
                .expect("registry task joined")
                .expect("registry stopped cleanly");
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = response.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            status.as_u16() < 500,
            "server error {status}: {text} (no request here should cause one)"
        );
        Answer {
            status,
            content_type,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.http.delete(format!("{}{path}", self.url)))
            .await
    }

    /// POSTs `body` as Confluent's clients do (their media type).
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, body.to_string(), Some(V1_MEDIA_TYPE))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: String, content_type: Option<&str>) -> Answer {
        let mut request = self.http.post(format!("{}{path}", self.url)).body(body);
        if let Some(ct) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, ct);
        }
        self.send(request).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(
            self.http
                .put(format!("{}{path}", self.url))
                .header(reqwest::header::CONTENT_TYPE, V1_MEDIA_TYPE)
                .body(body.to_string()),
        )
        .await
    }

    /// Registers `schema` under `subject` and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> u64 {
        let answer = self
            .post(
                &format!("/subjects/{subject}/versions"),
                &json!({ "schema": schema }),
            )
            .await;
        answer.ok()["id"].as_u64().expect("id")
    }

    pub async fn set_level(&self, subject: Option<&str>, level: &str) {
        let path = match subject {
            Some(s) => format!("/config/{s}"),
            None => "/config".to_owned(),
        };
        let answer = self.put(&path, &json!({ "compatibility": level })).await;
        assert_eq!(answer.ok()["compatibility"], json!(level));
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A record schema named `name` with the given fields (JSON snippets).
pub fn record(name: &str, fields: &[&str]) -> String {
    format!(
        r#"{{"type":"record","name":"{name}","namespace":"feedline.test","fields":[{}]}}"#,
        fields.join(",")
    )
}

pub const ID: &str = r#"{"name":"id","type":"long"}"#;
pub const NAME: &str = r#"{"name":"name","type":"string"}"#;
pub const EMAIL: &str = r#"{"name":"email","type":"string"}"#;
pub const EMAIL_DEFAULT: &str = r#"{"name":"email","type":"string","default":""}"#;
