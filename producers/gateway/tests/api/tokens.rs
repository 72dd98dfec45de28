//! What the gateway's tokens carry and what it checks of them (`iss`, `aud`, `nbf`, `exp`,
//! the key id), key rotation, and the refusal to start with published credentials outside
//! dev mode.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use feedline::{CancellationToken, Settings};
use feedline_gateway::config::DEV_JWT_SECRET;
use feedline_gateway::jwt::{Claims, Expected, TokenKeys};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{
    JWT_SECRET, Options, TestApp, assert_accepted, assert_refused, claims, read_orders, sign,
};

const OLD_KEY: &str = "the old signing key, 32 bytes or more";
const NEW_KEY: &str = "the new signing key, 32 bytes or more";

/// The header and claims of a compact JWT, unverified.
fn decode(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let bytes = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    (part(), part())
}

/// A token for `claims` signed with `secret` under key id `kid`.
fn sign_as(kid: &str, secret: &str, claims: &Claims) -> String {
    let key = (kid.to_owned(), SecretString::from(secret));
    TokenKeys::new([(&key.0, &key.1)], kid, Expected::default()).sign(claims)
}

fn keys_toml(keys: &[(&str, &str)]) -> String {
    keys.iter()
        .map(|(kid, secret)| format!("[gateway.keys.{kid}]\nsecret = \"{secret}\"\n"))
        .collect()
}

#[tokio::test]
async fn issued_tokens_carry_issuer_audience_validity_and_key_id() {
    let app = TestApp::spawn().await;
    let token = app.token(Some("feed:read")).await;
    let (header, claims) = decode(&token);
    assert_eq!(
        header,
        json!({"alg": "HS256", "typ": "JWT", "kid": "default"})
    );
    assert_eq!(claims["iss"], "feedline-gateway");
    assert_eq!(claims["aud"], "feedline-api");
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(claims["sub"], "demo");
    assert_accepted(&read_orders(&app, &token).await);

    let configured = app
        .restart_as(Options {
            gateway_toml: "issuer = \"https://id.example\"\naudience = \"orders-api\"".into(),
            ..Options::default()
        })
        .await;
    let token = configured.token(None).await;
    let (_, claims) = decode(&token);
    assert_eq!(
        (&claims["iss"], &claims["aud"]),
        (&json!("https://id.example"), &json!("orders-api"))
    );
    assert_accepted(&read_orders(&configured, &token).await);
    // The default issuer's tokens are another issuer's here.
    let foreign = sign(
        JWT_SECRET.as_bytes(),
        &crate::helpers::claims("feed:read", 600),
    );
    assert_refused(&read_orders(&configured, &foreign).await, "issuer");
}

