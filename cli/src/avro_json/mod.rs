//! JSON ↔ Avro, guided by the schema: what lets people type Avro messages as JSON and read
//! them back as JSON.
//!
//! JSON → Avro ([`to_avro`]) accepts what people write by hand: records by field name (a
//! missing field takes its default; a missing nullable field is null), unions as the plain
//! value (the branch is picked by type and shape; for records, the branch whose fields fit
//! best) or in Avro's JSON encoding (`{"string": "x"}`, `{"feedline.orders.OrderCreated":
//! {..}}`, or the short name `{"OrderCreated": {..}}`), enums by symbol, bytes as base64,
//! uuids as strings, timestamps as epoch numbers or RFC 3339 strings, dates as numbers or
//! `YYYY-MM-DD`, decimals as strings or numbers. Errors carry the path of the field at fault
//! (`payload.total_cents: expected long, found "abc"`).
//!
//! Avro → JSON ([`to_json`], or the streaming [`AvroJson`]) prints records in field order,
//! unions as their plain value and bytes as base64; [`JsonMode::Avro`] prints Avro's JSON
//! encoding instead (unions as `{"type": value}`, bytes as ISO-8859-1 strings).
//!
//! [`json_to_avro`] reads JSON, [`avro_to_json`] prints it; [`decimal`] holds the decimal
//! arithmetic both need.

mod avro_to_json;
mod decimal;
mod json_to_avro;

use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, RecordSchema,
};

pub use avro_to_json::{AvroJson, to_json};
pub use json_to_avro::to_avro;

/// Which JSON dialect to read and write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JsonMode {
    /// Unions as their plain value, bytes as base64, decimals as number strings.
    #[default]
    Plain,
    /// Avro's JSON encoding: unions as `{"type": value}` (when printing), bytes and fixed
    /// as strings of ISO-8859-1 code points.
    Avro,
}

/// A value that does not fit the schema, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// Dotted path of the field at fault (`payload.items[2].sku`); empty for the root.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConvertError {}

/// The schema behind a reference (or the schema itself), with the namespace that names
/// inside it are relative to.
pub(super) fn deref<'s>(
    schema: &'s Schema,
    names: &NamesRef<'s>,
    ns: Option<&'s str>,
) -> Option<(&'s Schema, Option<&'s str>)> {
    match schema {
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(ns);
            let target = *names.get(full.as_ref())?;
            deref(
                target,
                names,
                target.name().and_then(Name::namespace).or(ns),
            )
        }
        other => Some((other, other.name().and_then(Name::namespace).or(ns))),
    }
}

