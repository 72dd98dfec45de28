//! JSON → Avro: what people write by hand, checked against the schema, with the path of
//! the field at fault in every error.

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, NamesRef, RecordSchema, UnionSchema,
};
use apache_avro::types::Value;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Schema};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::Value as Json;

use super::decimal::decimal_to_bytes;
use super::{ConvertError, JsonMode, deref, type_name};

/// Where a value sits in the document; rendered only when something is wrong.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Field(parent, name) => match parent.render() {
                p if p.is_empty() => (*name).to_owned(),
                p => format!("{p}.{name}"),
            },
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }

    fn error(&self, message: impl Into<String>) -> ConvertError {
        ConvertError {
            path: self.render(),
            message: message.into(),
        }
    }
}

/// Converts `json` to an Avro value of `schema`. `names` resolves named references
/// (`ResolvedSchema::get_names`).
pub fn to_avro(
    json: &Json,
    schema: &Schema,
    names: &NamesRef<'_>,
    mode: JsonMode,
) -> Result<Value, ConvertError> {
    Converter { names, mode }.convert(json, schema, None, &Path::Root)
}

/// How a schema is described in an error: the type plus its logical type.
fn describe(schema: &Schema, ns: Option<&str>) -> String {
    let logical = match schema {
        Schema::Uuid(_) => "uuid",
        Schema::Date => "date",
        Schema::TimeMillis => "time-millis",
        Schema::TimeMicros => "time-micros",
        Schema::TimestampMillis => "timestamp-millis",
        Schema::TimestampMicros => "timestamp-micros",
        Schema::TimestampNanos => "timestamp-nanos",
        Schema::LocalTimestampMillis => "local-timestamp-millis",
        Schema::LocalTimestampMicros => "local-timestamp-micros",
        Schema::LocalTimestampNanos => "local-timestamp-nanos",
        Schema::Decimal(_) | Schema::BigDecimal => "decimal",
        Schema::Duration(_) => "duration",
        Schema::Record(_) => return format!("record {}", type_name(schema, ns)),
        Schema::Enum(_) => return format!("enum {}", type_name(schema, ns)),
        Schema::Fixed(f) => return format!("fixed {} ({} bytes)", type_name(schema, ns), f.size),
        _ => return type_name(schema, ns),
    };
    format!("{} ({logical})", type_name(schema, ns))
}

