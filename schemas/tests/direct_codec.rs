//! The direct Avro path (`feedline::codec::DirectCodec`, used by `AvroEncoder` and by
//! `AvroDecoder` for its own schema) against apache-avro, for every contract type and every
//! branch of every envelope: the same bytes out, the same values back in.

use std::fmt::Debug;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use feedline::codec::{AvroDecoder, AvroEncoder, CodecError, DirectCodec, FixedResolver};
use feedline::contracts::encoder;
use feedline_schemas::contracts::FILES;
use feedline_schemas::types::*;
use feedline_schemas::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Strings worth checking: empty, ASCII, multi-byte UTF-8, a UUID, one longer than 63
/// bytes (a two-byte length).
const STRINGS: &[&str] = &[
    "",
    "8a6e0804-2bd0-4672-b79d-d97027f9071a",
    "grüße, 世界 🚀 — ñ",
    "x",
    "a reason long enough that its length takes two bytes of varint, over sixty-three",
];

/// Numbers around every varint length boundary, negative ones and the extremes.
const LONGS: &[i64] = &[
    0,
    1,
    -1,
    63,
    -64,
    64,
    -65,
    6000,
    -123_456_789,
    i32::MAX as i64 + 1,
    i64::MAX,
    i64::MIN,
];

fn s(i: usize) -> String {
    STRINGS[i % STRINGS.len()].to_owned()
}

fn n(i: usize) -> i64 {
    LONGS[i % LONGS.len()]
}

fn opt(i: usize) -> Option<String> {
    (!i.is_multiple_of(3)).then(|| s(i + 1))
}

/// As many values as it takes for every string, number and option case to show in every
/// field position.
const CASES: usize = 24;

fn place_order(i: usize) -> PlaceOrder {
    PlaceOrder {
        order_id: s(i),
        customer_id: s(i + 1),
        total_cents: n(i),
    }
}
fn cancel_order(i: usize) -> CancelOrder {
    CancelOrder {
        order_id: s(i),
        customer_id: s(i + 2),
        reason: opt(i),
    }
}
fn register_customer(i: usize) -> RegisterCustomer {
    RegisterCustomer {
        customer_id: s(i),
        name: s(i + 3),
        credit_limit_cents: n(i),
        tenant: None,
    }
}
fn change_credit_limit(i: usize) -> ChangeCreditLimit {
    ChangeCreditLimit {
        customer_id: s(i),
        credit_limit_cents: n(i + 1),
    }
}
fn order_created(i: usize) -> OrderCreated {
    OrderCreated {
        order_id: s(i),
        customer_id: s(i + 1),
        total_cents: n(i),
    }
}
fn order_approved(i: usize) -> OrderApproved {
    OrderApproved {
        order_id: s(i + 1),
        customer_id: s(i),
        total_cents: n(i + 2),
    }
}
fn order_rejected(i: usize) -> OrderRejected {
    OrderRejected {
        order_id: s(i),
        customer_id: s(i + 1),
        total_cents: n(i),
        reason: s(i + 2),
    }
}
fn order_cancelled(i: usize) -> OrderCancelled {
    OrderCancelled {
        order_id: s(i),
        customer_id: s(i + 1),
        total_cents: n(i + 3),
        reason: opt(i),
    }
}
fn customer_registered(i: usize) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: s(i),
        name: s(i + 2),
        credit_limit_cents: n(i),
        tenant: None,
    }
}
fn credit_limit_changed(i: usize) -> CreditLimitChanged {
    CreditLimitChanged {
        customer_id: s(i),
        credit_limit_cents: n(i),
        credit_reserved_cents: n(i + 5),
    }
}
fn credit_reserved(i: usize) -> CreditReserved {
    CreditReserved {
        order_id: s(i),
        customer_id: s(i + 1),
        amount_cents: n(i),
        credit_reserved_cents: n(i + 1),
        credit_limit_cents: n(i + 2),
    }
}
fn credit_limit_exceeded(i: usize) -> CreditLimitExceeded {
    CreditLimitExceeded {
        order_id: s(i),
        customer_id: s(i + 1),
        amount_cents: n(i),
        credit_available_cents: n(i + 7),
        reason: s(i + 3),
    }
}
fn credit_released(i: usize) -> CreditReleased {
    CreditReleased {
        order_id: s(i),
        customer_id: s(i + 1),
        amount_cents: n(i + 4),
        credit_reserved_cents: n(i),
    }
}

/// An envelope around `payload`, its metadata varied by `i` too.
macro_rules! envelope {
    ($ty:ident, $i:expr, $payload:expr) => {
        $ty {
            event_id: s($i),
            occurred_at: n($i + 6),
            correlation_id: s($i + 4),
            causation_id: opt($i + 1),
            producer: s($i + 2),
            payload: $payload,
        }
    };
}

fn file(name: &str) -> &'static str {
    FILES.iter().find(|(n, _)| *n == name).unwrap().1
}

