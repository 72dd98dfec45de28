//! Random requests to every route of the registry's Confluent API, on the real broker: no
//! answer may be a 5xx other than a 503 with `Retry-After`, every 4xx is Confluent's
//! `{"error_code", "message"}` in JSON, a body that does not fit names its field, and
//! nothing panics. Random credentials ride along: whether the registry asks for them or
//! not, a refusal is a JSON 401 or 403 like any other.
//!
//! `FEEDLINE_FUZZ_SEED` repeats a run, `FEEDLINE_FUZZ_CASES` sets its size (10,000).

mod common;

use common::{TestRegistry, V1_MEDIA_TYPE};
use feedline_testkit::fuzz::{
    self, Case, Credentials, FuzzConfig, PanicCounter, Reply, Route, Sample,
};
use reqwest::Method;
use serde_json::json;

/// The subject registered before the run, so that reads and checks find something.
const SUBJECT: &str = "fuzz-value";

fn schema_body() -> Sample {
    Sample::Json(json!({
        "schema": r#"{"type":"record","name":"Fuzz","fields":[{"name":"id","type":"string"}]}"#,
    }))
}

fn config_body() -> Sample {
    Sample::Json(json!({"compatibility": "BACKWARD"}))
}

/// Every route of `registry/src/api.rs` (written out: axum's router lists none) plus the
/// platform's ops routes.
fn routes() -> Vec<Route> {
    let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
    let table = [
        (get.clone(), "/", Sample::None),
        (get.clone(), "/subjects", Sample::None),
        (post.clone(), "/subjects/{subject}", schema_body()),
        (delete.clone(), "/subjects/{subject}", Sample::None),
        (get.clone(), "/subjects/{subject}/versions", Sample::None),
        (post.clone(), "/subjects/{subject}/versions", schema_body()),
        (
            get.clone(),
            "/subjects/{subject}/versions/{version}",
            Sample::None,
        ),
        (
            delete.clone(),
            "/subjects/{subject}/versions/{version}",
            Sample::None,
        ),
        (
            get.clone(),
            "/subjects/{subject}/versions/{version}/schema",
            Sample::None,
        ),
        (
            get.clone(),
            "/subjects/{subject}/versions/{version}/referencedby",
            Sample::None,
        ),
        (get.clone(), "/schemas", Sample::None),
        (get.clone(), "/schemas/types", Sample::None),
        (get.clone(), "/schemas/ids/{id}", Sample::None),
        (get.clone(), "/schemas/ids/{id}/schema", Sample::None),
        (get.clone(), "/schemas/ids/{id}/subjects", Sample::None),
        (get.clone(), "/schemas/ids/{id}/versions", Sample::None),
        (
            post.clone(),
            "/compatibility/subjects/{subject}/versions",
            schema_body(),
        ),
        (
            post.clone(),
            "/compatibility/subjects/{subject}/versions/{version}",
            schema_body(),
        ),
        (get.clone(), "/config", Sample::None),
        (put.clone(), "/config", config_body()),
        (delete.clone(), "/config", Sample::None),
        (get.clone(), "/config/{subject}", Sample::None),
        (put.clone(), "/config/{subject}", config_body()),
        (delete.clone(), "/config/{subject}", Sample::None),
        (get.clone(), "/mode", Sample::None),
        (get.clone(), "/metrics", Sample::None),
        (get.clone(), "/health", Sample::None),
        (get.clone(), "/health/live", Sample::None),
        (get.clone(), "/health/ready", Sample::None),
    ];
    table
        .into_iter()
        .map(|(method, path, sample)| {
            Route::new(method, path)
                .sample(sample)
                .param("subject", &[SUBJECT, "other-value", "a:.b:c"])
                .param("version", &["1", "latest", "-1", "2"])
                .param("id", &["1", "2"])
        })
        .collect()
}

/// Confluent's error shape on every 4xx, and a named field in every body that does not fit.
fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    if !(400..500).contains(&reply.status) || case.method == Method::HEAD {
        return Ok(());
    }
    let body = reply.json().unwrap_or_default();
    if !body["error_code"].is_u64() {
        return Err("no integer error_code".into());
    }
    let message = body["message"].as_str().unwrap_or("");
    if message.is_empty() {
        return Err("no message".into());
    }
    if message.starts_with("unexpected JSON") && !message.contains("field `") {
        return Err("a body that does not fit, without the field".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_route_get_confluent_errors_and_never_a_server_error() {
    let panics = PanicCounter::install();
    let config = FuzzConfig::from_env("registry");
    let registry = TestRegistry::start().await;
    let registered = registry
        .send(
            registry
                .http
                .post(format!("{}/subjects/{SUBJECT}/versions", registry.url))
                .header("content-type", V1_MEDIA_TYPE)
                .body(match schema_body() {
                    Sample::Json(body) => body.to_string(),
                    _ => unreachable!("a JSON sample"),
                }),
        )
        .await;
    assert_eq!(registered.status, 200, "{registered:?}");

    let credentials = Credentials {
        authorization: vec![
            // `admin:admin`, `fuzz:`, and a user with a colon-less pair.
            "Basic YWRtaW46YWRtaW4=".into(),
            "Basic ZnV6ejo=".into(),
            "Basic bm9jb2xvbg==".into(),
            "Basic !!!not-base64!!!".into(),
            "Bearer a.b.c".into(),
        ],
        query_tokens: Vec::new(),
    };
    let routes = routes();
    let report = fuzz::run(&registry.url, &routes, &credentials, &config, check).await;

    assert_eq!(
        panics.count(),
        0,
        "a panic while serving (see the output above)"
    );
    let health = registry
        .http
        .get(format!("{}/health/live", registry.url))
        .send()
        .await
        .expect("the registry still answers");
    assert_eq!(health.status(), 200);
    report.assert_clean(&config);
    registry.stop().await;
}
