//! The identity provider and the bearer-token checks on every API route.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use feedline_gateway::jwt::TokenKeys;
use serde_json::json;

use crate::helpers::{JWT_SECRET, LIMITED_ID, LIMITED_SECRET, TestApp, claims, sign};

const ALL_SCOPES: &str = "orders:write customers:write feed:read";

#[tokio::test]
async fn client_credentials_grant_issues_a_signed_token() {
    let app = TestApp::spawn().await;

    // Form body.
    let form = app
        .send(app.http.post(app.at("/auth/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo"),
            ("client_secret", "demo-secret"),
        ]))
        .await;
    assert_eq!(form.status, 200, "{form:#?}");
    assert_eq!(form.header("cache-control"), "no-store");
    assert_eq!(form.body["token_type"], "Bearer");
    assert_eq!(form.body["expires_in"], 3600);
    assert_eq!(form.body["scope"], ALL_SCOPES);
    let token = form.body["access_token"].as_str().unwrap();
    let claims = TokenKeys::from_bytes(JWT_SECRET.as_bytes())
        .verify(token)
        .unwrap();
    assert_eq!(claims.sub, "demo");
    assert_eq!(claims.exp - claims.iat, 3600);
    assert_eq!(claims.scope, ALL_SCOPES);

    // JSON body, one scope.
    let json_body = app
        .send(app.http.post(app.at("/auth/token")).json(&json!({
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": "demo-secret",
            "scope": "feed:read"
        })))
        .await;
    assert_eq!(json_body.status, 200, "{json_body:#?}");
    assert_eq!(json_body.body["scope"], "feed:read");

    // HTTP Basic.
    let basic = app
        .send(
            app.http
                .post(app.at("/auth/token"))
                .basic_auth(LIMITED_ID, Some(LIMITED_SECRET))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!(basic.status, 200, "{basic:#?}");
    assert_eq!(basic.body["scope"], "orders:write");

    // A good token works on a route that needs its scope (order-view is away: 503, past auth).
    let token = app.token(Some("feed:read")).await;
    let past_auth = app
        .send(app.http.get(app.at("/orders")).bearer_auth(&token))
        .await;
    past_auth.assert_error(503, "upstream_unavailable", None);
}

