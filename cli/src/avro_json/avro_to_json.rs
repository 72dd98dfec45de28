//! Avro → JSON: printed while serializing, in the schema's field order.

use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{DecimalSchema, NamesRef};
use apache_avro::types::Value;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value as Json;

use super::decimal::decimal_to_string;
use super::{JsonMode, deref, type_name};

/// Renders an Avro value of `schema` as JSON (keys sorted: for printing in field order,
/// serialize an [`AvroJson`] instead).
pub fn to_json(value: &Value, schema: &Schema, names: &NamesRef<'_>, mode: JsonMode) -> Json {
    serde_json::to_value(AvroJson::new(value, schema, names, mode))
        .expect("an Avro value always renders as JSON")
}

/// intermediate JSON tree is built.
#[derive(Clone, Copy)]
pub struct AvroJson<'a, 's> {
    value: &'a Value,
    schema: &'s Schema,
    ns: Option<&'s str>,
    names: &'a NamesRef<'s>,
    mode: JsonMode,
}

impl fmt::Debug for AvroJson<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroJson")
            .field("value", self.value)
            .finish_non_exhaustive()
    }
}

impl<'a, 's> AvroJson<'a, 's> {
    pub fn new(
        value: &'a Value,
        schema: &'s Schema,
        names: &'a NamesRef<'s>,
        mode: JsonMode,
    ) -> Self {
        AvroJson {
            value,
            schema,
            ns: None,
            names,
            mode,
        }
    }

    fn child(&self, value: &'a Value, schema: &'s Schema, ns: Option<&'s str>) -> Self {
        AvroJson {
            value,
            schema,
            ns,
            ..*self
        }
    }

    /// The value at a dotted field path (`payload.customer_id`; unions are looked through,
    /// map keys are path segments), rendered as JSON.
    pub fn lookup(&self, path: &str) -> Option<Json> {
        let mut at = *self;
        for segment in path.split('.') {
            at = at.step(segment)?;
        }
        Some(serde_json::to_value(at).expect("an Avro value always renders as JSON"))
    }

    fn step(&self, segment: &str) -> Option<Self> {
        let (schema, ns) = deref(self.schema, self.names, self.ns)?;
        match (self.value, schema) {
            (Value::Union(i, inner), Schema::Union(u)) => self
                .child(inner, u.variants().get(*i as usize)?, ns)
                .step(segment),
            (Value::Record(fields), Schema::Record(r)) => {
                let index = *r.lookup.get(segment)?;
                let (_, value) = fields.iter().find(|(name, _)| name == segment)?;
                Some(self.child(value, &r.fields[index].schema, ns))
            }
            (Value::Map(map), Schema::Map(m)) => Some(self.child(map.get(segment)?, &m.types, ns)),
            (Value::Array(items), Schema::Array(a)) => {
                Some(self.child(items.get(segment.parse::<usize>().ok()?)?, &a.items, ns))
            }
            _ => None,
        }
    }

    fn bytes<S: serde::Serializer>(&self, bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        match self.mode {
            JsonMode::Plain => serializer.serialize_str(&BASE64.encode(bytes)),
            JsonMode::Avro => {
                serializer.serialize_str(&bytes.iter().map(|b| char::from(*b)).collect::<String>())
            }
        }
    }
}

