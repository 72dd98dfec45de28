//! Each Rust type matches its `.avsc`: a value encodes against the schema with the
//! schema-aware serializer (which fails on a missing, extra or mistyped field), the bytes
//! validate as that schema's data, and decode back to an equal value.

use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use feedline::codec::{AvroDecoder, AvroEncoder, FixedResolver, SchemaResolver};
use feedline::contracts::{encoder, register_all};
use feedline_schemas::contracts::{FILES, TOPIC_ENVELOPES};
use feedline_schemas::types::*;
use feedline_schemas::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

const C: &str = "6f1f7c4e-3b0a-4d5e-9a43-1c2b3d4e5f60";
const O: &str = "0b9d3c7a-8e21-4f6b-a1d2-9c8b7a6f5e4d";

/// A fixed envelope of type `$ty` around `$payload`.
macro_rules! meta {
    ($ty:ident, $payload:expr) => {
        $ty {
            event_id: "8a6e0804-2bd0-4672-b79d-d97027f9071a".into(),
            occurred_at: 1_764_000_000_123,
            correlation_id: O.into(),
            causation_id: Some(C.into()),
            producer: "test".into(),
            payload: $payload,
        }
    };
}

fn file(name: &str) -> &'static str {
    FILES.iter().find(|(n, _)| *n == name).unwrap().1
}