#[tokio::test]
async fn bad_client_credentials_are_refused() {
    let app = TestApp::spawn().await;
    let token = |form: Vec<(&'static str, &'static str)>| {
        app.send(app.http.post(app.at("/auth/token")).form(&form))
    };

    let wrong_secret = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo"),
        ("client_secret", "demo-secreT"),
    ])
    .await;
    wrong_secret.assert_error(401, "invalid_client", None);

    let unknown = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "mallory"),
        ("client_secret", "demo-secret"),
    ])
    .await;
    unknown.assert_error(401, "invalid_client", None);

    let no_secret = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo"),
    ])
    .await;
    no_secret.assert_error(401, "invalid_client", None);

    let basic = app
        .send(
            app.http
                .post(app.at("/auth/token"))
                .basic_auth("demo", Some("nope"))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    basic.assert_error(401, "invalid_client", None);
    assert!(
        basic.header("www-authenticate").starts_with("Basic"),
        "{basic:#?}"
    );

    let garbled_basic = app
        .send(
            app.http
                .post(app.at("/auth/token"))
                .header(
                    "authorization",
                    format!("Basic {}", STANDARD.encode("no-colon")),
                )
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    garbled_basic.assert_error(401, "invalid_client", None);

    let not_allowed = app
        .send(app.http.post(app.at("/auth/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", LIMITED_ID),
            ("client_secret", LIMITED_SECRET),
            ("scope", "orders:write customers:write"),
        ]))
        .await;
    not_allowed.assert_error(400, "invalid_scope", Some("scope"));
    assert!(
        not_allowed.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("customers:write")
    );

    let unknown_scope = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "demo"),
        ("client_secret", "demo-secret"),
        ("scope", "admin"),
    ])
    .await;
    unknown_scope.assert_error(400, "invalid_scope", Some("scope"));

    let grant = token(vec![
        ("grant_type", "password"),
        ("client_id", "demo"),
        ("client_secret", "demo-secret"),
    ])
    .await;
    grant.assert_error(400, "unsupported_grant_type", Some("grant_type"));

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"feedline_gateway_auth_failures_total{reason="invalid_client",service="gateway"} 5"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"feedline_gateway_auth_failures_total{reason="invalid_scope",service="gateway"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn api_routes_refuse_missing_forged_tampered_and_expired_tokens() {
    let app = TestApp::spawn().await;
    let body = json!({"customer_id": uuid::Uuid::new_v4(), "total": "60.00"});
    let place = |token: Option<String>| {
        let mut request = app.http.post(app.at("/orders")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        app.send(request)
    };
    let assert_invalid = |answer: &crate::helpers::Answer, what: &str| {
        answer.assert_error(401, "invalid_token", None);
        let challenge = answer.header("www-authenticate");
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
            "{what}: {answer:#?}"
        );
    };

    let none = place(None).await;
    assert_invalid(&none, "no token");

    let garbage = place(Some("not-a-jwt".into())).await;
    assert_invalid(&garbage, "garbage");

    let basic = app
        .send(
            app.http
                .post(app.at("/orders"))
                .basic_auth("demo", Some("demo-secret"))
                .json(&body),
        )
        .await;
    assert_invalid(&basic, "basic instead of bearer");

    let forged = sign(
        b"some other key, also 32 bytes long!",
        &claims("orders:write", 600),
    );
    let forged = place(Some(forged)).await;
    assert_invalid(&forged, "forged");
    assert!(
        forged.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signature")
    );

    // A real token whose payload was swapped for one with more scopes.
    let real = app.token(Some("feed:read")).await;
    let mut parts: Vec<&str> = real.split('.').collect();
    let wider = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("orders:write", 600)).unwrap());
    parts[1] = &wider;
    let tampered = place(Some(parts.join("."))).await;
    assert_invalid(&tampered, "tampered");

    let expired = sign(JWT_SECRET.as_bytes(), &claims("orders:write", -120));
    let expired = place(Some(expired)).await;
    assert_invalid(&expired, "expired");
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let metrics = app.metrics().await;
    for reason in ["missing", "malformed", "bad_signature", "expired"] {
        assert!(
            metrics.contains(&format!(
                r#"feedline_gateway_auth_failures_total{{reason="{reason}",service="gateway"}}"#
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn each_route_needs_its_scope() {
    let app = TestApp::spawn().await;
    let limited = app
        .token_for(LIMITED_ID, LIMITED_SECRET, Some("orders:write"))
        .await;
    let id = uuid::Uuid::new_v4();

    let customers = app
        .post_json(
            "/customers",
            &limited,
            &json!({"name": "x", "credit_limit": "1.00"}),
        )
        .await;
    customers.assert_error(403, "insufficient_scope", None);
    assert!(
        customers.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("customers:write")
    );
    let challenge = customers.header("www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="customers:write""#),
        "{customers:#?}"
    );

    let credit = app
        .send(
            app.http
                .put(app.at(&format!("/customers/{id}/credit-limit")))
                .bearer_auth(&limited)
                .json(&json!({"credit_limit": "1.00"})),
        )
        .await;
    credit.assert_error(403, "insufficient_scope", None);

    for path in [
        format!("/orders/{id}"),
        "/orders".to_owned(),
        format!("/customers/{id}"),
        format!("/customers/{id}/orders"),
        "/feed".to_owned(),
    ] {
        let answer = app
            .send(app.http.get(app.at(&path)).bearer_auth(&limited))
            .await;
        answer.assert_error(403, "insufficient_scope", None);
        assert!(
            answer.header("www-authenticate").contains("feed:read"),
            "{path}"
        );
    }

    let reader = app.token(Some("feed:read")).await;
    let orders = app
        .post_json(
            "/orders",
            &reader,
            &json!({"customer_id": id, "total": "1.00"}),
        )
        .await;
    orders.assert_error(403, "insufficient_scope", None);
    let cancel = app
        .send(
            app.http
                .post(app.at(&format!("/orders/{id}/cancel")))
                .bearer_auth(&reader),
        )
        .await;
    cancel.assert_error(403, "insufficient_scope", None);
}

#[tokio::test]
async fn only_the_feed_takes_a_token_in_the_query() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("feed:read")).await;
    let id = uuid::Uuid::new_v4();

    let order = app
        .send(
            app.http
                .get(app.at(&format!("/orders/{id}?access_token={token}"))),
        )
        .await;
    order.assert_error(401, "invalid_token", None);

    // Past auth: order-view is away in this test.
    let feed = app
        .send(app.http.get(app.at(&format!("/feed?access_token={token}"))))
        .await;
    feed.assert_error(503, "upstream_unavailable", None);

    let bad = app
        .send(app.http.get(app.at("/feed?access_token=nope")))
        .await;
    bad.assert_error(401, "invalid_token", None);
}
