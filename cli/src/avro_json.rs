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

use std::fmt;

use apache_avro::schema::{
    DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, NamesRef, RecordSchema,
    UnionSchema,
};
use apache_avro::types::Value;
use apache_avro::{Days, Decimal, Duration, Millis, Months, Schema};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::Value as Json;

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

/// Renders an Avro value of `schema` as JSON (keys sorted: for printing in field order,
/// serialize an [`AvroJson`] instead).
pub fn to_json(value: &Value, schema: &Schema, names: &NamesRef<'_>, mode: JsonMode) -> Json {
    serde_json::to_value(AvroJson::new(value, schema, names, mode))
        .expect("an Avro value always renders as JSON")
}

/// The schema behind a reference (or the schema itself), with the namespace that names
/// inside it are relative to.
fn deref<'s>(
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
fn type_name(schema: &Schema, ns: Option<&str>) -> String {
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

/// `"-12.5"` with scale 2 → the two's-complement big-endian bytes of -1250, checked
/// against the precision.
fn decimal_to_bytes(text: &str, precision: usize, scale: usize) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err("not a decimal number".into());
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale {
        return Err(format!("more than {scale} decimal places"));
    }
    let unscaled: String = whole
        .chars()
        .chain(fraction.chars())
        .chain(std::iter::repeat_n('0', scale - fraction.len()))
        .collect();
    let unscaled = unscaled.trim_start_matches('0');
    if unscaled.len() > precision {
        return Err(format!("more than {precision} significant digits"));
    }
    // Big-endian magnitude, then two's complement.
    let mut magnitude: Vec<u8> = vec![0];
    for d in unscaled.bytes().map(|b| b - b'0') {
        let mut carry = u16::from(d);
        for byte in magnitude.iter_mut().rev() {
            let v = u16::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            magnitude.insert(0, carry as u8);
        }
    }
    // Room for the sign bit.
    if magnitude[0] & 0x80 != 0 {
        magnitude.insert(0, 0);
    }
    if negative && unscaled.chars().any(|c| c != '0') {
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    while magnitude.len() > 1
        && ((magnitude[0] == 0 && magnitude[1] & 0x80 == 0)
            || (magnitude[0] == 0xff && magnitude[1] & 0x80 != 0))
    {
        magnitude.remove(0);
    }
    Ok(magnitude)
}

/// Two's-complement big-endian bytes with `scale` → `"-12.50"`.
fn decimal_to_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = bytes.to_vec();
    if negative {
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    // Repeated division by ten of the big-endian magnitude.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder = 0u16;
        for byte in magnitude.iter_mut() {
            let v = (remainder << 8) | u16::from(*byte);
            *byte = (v / 10) as u8;
            remainder = v % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let digits = String::from_utf8(digits).expect("ASCII digits");
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// An Avro value rendered as JSON while serializing: records keep their field order and no
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
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::schema::ResolvedSchema;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    use super::*;

    fn encode(schema: &Schema, json: &Json, mode: JsonMode) -> Result<Vec<u8>, String> {
        let resolved = ResolvedSchema::try_from(schema).unwrap();
        let value = to_avro(json, schema, resolved.get_names(), mode).map_err(|e| e.to_string())?;
        let writer = GenericDatumWriter::builder(schema).build().unwrap();
        writer.write_value_to_vec(value).map_err(|e| e.to_string())
    }

    fn decode(schema: &Schema, bytes: &[u8], mode: JsonMode) -> Json {
        let resolved = ResolvedSchema::try_from(schema).unwrap();
        let reader = GenericDatumReader::builder(schema).build().unwrap();
        let value = reader.read_value(&mut &bytes[..]).unwrap();
        to_json(&value, schema, resolved.get_names(), mode)
    }

    fn round_trip(schema: &Schema, json: Json) -> Json {
        decode(
            schema,
            &encode(schema, &json, JsonMode::Plain).unwrap(),
            JsonMode::Plain,
        )
    }

    fn envelope() -> Schema {
        Schema::parse_str(feedline_schemas::envelope_schema("order-events").unwrap()).unwrap()
    }

    fn order_created() -> Json {
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
    fn decimals_convert_both_ways() {
        for (text, scale, bytes) in [
            ("0", 0, vec![0x00]),
            ("1", 0, vec![0x01]),
            ("-1", 0, vec![0xff]),
            ("127", 0, vec![0x7f]),
            ("128", 0, vec![0x00, 0x80]),
            ("-128", 0, vec![0x80]),
            ("-129", 0, vec![0xff, 0x7f]),
            ("12.34", 2, vec![0x04, 0xd2]),
            ("-12.34", 2, vec![0xfb, 0x2e]),
        ] {
            assert_eq!(decimal_to_bytes(text, 38, scale).unwrap(), bytes, "{text}");
            assert_eq!(decimal_to_string(&bytes, scale), text, "{text}");
        }
        assert_eq!(decimal_to_string(&[0x05], 2), "0.05");
        assert!(decimal_to_bytes("1e5", 10, 0).is_err());
        assert!(
            decimal_to_bytes("123", 2, 0)
                .unwrap_err()
                .contains("significant digits")
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
