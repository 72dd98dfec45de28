//! Avro encode and decode of the envelopes, in the same run: feedline's codec (the direct
//! serde path, `DirectCodec`), apache-avro's schema-aware serde path with prepared readers and
//! writers (what feedline's codec used before), and the straightforward apache-avro path
//! (build a `Value`, resolve, write; and back). All framed alike (5-byte Confluent header).
//! `cargo bench -p feedline-benches --bench codec`.

use std::hint::black_box;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use criterion::{Criterion, criterion_group, criterion_main};
use feedline::codec::{AvroDecoder, AvroEncoder, FixedResolver, split_frame, write_header};
use feedline_schemas::types::*;
use feedline_schemas::{ORDER_EVENTS, envelope_schema};

fn order_event() -> OrderEvent {
    OrderEvent {
        event_id: "8a6e0804-2bd0-4672-b79d-d97027f9071a".into(),
        occurred_at: 1_764_000_000_123,
        correlation_id: "0b9d3c7a-8e21-4f6b-a1d2-9c8b7a6f5e4d".into(),
        causation_id: Some("6f1f7c4e-3b0a-4d5e-9a43-1c2b3d4e5f60".into()),
        producer: "orders-1".into(),
        payload: OrderEventPayload::OrderRejected(OrderRejected {
            order_id: "0b9d3c7a-8e21-4f6b-a1d2-9c8b7a6f5e4d".into(),
            customer_id: "6f1f7c4e-3b0a-4d5e-9a43-1c2b3d4e5f60".into(),
            total_cents: 5000,
            reason: "credit limit exceeded".into(),
        }),
    }
}

fn place_order() -> PlaceOrder {
    PlaceOrder {
        order_id: "0b9d3c7a-8e21-4f6b-a1d2-9c8b7a6f5e4d".into(),
        customer_id: "6f1f7c4e-3b0a-4d5e-9a43-1c2b3d4e5f60".into(),
        total_cents: 6000,
    }
}

/// apache-avro's serde path, prepared once: header, then `GenericDatumWriter::write_ser`.
fn apache_encode<T: serde::Serialize>(
    writer: &GenericDatumWriter<'_>,
    value: &T,
    out: &mut Vec<u8>,
) {
    write_header(out, 1);
    writer.write_ser(out, value).unwrap();
}

/// apache-avro's serde path, prepared once: `GenericDatumReader::read_deser` after the header.
fn apache_decode<T: serde::de::DeserializeOwned>(
    reader: &GenericDatumReader<'_>,
    framed: &[u8],
) -> T {
    let (_, mut body) = split_frame(framed).unwrap();
    reader.read_deser(&mut body).unwrap()
}

fn codec(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let resolver = Arc::new(FixedResolver::new());
    let kafka = feedline::Settings::from_toml("").unwrap().kafka;

    // The envelope with its payload union: feedline's typed path only (apache-avro's
    // `to_value(..).resolve(..)` cannot map a Rust enum onto a union of records).
    let event = order_event();
    let encoder: AvroEncoder<OrderEvent> = rt
        .block_on(feedline::contracts::encoder(
            &*resolver,
            &kafka,
            ORDER_EVENTS,
        ))
        .unwrap();
    let decoder: AvroDecoder<OrderEvent, _> = AvroDecoder::new(
        resolver.clone(),
        envelope_schema(ORDER_EVENTS).unwrap(),
        Some(encoder.schema_id()),
    )
    .unwrap();
    assert!(encoder.uses_direct_path() && decoder.uses_direct_path());
    let framed = encoder.encode(&event).unwrap();
    let envelope = Schema::parse_str(envelope_schema(ORDER_EVENTS).unwrap()).unwrap();
    let serde_writer = GenericDatumWriter::builder(&envelope).build().unwrap();
    let serde_reader = GenericDatumReader::builder(&envelope).build().unwrap();
    let mut group = c.benchmark_group("envelope OrderEvent");
    group.bench_function("feedline encode (direct)", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encoder.encode_into(black_box(&event), &mut out).unwrap();
        })
    });
    group.bench_function("apache-avro serde encode (previous path)", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            apache_encode(&serde_writer, black_box(&event), &mut out);
        })
    });
    group.bench_function("feedline decode (direct)", |b| {
        b.iter(|| decoder.decode_cached(black_box(&framed)).unwrap().unwrap())
    });
    group.bench_function("apache-avro serde decode (previous path)", |b| {
        b.iter(|| apache_decode::<OrderEvent>(&serde_reader, black_box(&framed)))
    });
    let value_reader = GenericDatumReader::builder(&envelope)
        .reader_schema(&envelope)
        .build()
        .unwrap();
    group.bench_function("apache-avro Value decode (baseline)", |b| {
        b.iter(|| {
            let v = value_reader.read_value(&mut &framed[5..]).unwrap();
            apache_avro::from_value::<OrderEvent>(&v).unwrap()
        })
    });
    group.finish();

    // A flat record, where the straightforward apache-avro path works: the baseline.
    let schema_text = feedline_schemas::contracts::FILES
        .iter()
        .find(|(n, _)| *n == "PlaceOrder")
        .unwrap()
        .1;
    let value = place_order();
    let encoder: AvroEncoder<PlaceOrder> = rt
        .block_on(AvroEncoder::new(
            &*resolver,
            "place-order-value",
            schema_text,
        ))
        .unwrap();
    let decoder: AvroDecoder<PlaceOrder, _> =
        AvroDecoder::new(resolver.clone(), schema_text, Some(encoder.schema_id())).unwrap();
    assert!(encoder.uses_direct_path() && decoder.uses_direct_path());
    let framed = encoder.encode(&value).unwrap();
    let schema = Schema::parse_str(schema_text).unwrap();
    let serde_writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let serde_reader = GenericDatumReader::builder(&schema).build().unwrap();
    let mut group = c.benchmark_group("record PlaceOrder");
    group.bench_function("feedline encode (direct)", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            encoder.encode_into(black_box(&value), &mut out).unwrap();
        })
    });
    group.bench_function("apache-avro serde encode (previous path)", |b| {
        let mut out = Vec::with_capacity(128);
        b.iter(|| {
            out.clear();
            apache_encode(&serde_writer, black_box(&value), &mut out);
        })
    });
    group.bench_function("feedline decode (direct)", |b| {
        b.iter(|| decoder.decode_cached(black_box(&framed)).unwrap().unwrap())
    });
    group.bench_function("apache-avro serde decode (previous path)", |b| {
        b.iter(|| apache_decode::<PlaceOrder>(&serde_reader, black_box(&framed)))
    });
    // The baseline's reader and writer are prepared once too: what it pays per message is
    // the `Value` tree and its resolution.
    let value_writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let value_reader = GenericDatumReader::builder(&schema)
        .reader_schema(&schema)
        .build()
        .unwrap();
    group.bench_function("apache-avro Value encode (baseline)", |b| {
        b.iter(|| {
            let v = apache_avro::to_value(black_box(&value))
                .unwrap()
                .resolve(&schema)
                .unwrap();
            value_writer.write_value_to_vec(v).unwrap()
        })
    });
    group.bench_function("apache-avro Value decode (baseline)", |b| {
        b.iter(|| {
            let v = value_reader.read_value(&mut &framed[5..]).unwrap();
            apache_avro::from_value::<PlaceOrder>(&v).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