impl serde::Serialize for AvroJson<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A value that does not match its schema (it cannot: it was decoded with it) would
        // still print, schema-less.
        let (schema, ns) =
            deref(self.schema, self.names, self.ns).unwrap_or((self.schema, self.ns));
        match self.value {
            Value::Null => serializer.serialize_unit(),
            Value::Boolean(b) => serializer.serialize_bool(*b),
            Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => serializer.serialize_i32(*n),
            Value::Long(n)
            | Value::TimeMicros(n)
            | Value::TimestampMillis(n)
            | Value::TimestampMicros(n)
            | Value::TimestampNanos(n)
            | Value::LocalTimestampMillis(n)
            | Value::LocalTimestampMicros(n)
            | Value::LocalTimestampNanos(n) => serializer.serialize_i64(*n),
            Value::Float(f) if f.is_finite() => serializer.serialize_f32(*f),
            Value::Double(f) if f.is_finite() => serializer.serialize_f64(*f),
            // JSON has no NaN or infinity.
            Value::Float(f) => serializer.serialize_str(&f.to_string()),
            Value::Double(f) => serializer.serialize_str(&f.to_string()),
            Value::Bytes(b) | Value::Fixed(_, b) => self.bytes(b, serializer),
            Value::String(s) | Value::Enum(_, s) => serializer.serialize_str(s),
            Value::Uuid(u) => serializer.collect_str(u),
            Value::Decimal(d) => {
                let bytes = <Vec<u8>>::try_from(d).unwrap_or_default();
                match (self.mode, schema) {
                    (JsonMode::Plain, Schema::Decimal(DecimalSchema { scale, .. })) => {
                        serializer.serialize_str(&decimal_to_string(&bytes, *scale))
                    }
                    (JsonMode::Plain, _) => serializer.serialize_str(&decimal_to_string(&bytes, 0)),
                    (JsonMode::Avro, _) => self.bytes(&bytes, serializer),
                }
            }
            Value::BigDecimal(d) => serializer.collect_str(d),
            Value::Duration(d) => {
                let mut map = serializer.serialize_map(Some(3))?;
                map.serialize_entry("months", &u32::from(d.months()))?;
                map.serialize_entry("days", &u32::from(d.days()))?;
                map.serialize_entry("millis", &u32::from(d.millis()))?;
                map.end()
            }
            Value::Array(items) => {
                let item_schema = match schema {
                    Schema::Array(a) => &*a.items,
                    other => other,
                };
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&self.child(item, item_schema, ns))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let value_schema = match schema {
                    Schema::Map(m) => &*m.types,
                    other => other,
                };
                let mut keys: Vec<&String> = entries.keys().collect();
                keys.sort();
                let mut map = serializer.serialize_map(Some(keys.len()))?;
                for key in keys {
                    map.serialize_entry(key, &self.child(&entries[key], value_schema, ns))?;
                }
                map.end()
            }
            Value::Record(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    let field_schema = match schema {
                        Schema::Record(r) => r.lookup.get(name).map(|i| &r.fields[*i].schema),
                        _ => None,
                    };
                    map.serialize_entry(
                        name,
                        &self.child(value, field_schema.unwrap_or(schema), ns),
                    )?;
                }
                map.end()
            }
            Value::Union(i, inner) => {
                let branch = match schema {
                    Schema::Union(u) => u.variants().get(*i as usize).unwrap_or(schema),
                    other => other,
                };
                let rendered = self.child(inner, branch, ns);
                if self.mode == JsonMode::Avro && !matches!(**inner, Value::Null) {
                    let mut map = serializer.serialize_map(Some(1))?;
                    map.serialize_entry(&type_name(branch, ns), &rendered)?;
                    map.end()
                } else {
                    rendered.serialize(serializer)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::schema::ResolvedSchema;
    use serde_json::json;

    use super::super::tests::{envelope, order_created};
    use super::super::to_avro;
    use super::*;

    #[test]
    fn lookup_follows_field_paths_through_unions() {
        let schema = envelope();
        let resolved = ResolvedSchema::try_from(&schema).unwrap();
        let value = to_avro(
            &order_created(),
            &schema,
            resolved.get_names(),
            JsonMode::Plain,
        )
        .unwrap();
        let view = AvroJson::new(&value, &schema, resolved.get_names(), JsonMode::Plain);
        assert_eq!(view.lookup("payload.total_cents"), Some(json!(1250)));
        assert_eq!(view.lookup("producer"), Some(json!("test")));
        assert_eq!(view.lookup("payload.nope"), None);
        // Printing keeps the schema's field order.
        let text = serde_json::to_string(&view).unwrap();
        assert!(text.starts_with(r#"{"event_id":"#), "{text}");
        assert!(text.find("\"producer\"").unwrap() < text.find("\"payload\"").unwrap());
    }
}