#[tokio::test]
async fn tokens_with_wrong_claims_are_refused() {
    let app = TestApp::spawn().await;
    let good = claims("feed:read", 600);
    assert_accepted(&read_orders(&app, &sign(JWT_SECRET.as_bytes(), &good)).await);

    let mut wrong_issuer = good.clone();
    wrong_issuer.iss = "https://evil.example".into();
    let mut no_issuer = good.clone();
    no_issuer.iss = String::new();
    let mut wrong_audience = good.clone();
    wrong_audience.aud = vec!["another-api".into()];
    let mut no_audience = good.clone();
    no_audience.aud = vec![];
    let mut not_yet = good.clone();
    // Well past the leeway.
    not_yet.nbf = Some(feedline_gateway::jwt::now() + 600);
    let expired = claims("feed:read", -120);

    for (claims, message) in [
        (&wrong_issuer, "issuer"),
        (&no_issuer, "issuer"),
        (&wrong_audience, "not meant for this API"),
        (&no_audience, "not meant for this API"),
        (&not_yet, "not valid yet"),
        (&expired, "expired"),
    ] {
        let token = sign(JWT_SECRET.as_bytes(), claims);
        assert_refused(&read_orders(&app, &token).await, message);
    }

    // A key id the gateway does not have, whatever the secret.
    let unknown = sign_as("k9", JWT_SECRET, &good);
    assert_refused(
        &read_orders(&app, &unknown).await,
        "key this gateway does not know",
    );

    // A token within the leeway of its nbf is accepted (clocks differ slightly).
    let mut just_issued = good.clone();
    just_issued.nbf = Some(feedline_gateway::jwt::now() + 5);
    let token = sign(JWT_SECRET.as_bytes(), &just_issued);
    assert_accepted(&read_orders(&app, &token).await);

    let metrics = app.metrics().await;
    for reason in [
        "wrong_issuer",
        "wrong_audience",
        "not_yet_valid",
        "expired",
        "unknown_key",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"feedline_gateway_auth_failures_total{{reason="{reason}",service="gateway"}}"#
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn keys_rotate_by_key_id() {
    // Before: one key, "old".
    let before = Options {
        jwt_secret: None,
        extra_toml: keys_toml(&[("old", OLD_KEY)]),
        ..Options::default()
    };
    let app = TestApp::spawn_with(before).await;
    let old_token = app.token(Some("feed:read")).await;
    assert_eq!(decode(&old_token).0["kid"], "old");

    // During: "new" signs, "old" still verifies the tokens out there.
    let during = Options {
        jwt_secret: None,
        extra_toml: keys_toml(&[("old", OLD_KEY), ("new", NEW_KEY)]),
        gateway_toml: "signing_key_id = \"new\"".into(),
        ..Options::default()
    };
    let app = app.restart_as(during).await;
    let new_token = app.token(Some("feed:read")).await;
    assert_eq!(decode(&new_token).0["kid"], "new");
    assert_accepted(&read_orders(&app, &old_token).await);
    assert_accepted(&read_orders(&app, &new_token).await);

    // After: "old" removed; its tokens are refused, the new ones still work.
    let after = Options {
        jwt_secret: None,
        extra_toml: keys_toml(&[("new", NEW_KEY)]),
        ..Options::default()
    };
    let app = app.restart_as(after).await;
    assert_refused(
        &read_orders(&app, &old_token).await,
        "key this gateway does not know",
    );
    assert_accepted(&read_orders(&app, &new_token).await);
    // The old key's secret under the new key's id is a forgery.
    let forged = sign_as("new", OLD_KEY, &claims("feed:read", 600));
    assert_refused(&read_orders(&app, &forged).await, "signature");
    app.stop().await;
}

/// Starts a gateway on `gateway_toml` (plus `extra`) and returns why it refused to.
async fn refusal(gateway_toml: &str, extra: &str) -> String {
    let settings = Settings::from_toml(&format!(
        "[http]\nhost = \"127.0.0.1\"\nport = 0\n[gateway]\n{gateway_toml}\n{extra}"
    ))
    .unwrap();
    let token = CancellationToken::new();
    let refused = feedline_gateway::spawn(settings, token.clone()).await;
    token.cancel();
    format!("{:#}", refused.expect_err("the gateway refuses to start"))
}

#[tokio::test]
async fn refuses_to_start_with_published_credentials_outside_dev_mode() {
    let demo_off = "[gateway.clients.demo]\nenabled = false";
    let own_secret = format!("jwt_secret = \"{JWT_SECRET}\"");

    let no_key = refusal("", demo_off).await;
    assert!(no_key.contains("gateway.jwt_secret"), "{no_key}");
    assert!(no_key.contains("no signing key"), "{no_key}");
    assert!(no_key.contains("gateway.dev_mode"), "{no_key}");

    let dev_secret = refusal(&format!("jwt_secret = \"{DEV_JWT_SECRET}\""), demo_off).await;
    assert!(dev_secret.contains("gateway.jwt_secret"), "{dev_secret}");
    assert!(dev_secret.contains("development secret"), "{dev_secret}");

    let dev_key = refusal(
        "signing_key_id = \"k\"",
        &format!("[gateway.keys.k]\nsecret = \"{DEV_JWT_SECRET}\"\n{demo_off}"),
    )
    .await;
    assert!(dev_key.contains("development secret"), "{dev_key}");

    let demo = refusal(&own_secret, "").await;
    assert!(demo.contains("gateway.clients.demo.enabled"), "{demo}");
    assert!(demo.contains("demo-secret"), "{demo}");

    // Saying "not dev mode" explicitly is the same as the default.
    let explicit = refusal(&format!("{own_secret}\ndev_mode = false"), "").await;
    assert!(explicit.contains("clients.demo"), "{explicit}");
}

#[tokio::test]
async fn starts_outside_dev_mode_with_its_own_secret_and_without_the_demo_client() {
    let app = TestApp::spawn_with(Options {
        dev_mode: false,
        extra_toml: "[gateway.clients.demo]\nenabled = false".into(),
        ..Options::default()
    })
    .await;
    let refused = app
        .send(app.http.post(app.at("/auth/token")).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo"),
            ("client_secret", "demo-secret"),
        ]))
        .await;
    refused.assert_error(401, "invalid_client", None);
    let token = app
        .token_for(
            crate::helpers::LIMITED_ID,
            crate::helpers::LIMITED_SECRET,
            None,
        )
        .await;
    assert!(
        TokenKeys::from_bytes(JWT_SECRET.as_bytes())
            .verify(&token)
            .is_ok()
    );
    app.stop().await;
}

#[tokio::test]
async fn dev_mode_starts_with_the_demo_client_and_the_development_secret() {
    let app = TestApp::spawn_with(Options {
        jwt_secret: None,
        ..Options::default()
    })
    .await;
    let token = app.token(None).await;
    let claims = TokenKeys::from_bytes(DEV_JWT_SECRET.as_bytes())
        .verify(&token)
        .expect("signed with the development secret");
    assert_eq!(claims.sub, "demo");
    app.stop().await;
}