/// The JSON as it appears in an error message: short, on one line.
fn found(json: &Json) -> String {
    let text = json.to_string();
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

struct Converter<'n, 's> {
    names: &'n NamesRef<'s>,
    mode: JsonMode,
}

impl<'s> Converter<'_, 's> {
    fn convert(
        &self,
        json: &Json,
        schema: &'s Schema,
        ns: Option<&'s str>,
        path: &Path<'_>,
    ) -> Result<Value, ConvertError> {
        let Some((schema, ns)) = deref(schema, self.names, ns) else {
            return Err(path.error(format!(
                "the schema refers to {}, which it does not define",
                type_name(schema, ns)
            )));
        };
        let mismatch = || {
            path.error(format!(
                "expected {}, found {}",
                describe(schema, ns),
                found(json)
            ))
        };
        let out_of_range = |what: &str| {
            path.error(format!(
                "expected {}, found {} ({what})",
                describe(schema, ns),
                found(json)
            ))
        };
        Ok(match schema {
            Schema::Null => match json {
                Json::Null => Value::Null,
                _ => return Err(mismatch()),
            },
            Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(mismatch)?),
            Schema::Int => Value::Int(int(json, &mismatch, &out_of_range)?),
            Schema::Long => Value::Long(long(json, &mismatch, &out_of_range)?),
            Schema::Float => Value::Float(json.as_f64().ok_or_else(mismatch)? as f32),
            Schema::Double => Value::Double(json.as_f64().ok_or_else(mismatch)?),
            Schema::String => Value::String(json.as_str().ok_or_else(mismatch)?.to_owned()),
            Schema::Bytes => Value::Bytes(self.bytes(json.as_str().ok_or_else(mismatch)?, path)?),
            Schema::Fixed(FixedSchema { size, .. }) => {
                let bytes = self.bytes(json.as_str().ok_or_else(mismatch)?, path)?;
                if bytes.len() != *size {
                    return Err(out_of_range(&format!("{} bytes", bytes.len())));
                }
                Value::Fixed(*size, bytes)
            }
            Schema::Enum(EnumSchema { symbols, .. }) => {
                let symbol = json.as_str().ok_or_else(mismatch)?;
                match symbols.iter().position(|s| s == symbol) {
                    Some(i) => Value::Enum(i as u32, symbol.to_owned()),
                    None => {
                        return Err(path.error(format!(
                            "expected one of the symbols {} of {}, found {}",
                            symbols.join(", "),
                            describe(schema, ns),
                            found(json)
                        )));
                    }
                }
            }
            Schema::Array(array) => {
                let items = json.as_array().ok_or_else(mismatch)?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.convert(item, &array.items, ns, &Path::Index(path, i))?);
                }
                Value::Array(out)
            }
            Schema::Map(map) => {
                let object = json.as_object().ok_or_else(mismatch)?;
                let mut out = std::collections::HashMap::with_capacity(object.len());
                for (key, item) in object {
                    let value = self.convert(item, &map.types, ns, &Path::Field(path, key))?;
                    out.insert(key.clone(), value);
                }
                Value::Map(out)
            }
            Schema::Record(record) => self.record(json, record, schema, ns, path)?,
            Schema::Union(union) => self.union(json, union, ns, path)?,
            Schema::Uuid(_) => {
                let text = json.as_str().ok_or_else(mismatch)?;
                Value::Uuid(
                    apache_avro::Uuid::parse_str(text).map_err(|_| out_of_range("not a UUID"))?,
                )
            }
            Schema::Date => match json {
                Json::String(text) => {
                    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                        .map_err(|_| out_of_range("not a YYYY-MM-DD date"))?;
                    let days = date.signed_duration_since(NaiveDate::default()).num_days();
                    Value::Date(i32::try_from(days).map_err(|_| out_of_range("out of range"))?)
                }
                _ => Value::Date(int(json, &mismatch, &out_of_range)?),
            },
            Schema::TimeMillis => match json {
                Json::String(text) => {
                    let t = time_of_day(text).ok_or_else(|| out_of_range("not HH:MM:SS"))?;
                    Value::TimeMillis((t / 1_000_000) as i32)
                }
                _ => Value::TimeMillis(int(json, &mismatch, &out_of_range)?),
            },
            Schema::TimeMicros => match json {
                Json::String(text) => {
                    let t = time_of_day(text).ok_or_else(|| out_of_range("not HH:MM:SS"))?;
                    Value::TimeMicros(t / 1_000)
                }
                _ => Value::TimeMicros(long(json, &mismatch, &out_of_range)?),
            },
            Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => {
                let n = match json {
                    Json::String(text) => {
                        let local = matches!(
                            schema,
                            Schema::LocalTimestampMillis
                                | Schema::LocalTimestampMicros
                                | Schema::LocalTimestampNanos
                        );
                        let nanos = timestamp_nanos(text, local)
                            .ok_or_else(|| out_of_range("not an RFC 3339 timestamp"))?;
                        match schema {
                            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                                nanos.div_euclid(1_000_000)
                            }
                            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                                nanos.div_euclid(1_000)
                            }
                            _ => nanos,
                        }
                    }
                    _ => long(json, &mismatch, &out_of_range)?,
                };
                match schema {
                    Schema::TimestampMillis => Value::TimestampMillis(n),
                    Schema::TimestampMicros => Value::TimestampMicros(n),
                    Schema::TimestampNanos => Value::TimestampNanos(n),
                    Schema::LocalTimestampMillis => Value::LocalTimestampMillis(n),
                    Schema::LocalTimestampMicros => Value::LocalTimestampMicros(n),
                    _ => Value::LocalTimestampNanos(n),
                }
            }
            Schema::Decimal(DecimalSchema {
                precision, scale, ..
            }) => {
                let text = match json {
                    Json::String(s) => s.clone(),
                    Json::Number(n) => n.to_string(),
                    _ => return Err(mismatch()),
                };
                let bytes = decimal_to_bytes(&text, *precision, *scale)
                    .map_err(|why| out_of_range(&why))?;
                Value::Decimal(Decimal::from(bytes))
            }
            Schema::BigDecimal => {
                let text = match json {
                    Json::String(s) => s.clone(),
                    Json::Number(n) => n.to_string(),
                    _ => return Err(mismatch()),
                };
                Value::BigDecimal(
                    text.parse::<apache_avro::BigDecimal>()
                        .map_err(|_| out_of_range("not a decimal number"))?,
                )
            }
            Schema::Duration(_) => {
                let part = |key: &str| -> Result<u32, ConvertError> {
                    json.get(key)
                        .and_then(Json::as_u64)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            path.error(format!(
                                "expected duration {{\"months\": n, \"days\": n, \"millis\": n}}, found {}",
                                found(json)
                            ))
                        })
                };
                Value::Duration(Duration::new(
                    Months::new(part("months")?),
                    Days::new(part("days")?),
                    Millis::new(part("millis")?),
                ))
            }
            Schema::Ref { .. } => unreachable!("deref resolved every reference"),
        })
    }

    /// Bytes from a JSON string: base64 (or, when that fails, the text's UTF-8 bytes) in
    /// plain mode; one byte per ISO-8859-1 code point in Avro's JSON encoding.
    fn bytes(&self, text: &str, path: &Path<'_>) -> Result<Vec<u8>, ConvertError> {
        match self.mode {
            JsonMode::Plain => Ok(BASE64
                .decode(text)
                .unwrap_or_else(|_| text.as_bytes().to_vec())),
            JsonMode::Avro => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    path.error("bytes in Avro's JSON encoding are ISO-8859-1 code points (\\u0000-\\u00ff)")
                }),
        }
    }

    fn record(
        &self,
        json: &Json,
        record: &'s RecordSchema,
        schema: &'s Schema,
        ns: Option<&'s str>,
        path: &Path<'_>,
    ) -> Result<Value, ConvertError> {
        let Some(object) = json.as_object() else {
            return Err(path.error(format!(
                "expected {} (a JSON object), found {}",
                describe(schema, ns),
                found(json)
            )));
        };
        if let Some(unknown) = object.keys().find(|k| !record.lookup.contains_key(*k)) {
            let fields: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
            return Err(Path::Field(path, unknown).error(format!(
                "unknown field; {} has {}",
                describe(schema, ns),
                fields.join(", ")
            )));
        }
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let field_path = Path::Field(path, &field.name);
            let value = match object.get(&field.name) {
                Some(value) => self.convert(value, &field.schema, ns, &field_path)?,
                None => match &field.default {
                    Some(default) => self.default(default, &field.schema, ns, &field_path)?,
                    None => match deref(&field.schema, self.names, ns) {
                        Some((Schema::Union(u), _)) if u.is_nullable() => {
                            let null = u
                                .variants()
                                .iter()
                                .position(|v| matches!(v, Schema::Null))
                                .expect("a nullable union has a null branch");
                            Value::Union(null as u32, Box::new(Value::Null))
                        }
                        _ => {
                            return Err(field_path.error(format!(
                                "missing field of type {} (it has no default)",
                                describe(&field.schema, ns)
                            )));
                        }
                    },
                },
            };
            fields.push((field.name.clone(), value));
        }
        Ok(Value::Record(fields))
    }

    /// A field's default is written in Avro's JSON encoding, and a union's default is
    /// always of the union's first branch.
    fn default(
        &self,
        default: &Json,
        schema: &'s Schema,
        ns: Option<&'s str>,
        path: &Path<'_>,
    ) -> Result<Value, ConvertError> {
        let avro = Converter {
            names: self.names,
            mode: JsonMode::Avro,
        };
        match deref(schema, self.names, ns) {
            Some((Schema::Union(u), ns)) if !u.variants().is_empty() => Ok(Value::Union(
                0,
                Box::new(avro.convert(default, &u.variants()[0], ns, path)?),
            )),
            _ => avro.convert(default, schema, ns, path),
        }
    }

    fn union(
        &self,
        json: &Json,
        union: &'s UnionSchema,
        ns: Option<&'s str>,
        path: &Path<'_>,
    ) -> Result<Value, ConvertError> {
        let variants = union.variants();
        let names: Vec<String> = variants.iter().map(|v| type_name(v, ns)).collect();
        if json.is_null() {
            return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
                None => {
                    Err(path.error(format!("expected one of {}, found null", names.join(", "))))
                }
            };
        }
        // Avro's JSON encoding names the branch: {"string": "x"}, {"ns.Record": {..}}; the
        // short name of a named type is accepted too.
        let mut named_error = None;
        if let Some((key, inner)) = json
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        {
            let short = |full: &str| full.rsplit('.').next().map(str::to_owned);
            let branch = names.iter().position(|n| n == key).or_else(|| {
                names
                    .iter()
                    .position(|n| short(n).as_deref() == Some(key.as_str()))
            });
            if let Some(i) = branch {
                match self.convert(inner, &variants[i], ns, path) {
                    Ok(value) => return Ok(Value::Union(i as u32, Box::new(value))),
                    Err(e) => named_error = Some(e),
                }
            }
        }
        let mut best: Option<(i64, usize, Value)> = None;
        let mut closest: Option<(i64, ConvertError)> = None;
        let mut candidates = 0;
        for (i, variant) in variants.iter().enumerate() {
            let Some((resolved, _)) = deref(variant, self.names, ns) else {
                continue;
            };
            if matches!(resolved, Schema::Null) {
                continue;
            }
            candidates += 1;
            match self.convert(json, variant, ns, path) {
                Ok(value) => {
                    let score = branch_score(json, resolved);
                    if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                        best = Some((score, i, value));
                    }
                }
                Err(e) => {
                    let affinity = match (json, resolved) {
                        (Json::Object(o), Schema::Record(r)) => record_affinity(o, r),
                        _ => 0,
                    };
                    if closest.as_ref().is_none_or(|(a, _)| affinity > *a) {
                        closest = Some((affinity, e));
                    }
                }
            }
        }
        if let Some((_, i, value)) = best {
            return Ok(Value::Union(i as u32, Box::new(value)));
        }
        if let Some(e) = named_error {
            return Err(e);
        }
        match closest {
            // One candidate, or a record that clearly was meant: its own error says more.
            Some((affinity, e)) if candidates == 1 || affinity > 0 => Err(e),
            _ => Err(path.error(format!(
                "expected one of {}, found {}{}",
                names.join(", "),
                found(json),
                if json.is_object() {
                    "; name the branch as {\"Name\": {...}}"
                } else {
                    ""
                }
            ))),
        }
    }
}

