//! Bad input to every route is a 4xx in the error format, naming the field; never a 5xx
//! (order-view is away in these tests, so anything that got past validation to a proxied
//! call would show as a 503).

use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::TestApp;

/// One bad request and the answer it must get.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    method: Method,
    path: impl Into<String>,
    body: impl Into<String>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        method,
        path: path.into(),
        content_type: Some("application/json"),
        body: body.into(),
        status,
        code,
        field,
    }
}

fn typed(mut c: Case, content_type: Option<&'static str>) -> Case {
    c.content_type = content_type;
    c
}

#[tokio::test]
async fn bad_input_to_every_route_is_a_4xx_naming_the_field() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;
    let customer = Uuid::new_v4();
    let post = Method::POST;
    let put = Method::PUT;
    let get = Method::GET;
    let order_body = |total: &str| format!(r#"{{"customer_id": "{customer}", "total": {total}}}"#);
    let limit = format!("/customers/{customer}/credit-limit");
    let cancel = format!("/orders/{}/cancel", Uuid::new_v4());

    #[rustfmt::skip]
    let cases = vec![
        // POST /orders
        case(post.clone(), "/orders", r#"{"total": "60.00"}"#, 422, "missing_field", Some("customer_id")),
        case(post.clone(), "/orders", format!(r#"{{"customer_id": "{customer}"}}"#), 422, "missing_field", Some("total")),
        case(post.clone(), "/orders", order_body(r#""-5.00""#), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("-5"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body(r#""0.00""#), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("0"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body(r#""60.001""#), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("60.001"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body(r#""1e3""#), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body(r#""99999999999999999999.00""#), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("1e300"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("true"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", order_body("null"), 422, "invalid_field", Some("total")),
        case(post.clone(), "/orders", r#"{"customer_id": "not-a-uuid", "total": "1.00"}"#, 422, "invalid_field", Some("customer_id")),
        case(post.clone(), "/orders", r#"{"customer_id": 42, "total": "1.00"}"#, 422, "invalid_field", Some("customer_id")),
        case(post.clone(), "/orders", r#"{"customer_id": "#, 400, "malformed_json", None),
        case(post.clone(), "/orders", "", 400, "malformed_json", None),
        case(post.clone(), "/orders", r#"[1, 2]"#, 422, "invalid_field", Some("[0]")),
        case(post.clone(), "/orders", r#""an order""#, 422, "invalid_body", None),
        case(post.clone(), "/orders", order_body("1") + " trailing", 400, "malformed_json", None),
        typed(case(post.clone(), "/orders", order_body("1"), 415, "unsupported_media_type", None), Some("text/plain")),
        typed(case(post.clone(), "/orders", order_body("1"), 415, "unsupported_media_type", None), None),
        typed(case(post.clone(), "/orders", "total=1", 415, "unsupported_media_type", None), Some("application/x-www-form-urlencoded")),
        case(post.clone(), "/orders?wait=forever", order_body("1"), 400, "invalid_parameter", Some("wait")),
        // POST /customers
        case(post.clone(), "/customers", r#"{"credit_limit": "1.00"}"#, 422, "missing_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": "x"}"#, 422, "missing_field", Some("credit_limit")),
        case(post.clone(), "/customers", r#"{"name": "   ", "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", format!(r#"{{"name": "{}", "credit_limit": "1.00"}}"#, "x".repeat(201)), 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": 7, "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        // Text no service can store (PostgreSQL text holds no NUL) or show: any control character.
        case(post.clone(), "/customers", r#"{"name": "Ada\u0000", "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": "A\nda", "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": "Ada\u007f", "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": "A\u0085da", "credit_limit": "1.00"}"#, 422, "invalid_field", Some("name")),
        case(post.clone(), "/customers", r#"{"name": "x", "credit_limit": "-1.00"}"#, 422, "invalid_field", Some("credit_limit")),
        case(post.clone(), "/customers", r#"{"name": "x", "credit_limit": "1.234"}"#, 422, "invalid_field", Some("credit_limit")),
        case(post.clone(), "/customers", r#"{"name": "x", "credit_limit": "lots"}"#, 422, "invalid_field", Some("credit_limit")),
        case(post.clone(), "/customers", "{", 400, "malformed_json", None),
        typed(case(post.clone(), "/customers", "{}", 415, "unsupported_media_type", None), Some("text/html")),
        // PUT /customers/{id}/credit-limit
        case(put.clone(), "/customers/not-a-uuid/credit-limit", r#"{"credit_limit": "1.00"}"#, 400, "invalid_parameter", Some("id")),
        case(put.clone(), limit.clone(), "{}", 422, "missing_field", Some("credit_limit")),
        case(put.clone(), limit.clone(), r#"{"credit_limit": -3}"#, 422, "invalid_field", Some("credit_limit")),
        case(put.clone(), limit.clone(), r#"{"credit_limit": "0.001"}"#, 422, "invalid_field", Some("credit_limit")),
        case(put.clone(), limit.clone(), r#"{"credit_limit": ["1"]}"#, 422, "invalid_field", Some("credit_limit")),
        case(put.clone(), limit.clone(), "nope", 400, "malformed_json", None),
        typed(case(put.clone(), limit.clone(), "{}", 415, "unsupported_media_type", None), None),
        // POST /orders/{id}/cancel (the body is optional, but must be JSON when present)
        case(post.clone(), "/orders/123/cancel", "", 400, "invalid_parameter", Some("id")),
        case(post.clone(), cancel.clone(), "{", 400, "malformed_json", None),
        case(post.clone(), cancel.clone(), r#"{"reason": 5}"#, 422, "invalid_field", Some("reason")),
        case(post.clone(), cancel.clone(), r#"{"reason": "\u0000"}"#, 422, "invalid_field", Some("reason")),
        case(post.clone(), cancel.clone(), r#"{"reason": "too\tlate"}"#, 422, "invalid_field", Some("reason")),
        case(post.clone(), cancel.clone(), format!(r#"{{"reason": "{}"}}"#, "r".repeat(201)), 422, "invalid_field", Some("reason")),
        typed(case(post.clone(), cancel.clone(), "reason", 415, "unsupported_media_type", None), Some("text/plain")),
        // Queries: ids are checked before order-view is asked.
        case(get.clone(), "/orders/not-a-uuid", "", 400, "invalid_parameter", Some("id")),
        case(get.clone(), "/customers/12345", "", 400, "invalid_parameter", Some("id")),
        case(get.clone(), "/customers/zzz/orders", "", 400, "invalid_parameter", Some("id")),
        case(get.clone(), "/orders/%FF%FE", "", 400, "invalid_parameter", Some("id")),
        // Unknown routes and methods.
        case(get.clone(), "/nope", "", 404, "not_found", None),
        case(post.clone(), "/orders/extra/path/here", "{}", 404, "not_found", None),
        case(Method::DELETE, "/orders", "", 405, "method_not_allowed", None),
        case(get.clone(), "/auth/token", "", 405, "method_not_allowed", None),
        case(Method::PATCH, format!("/customers/{customer}"), "{}", 405, "method_not_allowed", None),
        // POST /auth/token
        typed(case(post.clone(), "/auth/token", "client_id=demo&client_secret=demo-secret", 400, "invalid_request", Some("grant_type")), Some("application/x-www-form-urlencoded")),
        case(post.clone(), "/auth/token", r#"{"grant_type": 5}"#, 400, "invalid_request", Some("grant_type")),
        case(post.clone(), "/auth/token", r#"{"grant_type": "#, 400, "malformed_json", None),
        typed(case(post.clone(), "/auth/token", "grant_type=client_credentials", 415, "unsupported_media_type", None), Some("text/plain")),
        typed(case(post.clone(), "/auth/token", "grant_type=a&grant_type=b", 400, "invalid_request", None), Some("application/x-www-form-urlencoded")),
    ];

    let mut failures = Vec::new();
    for c in &cases {
        let mut request = app
            .http
            .request(c.method.clone(), app.at(&c.path))
            .body(c.body.clone());
        if c.path != "/auth/token" {
            request = request.bearer_auth(&token);
        }
        if let Some(content_type) = c.content_type {
            request = request.header("content-type", content_type);
        }
        let answer = app.send(request).await;
        let error = &answer.body["error"];
        let ok = answer.status.as_u16() == c.status
            && answer
                .header("content-type")
                .starts_with("application/json")
            && error["code"] == c.code
            && error["message"].as_str().is_some_and(|m| !m.is_empty())
            && c.field.is_none_or(|f| error["field"] == f);
        if !ok {
            failures.push(format!(
                "{} {} {:?} -> expected {} {} {:?}, got {} {}",
                c.method, c.path, c.body, c.status, c.code, c.field, answer.status, answer.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn oversized_and_odd_headers_are_refused_politely() {
    let app = TestApp::spawn().await;
    let token = app.token(None).await;

    let huge = json!({"customer_id": Uuid::new_v4(), "total": "1.00", "pad": "x".repeat(100_000)});
    let answer = app.post_json("/orders", &token, &huge).await;
    answer.assert_error(413, "payload_too_large", None);

    let correlation = app
        .send(
            app.http
                .post(app.at("/orders"))
                .bearer_auth(&token)
                .header("x-correlation-id", "x".repeat(300))
                .json(&json!({"customer_id": Uuid::new_v4(), "total": "1.00"})),
        )
        .await;
    correlation.assert_error(400, "invalid_parameter", Some("X-Correlation-ID"));
}
