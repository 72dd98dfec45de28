//! Data written with one version of a schema decodes with another (reader/writer
//! resolution), through the framed codec and its schema-id cache.

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, FixedResolver, SchemaResolver};
use feedline_schemas::types::*;
use feedline_schemas::{ORDER_EVENTS, envelope_schema};
use serde::{Deserialize, Serialize};

const V1: &str = r#"{"type":"record","name":"PlaceOrder","namespace":"feedline.orders","fields":[
  {"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"total_cents","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"PlaceOrder","namespace":"feedline.orders","fields":[
  {"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"total_cents","type":"long"},
  {"name":"currency","type":"string","default":"EUR"}]}"#;

/// The v2 type, as a newer service would have it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename = "PlaceOrder")]
struct PlaceOrderV2 {
    order_id: String,
    customer_id: String,
    total_cents: i64,
    currency: String,
}

#[tokio::test]
async fn old_data_reads_with_a_newer_schema_taking_the_default() {
    let resolver = Arc::new(FixedResolver::new());
    let old: AvroEncoder<PlaceOrder> = AvroEncoder::new(&*resolver, "s", V1).await.unwrap();
    let bytes = old
        .encode(&PlaceOrder {
            order_id: "o".into(),
            customer_id: "c".into(),
            total_cents: 6000,
        })
        .unwrap();
    let reader: AvroDecoder<PlaceOrderV2, _> =
        AvroDecoder::new(resolver.clone(), V2, None).unwrap();
    assert!(
        reader.decode_cached(&bytes).unwrap().is_none(),
        "unknown id needs a look-up first"
    );
    let decoded = reader.decode(&bytes).await.unwrap();
    assert_eq!(
        decoded,
        PlaceOrderV2 {
            order_id: "o".into(),
            customer_id: "c".into(),
            total_cents: 6000,
            currency: "EUR".into()
        }
    );
    // Now cached: no look-up.
    assert!(reader.decode_cached(&bytes).unwrap().is_some());
}

#[tokio::test]
async fn new_data_reads_with_an_older_schema_dropping_the_new_field() {
    let resolver = Arc::new(FixedResolver::new());
    let new: AvroEncoder<PlaceOrderV2> = AvroEncoder::new(&*resolver, "s", V2).await.unwrap();
    let value = PlaceOrderV2 {
        order_id: "o".into(),
        customer_id: "c".into(),
        total_cents: 1,
        currency: "USD".into(),
    };
    let bytes = new.encode(&value).unwrap();
    let reader: AvroDecoder<PlaceOrder, _> = AvroDecoder::new(resolver.clone(), V1, None).unwrap();
    let decoded = reader.decode(&bytes).await.unwrap();
    assert_eq!(
        decoded,
        PlaceOrder {
            order_id: "o".into(),
            customer_id: "c".into(),
            total_cents: 1
        }
    );
}

#[tokio::test]
async fn an_envelope_whose_union_grew_still_reads_old_data() {
    // v2 of order-events adds a payload type at the end of the union: old data still reads.
    let v1 = envelope_schema(ORDER_EVENTS).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(v1).unwrap();
    let payload = json["fields"].as_array_mut().unwrap().last_mut().unwrap();
    payload["type"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "type": "record", "name": "OrderShipped", "namespace": "feedline.orders",
            "fields": [{"name": "order_id", "type": "string"}]
        }));
    let v2 = json.to_string();

    let resolver = Arc::new(FixedResolver::new());
    let old: AvroEncoder<OrderEvent> = AvroEncoder::new(&*resolver, "order-events-value", v1)
        .await
        .unwrap();
    let event = OrderEvent::new(
        "test",
        "0b9d3c7a-8e21-4f6b-a1d2-9c8b7a6f5e4d".into(),
        None,
        OrderEventPayload::OrderCancelled(OrderCancelled {
            order_id: "6f1f7c4e-3b0a-4d5e-9a43-1c2b3d4e5f60".into(),
            customer_id: "8a6e0804-2bd0-4672-b79d-d97027f9071a".into(),
            total_cents: 5,
            reason: Some("r".into()),
        }),
    );
    let bytes = old.encode(&event).unwrap();
    // The v2 reader maps the union by name; OrderEvent here only knows v1's members, which is
    // exactly what an older consumer of the newer schema looks like for these messages.
    let reader: AvroDecoder<OrderEvent, _> = AvroDecoder::new(resolver.clone(), &v2, None).unwrap();
    assert_eq!(reader.decode(&bytes).await.unwrap(), event);

    // Data written by a producer whose union lists the same records in another order is
    // read by name (apache-avro alone would take OrderCreated, the first record it fits).
    let mut reversed: serde_json::Value = serde_json::from_str(v1).unwrap();
    reversed["fields"]
        .as_array_mut()
        .unwrap()
        .last_mut()
        .unwrap()["type"]
        .as_array_mut()
        .unwrap()
        .reverse();
    let reversed_text = reversed.to_string();
    let reversed_schema = Schema::parse_str(&reversed_text).unwrap();
    let v1_schema = Schema::parse_str(v1).unwrap();
    let reader_v1 = GenericDatumReader::builder(&v1_schema).build().unwrap();
    let Value::Record(mut fields) = reader_v1.read_value(&mut &bytes[5..]).unwrap() else {
        panic!()
    };
    let Value::Union(index, inner) = fields.pop().unwrap().1 else {
        panic!()
    };
    fields.push(("payload".into(), Value::Union(3 - index, inner)));
    let body = GenericDatumWriter::builder(&reversed_schema)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(fields))
        .unwrap();
    let id = resolver
        .register("other-subject", &reversed_text)
        .await
        .unwrap();
    let mut framed = vec![0];
    framed.extend_from_slice(&id.to_be_bytes());
    framed.extend_from_slice(&body);
    let reader: AvroDecoder<OrderEvent, _> = AvroDecoder::new(resolver.clone(), v1, None).unwrap();
    assert_eq!(reader.decode(&framed).await.unwrap(), event);
}

#[tokio::test]
async fn unknown_ids_and_garbage_are_typed_errors() {
    let resolver = Arc::new(FixedResolver::new());
    let reader: AvroDecoder<PlaceOrder, _> = AvroDecoder::new(resolver, V1, None).unwrap();
    let unknown = reader.decode(&[0, 0, 0, 0, 42, 1, 2]).await.unwrap_err();
    assert!(
        matches!(unknown, CodecError::UnknownSchemaId(42)),
        "{unknown}"
    );
    assert!(unknown.is_poison());
    let not_avro = reader.decode(b"{\"order_id\": 1}").await.unwrap_err();
    assert!(matches!(not_avro, CodecError::BadMagic(b'{')));

    let resolver = Arc::new(FixedResolver::new());
    let enc: AvroEncoder<PlaceOrder> = AvroEncoder::new(&*resolver, "s", V1).await.unwrap();
    let reader: AvroDecoder<PlaceOrder, _> =
        AvroDecoder::new(resolver, V1, Some(enc.schema_id())).unwrap();
    let mut truncated = enc
        .encode(&PlaceOrder {
            order_id: "o".into(),
            customer_id: "c".into(),
            total_cents: 1,
        })
        .unwrap();
    truncated.truncate(7);
    let err = reader.decode(&truncated).await.unwrap_err();
    assert!(matches!(err, CodecError::Decode { id: 1, .. }), "{err}");
    assert_eq!(err.kind(), "decode");
}