/// How well a JSON value that converted fits a union branch: specific types beat general
/// ones (an enum symbol over a string, an int over a long), records by the fields given.
fn branch_score(json: &Json, schema: &Schema) -> i64 {
    match (json, schema) {
        (Json::Object(o), Schema::Record(r)) => 1000 + record_affinity(o, r),
        (Json::Object(_), Schema::Map(_)) => 500,
        (
            _,
            Schema::Enum(_) | Schema::Uuid(_) | Schema::Int | Schema::Date | Schema::TimeMillis,
        ) => 5,
        (_, Schema::String | Schema::Long | Schema::Boolean | Schema::Array(_)) => 4,
        (Json::String(_), Schema::TimestampMillis | Schema::TimestampMicros) => 3,
        (_, Schema::Fixed(_) | Schema::Decimal(_)) => 3,
        (_, Schema::Double | Schema::Float) => 2,
        _ => 1,
    }
}

/// How much a JSON object looks like a record: fields named that exist, minus names that
/// do not and required fields left out.
fn record_affinity(object: &serde_json::Map<String, Json>, record: &RecordSchema) -> i64 {
    let known = object
        .keys()
        .filter(|k| record.lookup.contains_key(*k))
        .count() as i64;
    let unknown = object.len() as i64 - known;
    let missing = record
        .fields
        .iter()
        .filter(|f| f.default.is_none() && !object.contains_key(&f.name))
        .count() as i64;
    2 * known - unknown - missing
}

