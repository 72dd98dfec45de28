//! The dashboard's caching, the OpenAPI document against the live router, and the ops
//! routes.

use reqwest::Method;

use crate::helpers::TestApp;

#[tokio::test]
async fn dashboard_is_cached_with_a_strong_etag() {
    let app = TestApp::spawn().await;
    let page = app.send(app.http.get(app.at("/"))).await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert_eq!(page.header("cache-control"), "public, max-age=300");
    let policy = page.header("content-security-policy");
    assert!(
        policy.contains("script-src 'sha256-") && !policy.contains("unsafe-inline"),
        "the page runs its own script only: {policy}"
    );
    let etag = page.header("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    assert!(
        page.text.contains("EventSource"),
        "the page follows the live feed"
    );
    assert!(
        page.text.contains("/feed/ticket") && !page.text.contains("/feed?access_token"),
        "the page opens the feed with a ticket, never with its token in the URL"
    );
    assert!(
        page.text.contains("\"Idempotency-Key\""),
        "the page sends its commands with keys"
    );

    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".into(),
    ] {
        let cached = app
            .send(app.http.get(app.at("/")).header("if-none-match", &tag))
            .await;
        assert_eq!(cached.status, 304, "{tag}");
        assert!(cached.text.is_empty());
        assert_eq!(cached.header("etag"), etag);
        assert_eq!(cached.header("cache-control"), "public, max-age=300");
    }

    let changed = app
        .send(
            app.http
                .get(app.at("/"))
                .header("if-none-match", "\"stale\""),
        )
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.text, page.text);
}

#[tokio::test]
async fn openapi_documents_every_route_the_router_serves() {
    let app = TestApp::spawn().await;
    let doc = app.send(app.http.get(app.at("/openapi.json"))).await;
    assert_eq!(doc.status, 200);
    let doc = doc.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    let table = feedline_gateway::app::route_table();
    assert!(table.len() >= 14, "{table:?}");
    let id = uuid::Uuid::new_v4().to_string();
    for route in &table {
        // In the document ...
        let method = route.method.as_str().to_ascii_lowercase();
        let operation = &doc["paths"][route.path][&method];
        assert!(
            operation.is_object(),
            "{} {} undocumented",
            route.method,
            route.path
        );
        assert!(
            operation["responses"].is_object(),
            "{} {}",
            route.method,
            route.path
        );
        // ... and really served: no token, no body, but never the router's 404 or 405.
        let path = route.path.replace("{id}", &id);
        let method = Method::from_bytes(route.method.as_str().as_bytes()).unwrap();
        let answer = app.send(app.http.request(method, app.at(&path))).await;
        let code = &answer.body["error"]["code"];
        assert!(
            code != "not_found" && code != "method_not_allowed",
            "{} {} is in the table but not routed: {answer:#?}",
            route.method,
            route.path
        );
    }
    // Nothing documented that is not routed.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                table
                    .iter()
                    .any(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method)),
                "{method} {path} documented but not routed"
            );
        }
    }
    // The error format and the security schemes are described.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["oauth2"]["flows"]["clientCredentials"]["tokenUrl"],
        "/auth/token"
    );
    assert!(doc["components"]["schemas"]["Error"]["properties"]["error"].is_object());
}

#[tokio::test]
async fn ops_routes_and_request_metrics() {
    let app = TestApp::spawn().await;
    let health = app.send(app.http.get(app.at("/health"))).await;
    assert_eq!(health.body["status"], "ready", "{:?}", health.body);
    assert_eq!(health.body["checks"]["kafka"]["ok"], true);
    assert_eq!(health.body["checks"]["registry"]["ok"], true);
    let live = app.send(app.http.get(app.at("/health/live"))).await;
    assert_eq!(live.body["status"], "live");

    let id = uuid::Uuid::new_v4();
    let _ = app
        .send(app.http.get(app.at(&format!("/orders/{id}"))))
        .await;
    let _ = app.send(app.http.get(app.at("/no/such/route"))).await;
    let metrics = app.metrics().await;
    // Route templates, never ids, as label values.
    assert!(
        metrics.contains(r#"feedline_gateway_requests_total{method="GET",route="/orders/{id}",status="401",service="gateway"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404",service="gateway"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&id.to_string()));
    assert!(metrics.contains("feedline_gateway_request_seconds_bucket"));
}