/// The direct codec writes apache-avro's bytes and reads them back to the same value.
fn same_as_apache<T>(schema_text: &str, values: impl IntoIterator<Item = T>) -> usize
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let schema = Schema::parse_str(schema_text).unwrap();
    let direct = DirectCodec::new(&schema).expect("contract schemas are not recursive");
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let reader = GenericDatumReader::builder(&schema).build().unwrap();
    let mut checked = 0;
    for value in values {
        let expected = writer.write_ser_to_vec(&value).unwrap();
        let mut out = vec![];
        direct
            .encode(&value, &mut out)
            .unwrap_or_else(|e| panic!("{value:?}: {e}"));
        assert_eq!(out, expected, "bytes of {value:?}");
        let back: T = direct.decode(&expected).unwrap();
        assert_eq!(back, value);
        let apache_back: T = reader.read_deser(&mut expected.as_slice()).unwrap();
        assert_eq!(apache_back, value);
        checked += 1;
    }
    checked
}

#[test]
fn every_record_type_encodes_and_decodes_as_apache_avro_does() {
    let cases = 0..CASES;
    same_as_apache(file("PlaceOrder"), cases.clone().map(place_order));
    same_as_apache(file("CancelOrder"), cases.clone().map(cancel_order));
    same_as_apache(
        file("RegisterCustomer"),
        cases.clone().map(register_customer),
    );
    same_as_apache(
        file("ChangeCreditLimit"),
        cases.clone().map(change_credit_limit),
    );
    same_as_apache(file("OrderCreated"), cases.clone().map(order_created));
    same_as_apache(file("OrderApproved"), cases.clone().map(order_approved));
    same_as_apache(file("OrderRejected"), cases.clone().map(order_rejected));
    same_as_apache(file("OrderCancelled"), cases.clone().map(order_cancelled));
    same_as_apache(
        file("CustomerRegistered"),
        cases.clone().map(customer_registered),
    );
    same_as_apache(
        file("CreditLimitChanged"),
        cases.clone().map(credit_limit_changed),
    );
    same_as_apache(file("CreditReserved"), cases.clone().map(credit_reserved));
    same_as_apache(
        file("CreditLimitExceeded"),
        cases.clone().map(credit_limit_exceeded),
    );
    same_as_apache(file("CreditReleased"), cases.map(credit_released));
}

#[test]
fn every_envelope_branch_encodes_and_decodes_as_apache_avro_does() {
    let order_commands = (0..CASES).flat_map(|i| {
        [
            envelope!(
                OrderCommand,
                i,
                OrderCommandPayload::PlaceOrder(place_order(i))
            ),
            envelope!(
                OrderCommand,
                i,
                OrderCommandPayload::CancelOrder(cancel_order(i))
            ),
        ]
    });
    assert_eq!(
        same_as_apache(envelope_schema(ORDER_COMMANDS).unwrap(), order_commands),
        2 * CASES
    );
    let order_events = (0..CASES).flat_map(|i| {
        [
            envelope!(
                OrderEvent,
                i,
                OrderEventPayload::OrderCreated(order_created(i))
            ),
            envelope!(
                OrderEvent,
                i,
                OrderEventPayload::OrderApproved(order_approved(i))
            ),
            envelope!(
                OrderEvent,
                i,
                OrderEventPayload::OrderRejected(order_rejected(i))
            ),
            envelope!(
                OrderEvent,
                i,
                OrderEventPayload::OrderCancelled(order_cancelled(i))
            ),
        ]
    });
    assert_eq!(
        same_as_apache(envelope_schema(ORDER_EVENTS).unwrap(), order_events),
        4 * CASES
    );
    let customer_commands = (0..CASES).flat_map(|i| {
        [
            envelope!(
                CustomerCommand,
                i,
                CustomerCommandPayload::RegisterCustomer(register_customer(i))
            ),
            envelope!(
                CustomerCommand,
                i,
                CustomerCommandPayload::ChangeCreditLimit(change_credit_limit(i))
            ),
        ]
    });
    assert_eq!(
        same_as_apache(
            envelope_schema(CUSTOMER_COMMANDS).unwrap(),
            customer_commands
        ),
        2 * CASES
    );
    let customer_events = (0..CASES).flat_map(|i| {
        [
            envelope!(
                CustomerEvent,
                i,
                CustomerEventPayload::CustomerRegistered(customer_registered(i))
            ),
            envelope!(
                CustomerEvent,
                i,
                CustomerEventPayload::CreditLimitChanged(credit_limit_changed(i))
            ),
        ]
    });
    assert_eq!(
        same_as_apache(envelope_schema(CUSTOMER_EVENTS).unwrap(), customer_events),
        2 * CASES
    );
    let credit_events = (0..CASES).flat_map(|i| {
        [
            envelope!(
                CreditEvent,
                i,
                CreditEventPayload::CreditReserved(credit_reserved(i))
            ),
            envelope!(
                CreditEvent,
                i,
                CreditEventPayload::CreditLimitExceeded(credit_limit_exceeded(i))
            ),
            envelope!(
                CreditEvent,
                i,
                CreditEventPayload::CreditReleased(credit_released(i))
            ),
        ]
    });
    assert_eq!(
        same_as_apache(envelope_schema(CREDIT_EVENTS).unwrap(), credit_events),
        3 * CASES
    );
}