fn int(
    json: &Json,
    mismatch: &dyn Fn() -> ConvertError,
    out_of_range: &dyn Fn(&str) -> ConvertError,
) -> Result<i32, ConvertError> {
    let n = long(json, mismatch, out_of_range)?;
    i32::try_from(n).map_err(|_| out_of_range("out of range for int"))
}

fn long(
    json: &Json,
    mismatch: &dyn Fn() -> ConvertError,
    out_of_range: &dyn Fn(&str) -> ConvertError,
) -> Result<i64, ConvertError> {
    match json {
        Json::Number(n) => match n.as_i64() {
            Some(n) => Ok(n),
            None if n.is_u64() => Err(out_of_range("out of range for long")),
            None => Err(mismatch()),
        },
        _ => Err(mismatch()),
    }
}

/// Nanoseconds since midnight of `HH:MM:SS[.fraction]`.
fn time_of_day(text: &str) -> Option<i64> {
    let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").ok()?;
    Some(i64::from(t.num_seconds_from_midnight()) * 1_000_000_000 + i64::from(t.nanosecond()))
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp; for local timestamps also of one
/// without offset (`2024-05-01T12:00:00`), read as wall-clock time.
fn timestamp_nanos(text: &str, local: bool) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return if local {
            t.naive_local().and_utc().timestamp_nanos_opt()
        } else {
            t.timestamp_nanos_opt()
        };
    }
    if local {
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return t.and_utc().timestamp_nanos_opt();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::tests::{decode, encode, envelope, order_created, round_trip};
    use super::*;

    #[test]
    fn named_branches_by_full_or_short_name() {
        let schema = envelope();
        let mut json = order_created();
        let payload = json["payload"].take();
        json["payload"] = json!({"feedline.orders.OrderCreated": payload.clone()});
        let full = encode(&schema, &json, JsonMode::Plain).unwrap();
        json["payload"] = json!({"OrderCreated": payload});
        assert_eq!(encode(&schema, &json, JsonMode::Plain).unwrap(), full);
        let avro = decode(&schema, &full, JsonMode::Avro);
        assert!(
            avro["payload"]["feedline.orders.OrderCreated"].is_object(),
            "{avro}"
        );
        assert_eq!(avro["causation_id"], Json::Null);
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let schema = envelope();
        let mut json = order_created();
        json["payload"]["total_cents"] = json!("abc");
        assert_eq!(
            encode(&schema, &json, JsonMode::Plain).unwrap_err(),
            r#"payload.total_cents: expected long, found "abc""#
        );
        let mut json = order_created();
        json["event_id"] = json!("not-a-uuid");
        assert_eq!(
            encode(&schema, &json, JsonMode::Plain).unwrap_err(),
            r#"event_id: expected string (uuid), found "not-a-uuid" (not a UUID)"#
        );
        let mut json = order_created();
        json.as_object_mut().unwrap().remove("producer");
        assert_eq!(
            encode(&schema, &json, JsonMode::Plain).unwrap_err(),
            "producer: missing field of type string (it has no default)"
        );
        let mut json = order_created();
        json["color"] = json!("red");
        let err = encode(&schema, &json, JsonMode::Plain).unwrap_err();
        assert!(
            err.starts_with("color: unknown field; record feedline.orders.OrderEvent has event_id"),
            "{err}"
        );
        let err = encode(&schema, &json!([1]), JsonMode::Plain).unwrap_err();
        assert_eq!(
            err,
            "expected record feedline.orders.OrderEvent (a JSON object), found [1]"
        );
    }

    #[test]
    fn unions_pick_the_branch_by_type() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "U", "fields": [
                {"name": "a", "type": ["null", "long", "string"]},
                {"name": "b", "type": ["int", "double"]},
                {"name": "c", "type": ["string", {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}]},
                {"name": "d", "type": ["null", {"type": "map", "values": "int"}, {"type": "array", "items": "string"}]}
            ]}"#,
        )
        .unwrap();
        let bytes = encode(
            &schema,
            &json!({"a": "x", "b": 2.5, "c": "GREEN", "d": ["q"]}),
            JsonMode::Plain,
        )
        .unwrap();
        // a: branch 2 ("x"), b: branch 1 (double 2.5), c: branch 1 (enum index 1), d: branch 2
        assert_eq!(bytes[0], 0x04);
        let avro = decode(&schema, &bytes, JsonMode::Avro);
        assert_eq!(
            avro,
            json!({"a": {"string": "x"}, "b": {"double": 2.5}, "c": {"Color": "GREEN"}, "d": {"array": ["q"]}})
        );
        // Avro's JSON encoding is accepted as input too.
        assert_eq!(encode(&schema, &avro, JsonMode::Plain).unwrap(), bytes);
        assert_eq!(
            round_trip(&schema, json!({"a": 7, "b": 3, "c": "BLUE", "d": {"k": 1}})),
            json!({"a": 7, "b": 3, "c": "BLUE", "d": {"k": 1}})
        );
        assert_eq!(
            encode(
                &schema,
                &json!({"a": true, "b": 1, "c": "x", "d": null}),
                JsonMode::Plain
            )
            .unwrap_err(),
            "a: expected one of null, long, string, found true"
        );
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "D", "namespace": "t", "fields": [
                {"name": "n", "type": "int", "default": 42},
                {"name": "s", "type": ["string", "null"], "default": "dflt"},
                {"name": "b", "type": "bytes", "default": "\u00ff"},
                {"name": "o", "type": ["null", "long"]},
                {"name": "inner", "type": {"type": "record", "name": "In", "fields": [{"name": "x", "type": "long", "default": 1}]}, "default": {}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            round_trip(&schema, json!({})),
            json!({"n": 42, "s": "dflt", "b": "/w==", "o": null, "inner": {"x": 1}})
        );
    }
}
