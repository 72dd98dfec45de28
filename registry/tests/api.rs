//! The REST API over plain HTTP against a registry on the real broker: every endpoint, every
//! error code, bodies and content types as Confluent's clients expect them.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_serves_every_read_endpoint() {
    let reg = TestRegistry::start().await;
    let root = reg.get("/").await;
    assert_eq!(root.ok(), &json!({}));
    assert_eq!(root.content_type, V1_MEDIA_TYPE);
    assert_eq!(reg.get("/schemas/types").await.ok(), &json!(["AVRO"]));
    assert_eq!(reg.get("/subjects").await.ok(), &json!([]));

    let v1 = record("User", &[ID, NAME]);
    let id1 = reg.register("users-value", &v1).await;
    assert_eq!(
        reg.register("users-value", &v1).await,
        id1,
        "same schema, same id"
    );
    let v2 = record("User", &[ID, NAME, EMAIL_DEFAULT]);
    let id2 = reg.register("users-value", &v2).await;
    assert_ne!(id1, id2);
    assert_eq!(reg.get("/subjects").await.ok(), &json!(["users-value"]));
    assert_eq!(
        reg.get("/subjects/users-value/versions").await.ok(),
        &json!([1, 2])
    );

    let version = reg.get("/subjects/users-value/versions/1").await;
    let body = version.ok();
    assert_eq!(body["subject"], json!("users-value"));
    assert_eq!(body["version"], json!(1));
    assert_eq!(body["id"], json!(id1));
    assert!(body.get("schemaType").is_none(), "AVRO is implied: {body}");
    assert!(body.get("references").is_none());
    let served: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(served, serde_json::from_str::<Value>(&v1).unwrap());
    for latest in ["latest", "-1"] {
        let body = reg
            .get(&format!("/subjects/users-value/versions/{latest}"))
            .await;
        assert_eq!(body.ok()["version"], json!(2), "{latest}");
        assert_eq!(body.ok()["id"], json!(id2));
    }
    let raw = reg.get("/subjects/users-value/versions/2/schema").await;
    assert_eq!(raw.ok(), &serde_json::from_str::<Value>(&v2).unwrap());

    let by_id = reg.get(&format!("/schemas/ids/{id1}")).await;
    assert_eq!(by_id.content_type, V1_MEDIA_TYPE);
    let body = by_id.ok().as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), ["schema"], "{body:?}");
    assert_eq!(
        serde_json::from_str::<Value>(body["schema"].as_str().unwrap()).unwrap(),
        serde_json::from_str::<Value>(&v1).unwrap()
    );
    let raw = reg.get(&format!("/schemas/ids/{id1}/schema")).await;
    assert_eq!(raw.ok(), &serde_json::from_str::<Value>(&v1).unwrap());
    // Clients' extra parameters are accepted.
    let with_params = reg
        .get(&format!(
            "/schemas/ids/{id1}?fetchMaxId=true&subject=users-value&format=resolved&deleted=true"
        ))
        .await;
    assert_eq!(with_params.ok()["maxId"], json!(id2));

    // The same schema under another subject reuses the id.
    assert_eq!(reg.register("copies-value", &v1).await, id1);
    assert_eq!(
        reg.get(&format!("/schemas/ids/{id1}/subjects")).await.ok(),
        &json!(["copies-value", "users-value"])
    );
    assert_eq!(
        reg.get(&format!("/schemas/ids/{id1}/versions")).await.ok(),
        &json!([
            {"subject": "copies-value", "version": 1},
            {"subject": "users-value", "version": 1}
        ])
    );

    // Whitespace, key order and docs do not make a new schema.
    let pretty = r#"{
        "namespace": "feedline.test",
        "type": "record",
        "doc": "a user, pretty-printed",
        "name": "User",
        "fields": [
            { "type": "long", "name": "id", "doc": "the id" },
            { "name": "name", "type": { "type": "string" } }
        ]
    }"#;
    assert_eq!(reg.register("users-value", pretty).await, id1);
    assert_eq!(
        reg.get("/subjects/users-value/versions").await.ok(),
        &json!([1, 2]),
        "no new version"
    );

    // Lookup under a subject.
    let found = reg
        .post("/subjects/users-value", &json!({ "schema": pretty }))
        .await;
    let body = found.ok();
    assert_eq!(body["subject"], json!("users-value"));
    assert_eq!(body["id"], json!(id1));
    assert_eq!(body["version"], json!(1));
    assert!(body["schema"].is_string());

    let all = reg
        .get("/schemas?subjectPrefix=users&latestOnly=true")
        .await;
    assert_eq!(all.ok().as_array().unwrap().len(), 1);
    assert_eq!(all.ok()[0]["version"], json!(2));
    assert_eq!(reg.get("/mode").await.ok(), &json!({"mode": "READWRITE"}));

    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_types_are_negotiated_and_any_json_body_is_accepted() {
    let reg = TestRegistry::start().await;
    let schema = record("Typed", &[ID]);
    let body = json!({ "schema": schema }).to_string();
    for content_type in [
        Some("application/vnd.schemaregistry.v1+json"),
        Some("application/vnd.schemaregistry+json"),
        Some("application/json"),
        None,
    ] {
        let answer = reg
            .post_raw("/subjects/typed-value/versions", body.clone(), content_type)
            .await;
        assert!(answer.ok()["id"].is_u64(), "{content_type:?}: {answer:?}");
    }
    let ask = |accept: &'static str| {
        reg.http
            .get(format!("{}/subjects", reg.url))
            .header(reqwest::header::ACCEPT, accept)
    };
    assert_eq!(
        reg.send(ask("application/json")).await.content_type,
        "application/json"
    );
    assert_eq!(
        reg.send(ask("application/vnd.schemaregistry.v1+json"))
            .await
            .content_type,
        V1_MEDIA_TYPE
    );
    assert_eq!(
        reg.send(ask("application/vnd.schemaregistry+json"))
            .await
            .content_type,
        "application/vnd.schemaregistry+json"
    );
    // `?normalize=true` and friends are accepted.
    let answer = reg
        .post(
            "/subjects/typed-value/versions?normalize=true&format=x",
            &json!({ "schema": schema, "schemaType": "AVRO", "references": [] }),
        )
        .await;
    assert!(answer.ok()["id"].is_u64());

    // Subjects may hold slashes, sent encoded as clients do.
    let answer = reg
        .post(
            "/subjects/team%2Fevents-value/versions",
            &json!({ "schema": schema }),
        )
        .await;
    let id = answer.ok()["id"].clone();
    assert_eq!(
        reg.get("/subjects").await.ok(),
        &json!(["team/events-value", "typed-value"])
    );
    assert_eq!(
        reg.get("/subjects/team%2Fevents-value/versions/1")
            .await
            .ok()["id"],
        id
    );

    let health = reg.get("/health").await;
    assert_eq!(health.ok()["status"], json!("ready"));
    let metrics = reg.get("/metrics").await;
    assert!(metrics.status.is_success());
    assert!(
        metrics
            .text
            .contains("feedline_registry_registrations_total{outcome=\"new_version\""),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("feedline_registry_lookups_total"));
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_comes_in_confluents_format() {
    let reg = TestRegistry::start().await;
    let id = reg.register("known-value", &record("Known", &[ID])).await;

    // Unknown subject, version, id.
    reg.get("/subjects/nope/versions").await.error(404, 40401);
    let message = reg.get("/subjects/nope/versions/1").await.error(404, 40401);
    assert_eq!(message, "Subject 'nope' not found.");
    let message = reg
        .get("/subjects/known-value/versions/7")
        .await
        .error(404, 40402);
    assert_eq!(message, "Version 7 not found.");
    reg.get("/subjects/known-value/versions/7/schema")
        .await
        .error(404, 40402);
    reg.get("/schemas/ids/9999").await.error(404, 40403);
    reg.get("/schemas/ids/9999/subjects")
        .await
        .error(404, 40403);
    reg.get("/schemas/ids/not-a-number").await.error(404, 40403);

    // Bad version strings.
    for bad in ["abc", "0", "-2", "99999999999"] {
        let message = reg
            .get(&format!("/subjects/known-value/versions/{bad}"))
            .await
            .error(422, 42202);
        assert!(message.contains(bad), "{message}");
    }
    reg.delete("/subjects/known-value/versions/abc")
        .await
        .error(422, 42202);

    // Malformed JSON bodies: 400, whatever the content type says.
    for content_type in [Some(V1_MEDIA_TYPE), Some("application/json"), None] {
        let message = reg
            .post_raw(
                "/subjects/known-value/versions",
                "{\"schema\": ".into(),
                content_type,
            )
            .await
            .error(400, 400);
        assert!(message.contains("not valid JSON"), "{message}");
    }
    reg.post_raw("/subjects/known-value/versions", String::new(), None)
        .await
        .error(400, 400);
    reg.send(reg.http.put(format!("{}/config", reg.url)).body("[1, 2"))
        .await
        .error(400, 400);
    reg.post(
        "/subjects/known-value/versions",
        &json!({ "schema": "\"string\"", "references": "nope" }),
    )
    .await
    .error(400, 400);

    // Invalid schemas: 42201 saying what is wrong.
    let message = reg
        .post(
            "/subjects/known-value/versions",
            &json!({ "schema": "{\"type\": \"record\"," }),
        )
        .await
        .error(422, 42201);
    assert!(message.contains("not valid JSON"), "{message}");
    let message = reg
        .post(
            "/subjects/known-value/versions",
            &json!({ "schema": record("Bad", &[r#"{"name":"a","type":"nope"}"#]) }),
        )
        .await
        .error(422, 42201);
    assert!(message.contains("not a valid Avro schema"), "{message}");
    let message = reg
        .post("/subjects/known-value/versions", &json!({}))
        .await
        .error(422, 42201);
    assert!(message.contains("empty"), "{message}");
    let message = reg
        .post(
            "/subjects/known-value/versions",
            &json!({ "schema": { "type": "string" } }),
        )
        .await
        .error(422, 42201);
    assert!(message.contains("must be a string"), "{message}");
    for unsupported in ["PROTOBUF", "JSON"] {
        let message = reg
            .post(
                "/subjects/other-value/versions",
                &json!({ "schemaType": unsupported, "schema": "{}" }),
            )
            .await
            .error(422, 42201);
        assert!(
            message.contains(&format!("{unsupported} is not supported")),
            "{message}"
        );
    }

    // Lookups.
    reg.post("/subjects/nope", &json!({ "schema": "\"string\"" }))
        .await
        .error(404, 40401);
    let message = reg
        .post("/subjects/known-value", &json!({ "schema": "\"string\"" }))
        .await
        .error(404, 40403);
    assert_eq!(message, "Schema not found");
    reg.post("/subjects/known-value", &json!({ "schema": "{oops" }))
        .await
        .error(422, 42201);

    // Compatibility checks.
    let check = json!({ "schema": record("Known", &[ID]) });
    reg.post("/compatibility/subjects/nope/versions/latest", &check)
        .await
        .error(404, 40401);
    reg.post("/compatibility/subjects/known-value/versions/5", &check)
        .await
        .error(404, 40402);
    reg.post("/compatibility/subjects/known-value/versions/zero", &check)
        .await
        .error(422, 42202);
    reg.post(
        "/compatibility/subjects/known-value/versions/latest",
        &json!({ "schema": "nope" }),
    )
    .await
    .error(422, 42201);

    // Config.
    let message = reg
        .put("/config", &json!({ "compatibility": "SIDEWAYS" }))
        .await
        .error(422, 42203);
    assert!(
        message.starts_with("Invalid compatibility level"),
        "{message}"
    );
    reg.put("/config/known-value", &json!({}))
        .await
        .error(422, 42203);
    let message = reg.get("/config/known-value").await.error(404, 40408);
    assert_eq!(
        message,
        "Subject 'known-value' does not have subject-level compatibility configured"
    );
    reg.delete("/config/known-value").await.error(404, 40408);

    // Unknown routes and methods.
    reg.get("/no/such/route").await.error(404, 404);
    reg.send(reg.http.patch(format!("{}/subjects", reg.url)))
        .await
        .error(405, 405);

    // None of this touched the registered schema.
    assert_eq!(reg.get("/subjects").await.ok(), &json!(["known-value"]));
    assert!(
        reg.get(&format!("/schemas/ids/{id}"))
            .await
            .ok()
            .is_object()
    );
    let metrics = reg.get("/metrics").await.text;
    assert!(
        metrics.contains("feedline_registry_errors_total{code=\"42201\""),
        "{metrics}"
    );
    reg.stop().await;
}
