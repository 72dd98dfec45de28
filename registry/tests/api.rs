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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_follow_confluents_rules() {
    let reg = TestRegistry::start().await;
    let id1 = reg.register("doomed-value", &record("Doomed", &[ID])).await;
    let id2 = reg
        .register("doomed-value", &record("Doomed", &[ID, EMAIL_DEFAULT]))
        .await;

    reg.delete("/subjects/doomed-value/versions/2?permanent=true")
        .await
        .error(404, 40407);
    assert_eq!(
        reg.delete("/subjects/doomed-value/versions/2").await.ok(),
        &json!(2)
    );
    reg.delete("/subjects/doomed-value/versions/2")
        .await
        .error(404, 40406);
    assert_eq!(
        reg.get("/subjects/doomed-value/versions").await.ok(),
        &json!([1])
    );
    assert_eq!(
        reg.get("/subjects/doomed-value/versions?deleted=true")
            .await
            .ok(),
        &json!([1, 2])
    );
    reg.get("/subjects/doomed-value/versions/2")
        .await
        .error(404, 40402);
    assert_eq!(
        reg.get("/subjects/doomed-value/versions/2?deleted=true")
            .await
            .ok()["id"],
        json!(id2)
    );
    assert_eq!(
        reg.get("/subjects/doomed-value/versions/latest").await.ok()["version"],
        json!(1)
    );

    reg.delete("/subjects/doomed-value?permanent=true")
        .await
        .error(404, 40405);
    assert_eq!(reg.delete("/subjects/doomed-value").await.ok(), &json!([1]));
    reg.delete("/subjects/doomed-value").await.error(404, 40404);
    assert_eq!(reg.get("/subjects").await.ok(), &json!([]));
    assert_eq!(
        reg.get("/subjects?deleted=true").await.ok(),
        &json!(["doomed-value"])
    );
    reg.get("/subjects/doomed-value/versions")
        .await
        .error(404, 40401);
    // Consumers still decode old messages: a soft-deleted schema is served by id.
    assert!(
        reg.get(&format!("/schemas/ids/{id1}"))
            .await
            .ok()
            .is_object()
    );
    assert_eq!(
        reg.get(&format!("/schemas/ids/{id1}/subjects")).await.ok(),
        &json!([])
    );
    assert_eq!(
        reg.get(&format!("/schemas/ids/{id1}/subjects?deleted=true"))
            .await
            .ok(),
        &json!(["doomed-value"])
    );

    assert_eq!(
        reg.delete("/subjects/doomed-value?permanent=true")
            .await
            .ok(),
        &json!([1, 2])
    );
    reg.get(&format!("/schemas/ids/{id1}"))
        .await
        .error(404, 40403);
    reg.get(&format!("/schemas/ids/{id2}"))
        .await
        .error(404, 40403);
    assert_eq!(reg.get("/subjects?deleted=true").await.ok(), &json!([]));
    reg.delete("/subjects/doomed-value").await.error(404, 40401);

    // Ids are never handed out twice, not even after a permanent delete.
    let id3 = reg.register("doomed-value", &record("Reborn", &[ID])).await;
    assert_eq!(id3, id2 + 1);
    assert_eq!(
        reg.get("/subjects/doomed-value/versions").await.ok(),
        &json!([1])
    );
    // Re-registering a permanently deleted schema gets a new id too.
    let again = reg.register("doomed-again", &record("Doomed", &[ID])).await;
    assert_eq!(again, id3 + 1);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_bring_named_types_from_other_subjects() {
    let reg = TestRegistry::start().await;
    let customer = record("Customer", &[ID, NAME]);
    let customer_id = reg.register("customer", &customer).await;
    let order = record(
        "Order",
        &[ID, r#"{"name":"customer","type":"feedline.test.Customer"}"#],
    );
    let references =
        json!([{ "name": "feedline.test.Customer", "subject": "customer", "version": 1 }]);

    let message = reg
        .post(
            "/subjects/orders-value/versions",
            &json!({ "schema": order }),
        )
        .await
        .error(422, 42201);
    assert!(message.contains("Customer"), "{message}");
    let message = reg
        .post(
            "/subjects/orders-value/versions",
            &json!({ "schema": order, "references": [{ "name": "feedline.test.Customer", "subject": "customer", "version": 9 }] }),
        )
        .await
        .error(422, 42201);
    assert!(message.contains("does not exist"), "{message}");

    let order_id = reg
        .post(
            "/subjects/orders-value/versions",
            &json!({ "schema": order, "schemaType": "AVRO", "references": references }),
        )
        .await
        .ok()["id"]
        .as_u64()
        .unwrap();
    assert_ne!(order_id, customer_id);
    // `-1` names the latest version and resolves to the same registration.
    let latest_ref =
        json!([{ "name": "feedline.test.Customer", "subject": "customer", "version": -1 }]);
    let again = reg
        .post(
            "/subjects/orders-value/versions",
            &json!({ "schema": order, "references": latest_ref }),
        )
        .await;
    assert_eq!(again.ok()["id"], json!(order_id));

    let by_id = reg.get(&format!("/schemas/ids/{order_id}")).await;
    assert_eq!(by_id.ok()["references"], references);
    let version = reg.get("/subjects/orders-value/versions/1").await;
    assert_eq!(version.ok()["references"], references);
    let found = reg
        .post(
            "/subjects/orders-value",
            &json!({ "schema": order, "references": references }),
        )
        .await;
    assert_eq!(found.ok()["id"], json!(order_id));
    assert_eq!(
        reg.get("/subjects/customer/versions/1/referencedby")
            .await
            .ok(),
        &json!([order_id])
    );

    // A referenced version cannot be deleted.
    let message = reg
        .delete("/subjects/customer/versions/1")
        .await
        .error(422, 42206);
    assert!(message.contains(&order_id.to_string()), "{message}");

    // Evolving the referenced type is checked with the reference resolved.
    let check = reg
        .post(
            "/compatibility/subjects/orders-value/versions/latest?verbose=true",
            &json!({ "schema": order, "references": references }),
        )
        .await;
    assert_eq!(check.ok()["is_compatible"], json!(true), "{check:?}");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatibility_levels_gate_registrations() {
    let reg = TestRegistry::start().await;
    let s = "people-value";
    reg.register(s, &record("Person", &[ID])).await;

    // BACKWARD (the default): a new field needs a default.
    assert_eq!(
        reg.get("/config").await.ok(),
        &json!({"compatibilityLevel": "BACKWARD"})
    );
    let no_default = record("Person", &[ID, EMAIL]);
    let message = reg
        .post(
            &format!("/subjects/{s}/versions"),
            &json!({ "schema": no_default }),
        )
        .await
        .error(409, 409);
    assert!(message.contains("'email'"), "{message}");
    assert!(message.contains("incompatible"), "{message}");
    let verbose = reg
        .post(
            &format!("/compatibility/subjects/{s}/versions/latest?verbose=true"),
            &json!({ "schema": no_default }),
        )
        .await;
    assert_eq!(verbose.ok()["is_compatible"], json!(false));
    let messages = verbose.ok()["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m.as_str().unwrap().contains("'email'")),
        "{messages:?}"
    );
    let terse = reg
        .post(
            &format!("/compatibility/subjects/{s}/versions/1"),
            &json!({ "schema": no_default }),
        )
        .await;
    assert_eq!(terse.ok(), &json!({"is_compatible": false}));
    let with_default = record("Person", &[ID, EMAIL_DEFAULT]);
    let ok = reg
        .post(
            &format!("/compatibility/subjects/{s}/versions?verbose=true"),
            &json!({ "schema": with_default }),
        )
        .await;
    assert_eq!(ok.ok(), &json!({"is_compatible": true, "messages": []}));
    reg.register(s, &with_default).await;

    // BACKWARD checks the latest only; BACKWARD_TRANSITIVE every version.
    let email_required = record("Person", &[ID, EMAIL]);
    reg.set_level(Some(s), "BACKWARD_TRANSITIVE").await;
    let message = reg
        .post(
            &format!("/subjects/{s}/versions"),
            &json!({ "schema": email_required }),
        )
        .await
        .error(409, 409);
    assert!(message.contains("version 1"), "{message}");
    reg.set_level(Some(s), "BACKWARD").await;
    reg.register(s, &email_required).await;

    // FORWARD: old readers must read new data, so a field they need cannot go.
    let f = "forward-value";
    reg.set_level(Some(f), "FORWARD").await;
    reg.register(f, &record("F", &[ID, NAME])).await;
    let message = reg
        .post(
            &format!("/subjects/{f}/versions"),
            &json!({ "schema": record("F", &[ID]) }),
        )
        .await
        .error(409, 409);
    assert!(message.contains("'name'"), "{message}");
    // ...while adding a field without a default is fine forward.
    reg.register(f, &record("F", &[ID, NAME, EMAIL])).await;

    // FULL: both ways; FULL_TRANSITIVE: both ways against every version.
    let full = "full-value";
    reg.set_level(Some(full), "FULL").await;
    reg.register(full, &record("G", &[ID])).await;
    reg.post(
        &format!("/subjects/{full}/versions"),
        &json!({ "schema": record("G", &[ID, EMAIL]) }),
    )
    .await
    .error(409, 409);
    reg.register(full, &record("G", &[ID, EMAIL_DEFAULT])).await;
    reg.set_level(Some(full), "FULL_TRANSITIVE").await;
    reg.register(
        full,
        &record(
            "G",
            &[
                ID,
                EMAIL_DEFAULT,
                r#"{"name":"n","type":"int","default":0}"#,
            ],
        ),
    )
    .await;
    reg.post(
        &format!("/subjects/{full}/versions"),
        &json!({ "schema": record("G", &[ID, r#"{"name":"n","type":"int","default":0}"#, EMAIL]) }),
    )
    .await
    .error(409, 409);
    reg.set_level(Some(full), "FORWARD_TRANSITIVE").await;
    reg.post(
        &format!("/subjects/{full}/versions"),
        &json!({ "schema": record("G", &[r#"{"name":"n","type":"int","default":0}"#]) }),
    )
    .await
    .error(409, 409);

    // NONE accepts anything; the subject's level overrides the global one.
    reg.set_level(None, "NONE").await;
    let n = "anything-value";
    reg.register(n, &record("H", &[ID])).await;
    reg.register(n, &record("H", &[r#"{"name":"id","type":"string"}"#]))
        .await;
    reg.register(n, "\"string\"").await;
    reg.set_level(Some(n), "BACKWARD").await;
    reg.post(
        &format!("/subjects/{n}/versions"),
        &json!({ "schema": "\"int\"" }),
    )
    .await
    .error(409, 409);
    assert_eq!(
        reg.get(&format!("/config/{n}")).await.ok(),
        &json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        reg.get("/config/unconfigured?defaultToGlobal=true")
            .await
            .ok(),
        &json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        reg.delete(&format!("/config/{n}")).await.ok(),
        &json!({"compatibilityLevel": "BACKWARD"})
    );
    reg.get(&format!("/config/{n}")).await.error(404, 40408);
    reg.register(n, "\"int\"").await;
    assert_eq!(
        reg.delete("/config").await.ok(),
        &json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        reg.get("/config").await.ok(),
        &json!({"compatibilityLevel": "BACKWARD"})
    );
    reg.stop().await;
}
