//! A client written for Confluent's registry (`schema_registry_converter`) works unchanged.

mod common;

use apache_avro::types::Value as Avro;
use common::*;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions, get_schema_by_id, get_schema_by_subject,
    post_schema,
};
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedReference, SuppliedSchema,
};

fn sr(reg: &TestRegistry) -> SrSettings {
    SrSettings::new_builder(reg.url.clone())
        .no_proxy()
        .build()
        .expect("sr settings")
}

const PAYMENT: &str = r#"{"type":"record","name":"Payment","namespace":"feedline.test","fields":[
    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
    {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
    {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"status","type":{"type":"enum","name":"Status","symbols":["NEW","PAID"]}},
    {"name":"note","type":["null","string"],"default":null}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registry_converter_registers_and_fetches() {
    let reg = TestRegistry::start().await;
    let settings = sr(&reg);

    let supplied = SuppliedSchema::new(
        Some("feedline.test.Payment".into()),
        SchemaType::Avro,
        PAYMENT.into(),
    );
    let registered = post_schema(&settings, "payments-value".into(), supplied.clone())
        .await
        .expect("post_schema");
    let again = post_schema(&settings, "payments-value".into(), supplied)
        .await
        .expect("post_schema again");
    assert_eq!(registered.id, again.id);

    let by_id = get_schema_by_id(registered.id, &settings)
        .await
        .expect("get_schema_by_id");
    assert_eq!(by_id.id, registered.id);
    assert_eq!(by_id.schema_type, SchemaType::Avro);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&by_id.schema).unwrap(),
        serde_json::from_str::<serde_json::Value>(PAYMENT).unwrap()
    );

    let latest = get_schema_by_subject(
        &settings,
        &SubjectNameStrategy::TopicNameStrategy("payments".into(), false),
    )
    .await
    .expect("get_schema_by_subject");
    assert_eq!(latest.id, registered.id);
    assert_eq!(latest.version, Some(1));
    assert_eq!(
        get_all_subjects(&settings).await.expect("subjects"),
        vec!["payments-value".to_owned()]
    );
    assert_eq!(
        get_all_versions(&settings, "payments-value".into())
            .await
            .expect("versions"),
        vec![1]
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_values_round_trip_through_the_registry() {
    let reg = TestRegistry::start().await;
    let encoder = AvroEncoder::new(sr(&reg));
    let decoder = AvroDecoder::new(sr(&reg));
    let schema = record(
        "Heartbeat",
        &[
            ID,
            r#"{"name":"beat","type":"long"}"#,
            r#"{"name":"who","type":["null","string"],"default":null}"#,
        ],
    );
    let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
        "heartbeats".into(),
        false,
        SuppliedSchema::new(
            Some("feedline.test.Heartbeat".into()),
            SchemaType::Avro,
            schema,
        ),
    );
    let bytes = encoder
        .encode(
            vec![
                ("id", Avro::Long(7)),
                ("beat", Avro::Long(42)),
                ("who", Avro::Union(1, Box::new(Avro::String("me".into())))),
            ],
            strategy,
        )
        .await
        .expect("encode");
    // Confluent framing: magic byte 0, then the schema id the registry handed out.
    assert_eq!(bytes[0], 0);
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
    assert_eq!(
        reg.get("/subjects/heartbeats-value/versions/latest")
            .await
            .ok()["id"],
        serde_json::json!(id)
    );

    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    assert_eq!(
        decoded.value,
        Avro::Record(vec![
            ("id".into(), Avro::Long(7)),
            ("beat".into(), Avro::Long(42)),
            (
                "who".into(),
                Avro::Union(1, Box::new(Avro::String("me".into())))
            ),
        ])
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_work_through_the_client() {
    let reg = TestRegistry::start().await;
    let settings = sr(&reg);
    let address = r#"{"type":"record","name":"Address","namespace":"feedline.test","fields":[{"name":"city","type":"string"}]}"#;
    let person = r#"{"type":"record","name":"Person","namespace":"feedline.test","fields":[{"name":"name","type":"string"},{"name":"home","type":"Address"}]}"#;
    let supplied = SuppliedSchema::new(
        Some("feedline.test.Person".into()),
        SchemaType::Avro,
        person.into(),
    )
    .with_references(vec![SuppliedReference::new(
        "feedline.test.Address".into(),
        "address".into(),
        address.into(),
    )]);
    // The short name: the client inlines references by the short name (same namespace) or by
    // ".namespace.Name", not by "namespace.Name".
    let registered = post_schema(&settings, "people-value".into(), supplied.clone())
        .await
        .expect("post_schema with a reference");
    assert_eq!(registered.references.len(), 1);
    assert_eq!(registered.references[0].subject, "address");
    assert_eq!(registered.references[0].version, 1);

    let encoder = AvroEncoder::new(sr(&reg));
    let decoder = AvroDecoder::new(sr(&reg));
    let bytes = encoder
        .encode(
            vec![
                ("name", Avro::String("Ada".into())),
                (
                    "home",
                    Avro::Record(vec![("city".into(), Avro::String("London".into()))]),
                ),
            ],
            SubjectNameStrategy::TopicNameStrategyWithSchema("people".into(), false, supplied),
        )
        .await
        .expect("encode with a reference");
    let decoded = decoder
        .decode(Some(&bytes))
        .await
        .expect("decode with a reference");
    assert_eq!(
        decoded.value,
        Avro::Record(vec![
            ("name".into(), Avro::String("Ada".into())),
            (
                "home".into(),
                Avro::Record(vec![("city".into(), Avro::String("London".into()))])
            ),
        ])
    );
    reg.stop().await;
}