/// A schema's name for messages and for Avro's JSON union encoding: the full name of
/// named types, the (underlying) type name of the others.
pub(super) fn type_name(schema: &Schema, ns: Option<&str>) -> String {
    match schema {
        Schema::Ref { name } => name.fully_qualified_name(ns).to_string(),
        Schema::Record(RecordSchema { name, .. })
        | Schema::Enum(EnumSchema { name, .. })
        | Schema::Fixed(FixedSchema { name, .. })
        | Schema::Duration(FixedSchema { name, .. })
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(FixedSchema { name, .. }),
            ..
        }) => name.fully_qualified_name(ns).to_string(),
        Schema::Uuid(apache_avro::schema::UuidSchema::Fixed(FixedSchema { name, .. })) => {
            name.fully_qualified_name(ns).to_string()
        }
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int | Schema::Date | Schema::TimeMillis => "int".into(),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes | Schema::BigDecimal | Schema::Decimal(_) => "bytes".into(),
        Schema::Uuid(apache_avro::schema::UuidSchema::Bytes) => "bytes".into(),
        Schema::String | Schema::Uuid(_) => "string".into(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(_) => "union".into(),
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::schema::ResolvedSchema;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::Value as Json;
    use serde_json::json;

    use super::*;

    pub(super) fn encode(schema: &Schema, json: &Json, mode: JsonMode) -> Result<Vec<u8>, String> {
        let resolved = ResolvedSchema::try_from(schema).unwrap();
        let value = to_avro(json, schema, resolved.get_names(), mode).map_err(|e| e.to_string())?;
        let writer = GenericDatumWriter::builder(schema).build().unwrap();
        writer.write_value_to_vec(value).map_err(|e| e.to_string())
    }

    pub(super) fn decode(schema: &Schema, bytes: &[u8], mode: JsonMode) -> Json {
        let resolved = ResolvedSchema::try_from(schema).unwrap();
        let reader = GenericDatumReader::builder(schema).build().unwrap();
        let value = reader.read_value(&mut &bytes[..]).unwrap();
        to_json(&value, schema, resolved.get_names(), mode)
    }

    pub(super) fn round_trip(schema: &Schema, json: Json) -> Json {
        decode(
            schema,
            &encode(schema, &json, JsonMode::Plain).unwrap(),
            JsonMode::Plain,
        )
    }

    pub(super) fn envelope() -> Schema {
        Schema::parse_str(feedline_schemas::envelope_schema("order-events").unwrap()).unwrap()
    }

    pub(super) fn order_created() -> Json {
        json!({
            "event_id": "0b6f6d4e-8f0a-4c59-9a49-5a2a3c1f7e10",
            "occurred_at": 1_764_000_000_000i64,
            "correlation_id": "7a1d8c52-3e0b-4f0c-8d1b-0c2f5e4a9b33",
            "producer": "test",
            "payload": {
                "order_id": "2d3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b",
                "customer_id": "c0ffee00-0000-4000-8000-000000000001",
                "total_cents": 1250
            }
        })
    }

    /// Hand-computed: zig-zag varints (1 → 02, -64 → 7f, -65 → 81 01, 300 → d8 04),
    /// length-prefixed strings, a boolean byte, a union branch index, array blocks.
    #[test]
    fn fixed_test_vector() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "Tiny", "fields": [
                {"name": "id", "type": "long"},
                {"name": "name", "type": "string"},
                {"name": "ok", "type": "boolean"},
                {"name": "tag", "type": ["null", "string"]},
                {"name": "deltas", "type": {"type": "array", "items": "int"}}
            ]}"#,
        )
        .unwrap();
        let json =
            json!({"id": 1, "name": "ab", "ok": true, "tag": "x", "deltas": [-64, -65, 300]});
        let expected = [
            0x02, // id 1
            0x04, b'a', b'b', // name: length 2, "ab"
            0x01, // ok
            0x02, 0x02, b'x', // tag: branch 1 (string), length 1, "x"
            0x06, 0x7f, 0x81, 0x01, 0xd8, 0x04, // deltas: block of 3 items
            0x00, // end of array
        ];
        assert_eq!(encode(&schema, &json, JsonMode::Plain).unwrap(), expected);
        assert_eq!(decode(&schema, &expected, JsonMode::Plain), json);
        assert_eq!(
            decode(&schema, &expected, JsonMode::Avro)["tag"],
            json!({"string": "x"})
        );
    }

    #[test]
    fn the_envelope_round_trips_with_its_payload_branch_picked_by_fields() {
        let schema = envelope();
        let json = order_created();
        let mut expected = json.clone();
        expected["causation_id"] = Json::Null;
        assert_eq!(round_trip(&schema, json), expected);
    }

    #[test]
    fn logical_types() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "L", "fields": [
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                {"name": "big", "type": {"type": "fixed", "name": "Big", "size": 16, "logicalType": "decimal", "precision": 38, "scale": 4}},
                {"name": "raw", "type": "bytes"},
                {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 2}}
            ]}"#,
        )
        .unwrap();
        let input = json!({
            "id": "0b6f6d4e-8f0a-4c59-9a49-5a2a3c1f7e10",
            "at": "2025-11-24T16:00:00.123Z",
            "at_us": 1_764_000_000_000_001i64,
            "day": "1970-01-10",
            "price": "-12.5",
            "big": "12345678901234567890123456789012.3456",
            "raw": "AAEC",
            "hash": "q80="
        });
        let bytes = encode(&schema, &input, JsonMode::Plain).unwrap();
        assert_eq!(
            decode(&schema, &bytes, JsonMode::Plain),
            json!({
                "id": "0b6f6d4e-8f0a-4c59-9a49-5a2a3c1f7e10",
                "at": 1_764_000_000_123i64,
                "at_us": 1_764_000_000_000_001i64,
                "day": 9,
                "price": "-12.50",
                "big": "12345678901234567890123456789012.3456",
                "raw": "AAEC",
                "hash": "q80="
            })
        );
        let mut bad = input.clone();
        bad["price"] = json!("1.234");
        assert_eq!(
            encode(&schema, &bad, JsonMode::Plain).unwrap_err(),
            r#"price: expected bytes (decimal), found "1.234" (more than 2 decimal places)"#
        );
        bad["price"] = json!(1.5);
        bad["hash"] = json!("AAAA");
        assert_eq!(
            encode(&schema, &bad, JsonMode::Plain).unwrap_err(),
            r#"hash: expected fixed Hash (2 bytes), found "AAAA" (3 bytes)"#
        );
    }

    #[test]
    fn bytes_in_avro_json_are_latin1() {
        let schema = Schema::parse_str(r#"{"type": "bytes"}"#).unwrap();
        let bytes = encode(&schema, &json!("\u{00}\u{ff}A"), JsonMode::Avro).unwrap();
        assert_eq!(bytes, [0x06, 0x00, 0xff, b'A']);
        assert_eq!(
            decode(&schema, &bytes, JsonMode::Avro),
            json!("\u{00}\u{ff}A")
        );
        assert_eq!(decode(&schema, &bytes, JsonMode::Plain), json!("AP9B"));
        assert!(encode(&schema, &json!("€"), JsonMode::Avro).is_err());
    }
}