/// The framed codec takes the direct path for the contracts, and its output is what the
/// apache-avro writer frames.
#[tokio::test]
async fn the_framed_codec_uses_the_direct_path_for_every_topic() {
    let resolver = Arc::new(FixedResolver::new());
    let kafka = feedline::Settings::from_toml("").unwrap().kafka;
    let events: AvroEncoder<OrderEvent> = encoder(&*resolver, &kafka, ORDER_EVENTS).await.unwrap();
    assert!(events.uses_direct_path());
    let decoder: AvroDecoder<OrderEvent, _> = AvroDecoder::new(
        resolver.clone(),
        envelope_schema(ORDER_EVENTS).unwrap(),
        Some(events.schema_id()),
    )
    .unwrap();
    assert!(decoder.uses_direct_path());
    let schema = Schema::parse_str(envelope_schema(ORDER_EVENTS).unwrap()).unwrap();
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    for i in 0..CASES {
        let value = envelope!(
            OrderEvent,
            i,
            OrderEventPayload::OrderCancelled(order_cancelled(i))
        );
        let framed = events.encode(&value).unwrap();
        assert_eq!(framed[5..], writer.write_ser_to_vec(&value).unwrap()[..]);
        assert_eq!(decoder.decode_cached(&framed).unwrap(), Some(value));
    }
    assert!(events.uses_direct_path() && decoder.uses_direct_path());

    // Other topics' encoders too.
    let c: AvroEncoder<OrderCommand> = encoder(&*resolver, &kafka, ORDER_COMMANDS).await.unwrap();
    let cc: AvroEncoder<CustomerCommand> = encoder(&*resolver, &kafka, CUSTOMER_COMMANDS)
        .await
        .unwrap();
    let ce: AvroEncoder<CustomerEvent> =
        encoder(&*resolver, &kafka, CUSTOMER_EVENTS).await.unwrap();
    let cr: AvroEncoder<CreditEvent> = encoder(&*resolver, &kafka, CREDIT_EVENTS).await.unwrap();
    assert!(
        c.uses_direct_path()
            && cc.uses_direct_path()
            && ce.uses_direct_path()
            && cr.uses_direct_path()
    );
}

/// Corrupt bytes of the decoder's own schema are poison (`CodecError::Decode`), never a panic.
#[tokio::test]
async fn malformed_envelopes_are_decode_errors() {
    let resolver = Arc::new(FixedResolver::new());
    let kafka = feedline::Settings::from_toml("").unwrap().kafka;
    let encoder: AvroEncoder<OrderEvent> = encoder(&*resolver, &kafka, ORDER_EVENTS).await.unwrap();
    let decoder: AvroDecoder<OrderEvent, _> = AvroDecoder::new(
        resolver.clone(),
        envelope_schema(ORDER_EVENTS).unwrap(),
        Some(encoder.schema_id()),
    )
    .unwrap();
    let value = envelope!(
        OrderEvent,
        2,
        OrderEventPayload::OrderRejected(order_rejected(2))
    );
    let good = encoder.encode(&value).unwrap();
    let poison = |bytes: &[u8]| match decoder.decode_cached(bytes) {
        Err(e @ CodecError::Decode { .. }) => assert!(e.is_poison()),
        other => panic!("{bytes:?}: {other:?}"),
    };
    for len in 5..good.len() {
        poison(&good[..len]);
    }
    let header = &good[..5];
    // event_id: negative length, a length past the end, invalid UTF-8.
    poison(&[header, &[1]].concat());
    poison(&[header, &[0xfe, 0xff, 0xff, 0xff, 0x0f, b'a']].concat());
    poison(&[header, &[4, 0xc3, 0x28]].concat());
    // A union index out of range for the payload: re-encode with a bad branch.
    let bad_branch = {
        let mut v = good.clone();
        // The payload index sits right after the producer string.
        let producer = value.producer.as_bytes();
        let at = v
            .windows(producer.len())
            .position(|w| w == producer)
            .unwrap()
            + producer.len();
        v[at] = 8; // branch 4 of 4
        v
    };
    poison(&bad_branch);
    // Every single-byte corruption either decodes or is poison; none panics.
    for i in 5..good.len() {
        for b in [0x00, 0x02, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] = b;
            match decoder.decode_cached(&bad) {
                Ok(_) | Err(CodecError::Decode { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(
        decoder.uses_direct_path(),
        "malformed data does not switch paths"
    );
}
