//! The REST API's subject lifecycle against a registry on the real broker: deletes,
//! references across subjects and the compatibility levels that gate registrations.

mod common;

use common::*;
use serde_json::json;

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