/// Encodes with the schema, checks the generic view validates, decodes back.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    schema_text: &str,
    value: &T,
) {
    let schema = Schema::parse_str(schema_text).unwrap();
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let bytes = writer
        .write_ser_to_vec(value)
        .unwrap_or_else(|e| panic!("{value:?} does not fit: {e}"));
    let reader = GenericDatumReader::builder(&schema).build().unwrap();
    let generic = reader.read_value(&mut bytes.as_slice()).unwrap();
    assert!(
        generic.validate(&schema),
        "{generic:?} is valid data of the schema"
    );
    let back: T = reader.read_deser(&mut bytes.as_slice()).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn every_record_type_matches_its_file() {
    round_trip(
        file("PlaceOrder"),
        &PlaceOrder {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 6000,
        },
    );
    round_trip(
        file("CancelOrder"),
        &CancelOrder {
            order_id: O.into(),
            customer_id: C.into(),
            reason: Some("changed my mind".into()),
        },
    );
    round_trip(
        file("CancelOrder"),
        &CancelOrder {
            order_id: O.into(),
            customer_id: C.into(),
            reason: None,
        },
    );
    round_trip(
        file("RegisterCustomer"),
        &RegisterCustomer {
            customer_id: C.into(),
            name: "Ada".into(),
            credit_limit_cents: 10_000,
            tenant: Some("acme".into()),
        },
    );
    round_trip(
        file("ChangeCreditLimit"),
        &ChangeCreditLimit {
            customer_id: C.into(),
            credit_limit_cents: 20_000,
        },
    );
    round_trip(
        file("OrderCreated"),
        &OrderCreated {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 1,
        },
    );
    round_trip(
        file("OrderApproved"),
        &OrderApproved {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 2,
        },
    );
    round_trip(
        file("OrderRejected"),
        &OrderRejected {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 3,
            reason: "limit".into(),
        },
    );
    round_trip(
        file("OrderCancelled"),
        &OrderCancelled {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 4,
            reason: None,
        },
    );
    round_trip(
        file("CustomerRegistered"),
        &CustomerRegistered {
            customer_id: C.into(),
            name: "Ada".into(),
            credit_limit_cents: 5,
            tenant: Some("acme".into()),
        },
    );
    round_trip(
        file("CustomerRegistered"),
        &CustomerRegistered {
            customer_id: C.into(),
            name: "Ada".into(),
            credit_limit_cents: 5,
            tenant: None,
        },
    );
    round_trip(
        file("CreditLimitChanged"),
        &CreditLimitChanged {
            customer_id: C.into(),
            credit_limit_cents: 6,
            credit_reserved_cents: 1,
        },
    );
    round_trip(
        file("CreditReserved"),
        &CreditReserved {
            order_id: O.into(),
            customer_id: C.into(),
            amount_cents: 7,
            credit_reserved_cents: 7,
            credit_limit_cents: 10,
        },
    );
    round_trip(
        file("CreditLimitExceeded"),
        &CreditLimitExceeded {
            order_id: O.into(),
            customer_id: C.into(),
            amount_cents: 8,
            credit_available_cents: 2,
            reason: "limit".into(),
        },
    );
    round_trip(
        file("CreditReleased"),
        &CreditReleased {
            order_id: O.into(),
            customer_id: C.into(),
            amount_cents: 9,
            credit_reserved_cents: 0,
        },
    );
}

#[test]
fn every_envelope_type_matches_its_topic_schema_for_every_payload() {
    let place = PlaceOrder {
        order_id: O.into(),
        customer_id: C.into(),
        total_cents: 6000,
    };
    let cancel = CancelOrder {
        order_id: O.into(),
        customer_id: C.into(),
        reason: None,
    };
    for p in [
        OrderCommandPayload::PlaceOrder(place),
        OrderCommandPayload::CancelOrder(cancel),
    ] {
        round_trip(
            envelope_schema(ORDER_COMMANDS).unwrap(),
            &meta!(OrderCommand, p),
        );
    }
    let created = OrderCreated {
        order_id: O.into(),
        customer_id: C.into(),
        total_cents: 1,
    };
    let approved = OrderApproved {
        order_id: O.into(),
        customer_id: C.into(),
        total_cents: 1,
    };
    let rejected = OrderRejected {
        order_id: O.into(),
        customer_id: C.into(),
        total_cents: 1,
        reason: "r".into(),
    };
    let cancelled = OrderCancelled {
        order_id: O.into(),
        customer_id: C.into(),
        total_cents: 1,
        reason: Some("x".into()),
    };
    for p in [
        OrderEventPayload::OrderCreated(created),
        OrderEventPayload::OrderApproved(approved),
        OrderEventPayload::OrderRejected(rejected),
        OrderEventPayload::OrderCancelled(cancelled),
    ] {
        round_trip(
            envelope_schema(ORDER_EVENTS).unwrap(),
            &meta!(OrderEvent, p),
        );
    }
    let register = RegisterCustomer {
        customer_id: C.into(),
        name: "Ada".into(),
        credit_limit_cents: 10_000,
        tenant: None,
    };
    let change = ChangeCreditLimit {
        customer_id: C.into(),
        credit_limit_cents: 1,
    };
    for p in [
        CustomerCommandPayload::RegisterCustomer(register),
        CustomerCommandPayload::ChangeCreditLimit(change),
    ] {
        round_trip(
            envelope_schema(CUSTOMER_COMMANDS).unwrap(),
            &meta!(CustomerCommand, p),
        );
    }
    let registered = CustomerRegistered {
        customer_id: C.into(),
        name: "Ada".into(),
        credit_limit_cents: 1,
        tenant: None,
    };
    let changed = CreditLimitChanged {
        customer_id: C.into(),
        credit_limit_cents: 1,
        credit_reserved_cents: 0,
    };
    for p in [
        CustomerEventPayload::CustomerRegistered(registered),
        CustomerEventPayload::CreditLimitChanged(changed),
    ] {
        round_trip(
            envelope_schema(CUSTOMER_EVENTS).unwrap(),
            &meta!(CustomerEvent, p),
        );
    }
    let reserved = CreditReserved {
        order_id: O.into(),
        customer_id: C.into(),
        amount_cents: 1,
        credit_reserved_cents: 1,
        credit_limit_cents: 2,
    };
    let exceeded = CreditLimitExceeded {
        order_id: O.into(),
        customer_id: C.into(),
        amount_cents: 1,
        credit_available_cents: 0,
        reason: "r".into(),
    };
    let released = CreditReleased {
        order_id: O.into(),
        customer_id: C.into(),
        amount_cents: 1,
        credit_reserved_cents: 0,
    };
    for p in [
        CreditEventPayload::CreditReserved(reserved),
        CreditEventPayload::CreditLimitExceeded(exceeded),
        CreditEventPayload::CreditReleased(released),
    ] {
        round_trip(
            envelope_schema(CREDIT_EVENTS).unwrap(),
            &meta!(CreditEvent, p),
        );
    }
}

#[test]
fn envelope_schemas_are_self_contained_and_keep_defaults() {
    for (topic, _) in TOPIC_ENVELOPES {
        let text = envelope_schema(topic).unwrap();
        // Parses alone: no reference to a type defined elsewhere.
        Schema::parse_str(text).unwrap_or_else(|e| panic!("{topic}: {e}"));
        assert!(
            text.contains("\"default\":null"),
            "{topic}: defaults survive inlining"
        );
    }
}

#[test]
fn every_file_parses_with_the_others() {
    let texts: Vec<&str> = FILES.iter().map(|(_, t)| *t).collect();
    let parsed = Schema::parse_list(&texts).unwrap();
    assert_eq!(parsed.len(), FILES.len());
}

#[tokio::test]
async fn framed_codec_round_trips_an_envelope() {
    let resolver = Arc::new(FixedResolver::new());
    let kafka = feedline::Settings::from_toml("").unwrap().kafka;
    let encoder: AvroEncoder<OrderEvent> = encoder(&*resolver, &kafka, ORDER_EVENTS).await.unwrap();
    let value = meta!(
        OrderEvent,
        OrderEventPayload::OrderApproved(OrderApproved {
            order_id: O.into(),
            customer_id: C.into(),
            total_cents: 6000
        })
    );
    let bytes = encoder.encode(&value).unwrap();
    assert_eq!(bytes[0], 0);
    assert_eq!(
        u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
        encoder.schema_id()
    );
    let decoder: AvroDecoder<OrderEvent, _> = AvroDecoder::new(
        resolver.clone(),
        envelope_schema(ORDER_EVENTS).unwrap(),
        Some(encoder.schema_id()),
    )
    .unwrap();
    assert_eq!(decoder.decode(&bytes).await.unwrap(), value);
    // Same again through the cache (no own id given).
    let cold: AvroDecoder<OrderEvent, _> = AvroDecoder::new(
        resolver.clone(),
        envelope_schema(ORDER_EVENTS).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(cold.decode(&bytes).await.unwrap(), value);
    let ids = register_all(&*resolver, &kafka).await.unwrap();
    assert_eq!(
        ids[ORDER_EVENTS],
        encoder.schema_id(),
        "registering again returns the same id"
    );
    assert_eq!(
        resolver.schema(ids[ORDER_EVENTS]).await.unwrap(),
        envelope_schema(ORDER_EVENTS).unwrap()
    );
}

#[test]
fn every_avsc_on_disk_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded);
}
