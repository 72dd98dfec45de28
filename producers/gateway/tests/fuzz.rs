//! Random requests to every route of the gateway (taken from its route table, so a new route
//! is fuzzed without touching this file), in front of the real order-view, the real broker
//! and the real registry: no answer may be a 5xx other than a 503 with `Retry-After`, every
//! 4xx is the JSON error shape, body validation errors name the field, and nothing panics.
//!
//! `FEEDLINE_FUZZ_SEED` repeats a run, `FEEDLINE_FUZZ_CASES` sets its size (10,000).

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use feedline_testkit::fuzz::{
    self, Case, Credentials, FuzzConfig, PanicCounter, Reply, Route, Sample,
};
use reqwest::Method;
use serde_json::json;

use helpers::{JWT_SECRET, LIMITED_ID, LIMITED_SECRET, Options, TestApp, claims, sign};

/// An id for bodies and paths; fixed, so that a seed repeats the same requests.
const SOME_ID: &str = "8e03978e-40d5-43e8-bc93-6894a57f9324";

/// A valid body for each route that takes one; a route not listed (a new one) starts from
/// an empty object.
fn sample(method: &Method, path: &str) -> Sample {
    match (method.as_str(), path) {
        ("POST", "/auth/token") => Sample::Form(vec![
            ("grant_type".into(), "client_credentials".into()),
            ("client_id".into(), "demo".into()),
            ("client_secret".into(), "demo-secret".into()),
            ("scope".into(), "feed:read".into()),
        ]),
        ("POST", "/orders") => Sample::Json(json!({"customer_id": SOME_ID, "total": "60.00"})),
        ("POST", "/customers") => Sample::Json(json!({"name": "Ada", "credit_limit": "100.00"})),
        ("PUT", "/customers/{id}/credit-limit") => Sample::Json(json!({"credit_limit": "50.00"})),
        ("POST", "/orders/{id}/cancel") => Sample::Json(json!({"reason": "changed my mind"})),
        ("GET", _) | ("HEAD", _) | ("DELETE", _) => Sample::None,
        _ => Sample::Json(json!({})),
    }
}

/// Every route of the gateway, with valid bodies and ids to mutate.
fn routes() -> Vec<Route> {
    feedline_gateway::app::route_table()
        .into_iter()
        .map(|info| {
            let method = Method::from_bytes(info.method.as_str().as_bytes()).expect("method");
            let valid_ids = [SOME_ID, "00000000-0000-0000-0000-000000000000"];
            let sample = sample(&method, info.path);
            let mut route = Route::new(method, info.path).sample(sample);
            // Every parameter of the gateway's routes is an id.
            for segment in info.path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    route = route.param(name, &valid_ids);
                }
            }
            route
        })
        .collect()
}

/// The gateway's own checks on top of the common ones: the error shape, and a field named
/// in every field error.
fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    if !(400..500).contains(&reply.status) || case.method == Method::HEAD {
        return Ok(());
    }
    let body = reply.json().unwrap_or_default();
    let error = &body["error"];
    let code = error["code"].as_str().ok_or("no error.code")?;
    if error["message"].as_str().is_none_or(str::is_empty) {
        return Err("no error.message".into());
    }
    if matches!(code, "invalid_field" | "missing_field")
        && error["field"].as_str().is_none_or(str::is_empty)
    {
        return Err(format!("{code} without error.field"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_route_get_json_errors_and_never_a_server_error() {
    let config = FuzzConfig::from_env("gateway");
    fuzz_gateway(config, true).await;
}

/// The same with order-view away: what gets past validation must still not be a 5xx
/// other than a 503 with `Retry-After`. A quarter of the cases: the routes are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_order_view_away_random_requests_get_json_errors_and_at_most_a_503() {
    let mut config = FuzzConfig::from_env("gateway without order-view");
    config.cases = config.cases.div_ceil(4);
    fuzz_gateway(config, false).await;
}

async fn fuzz_gateway(config: FuzzConfig, real_order_view: bool) {
    let panics = PanicCounter::install();
    let app = TestApp::spawn_with(Options {
        real_order_view,
        // A command asking to wait for an outcome no saga will produce holds a request
        // for this long at most.
        max_wait_secs: 1,
        ..Options::default()
    })
    .await;

    let valid = app.token(None).await;
    let credentials = Credentials {
        authorization: vec![
            format!("Bearer {valid}"),
            format!("Bearer {}", app.token(Some("feed:read")).await),
            format!(
                "Bearer {}",
                app.token_for(LIMITED_ID, LIMITED_SECRET, None).await
            ),
            format!(
                "Bearer {}",
                sign(
                    JWT_SECRET.as_bytes(),
                    &claims("feed:read orders:write", -60)
                )
            ),
            format!(
                "Bearer {}",
                sign(
                    b"another-secret-of-more-than-32-bytes!",
                    &claims("feed:read", 600)
                )
            ),
            format!("bearer {valid}"),
            format!("Bearer {valid}x"),
            format!("Basic {valid}"),
        ],
        query_tokens: vec![valid.clone(), "garbage".into()],
    };

    let routes = routes();
    let report = fuzz::run(&app.url, &routes, &credentials, &config, check).await;

    assert_eq!(
        panics.count(),
        0,
        "a panic while serving (see the output above)"
    );
    assert!(app.is_running(), "the gateway task ended");
    let health = app.send(app.http.get(app.at("/health/live"))).await;
    assert_eq!(health.status, 200, "{health:#?}");
    for route in &routes {
        let name = format!("{} {}", route.method, route.path);
        assert!(
            report.per_route.get(&name).copied().unwrap_or(0) >= config.cases / routes.len(),
            "{name} got too few requests: {:?}",
            report.per_route
        );
    }
    report.assert_clean(&config);
    app.stop().await;
}
