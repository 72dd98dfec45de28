//! Schema text: validation with apache-avro (references included), the canonical form that
//! decides whether two registrations are the same schema, and minification of what is stored.
//!
//! Why not apache-avro's `canonical_form()` (Parsing Canonical Form) for identity: PCF strips
//! `default`, `logicalType`, `aliases` and `order`, so `long` and `timestamp-millis` would
//! share an id, and adding a default to a field (the usual way to make a change compatible)
//! would hand back the old id and version, whose readers lack that default. Confluent keeps
//! those attributes too. The form here is PCF's normalization (full names, no `namespace`, no
//! `doc`, primitive objects collapsed, sorted keys, no whitespace) keeping every attribute
//! that changes how data is read. It works on the JSON alone, so applying a log record never
//! needs the referenced schemas, and the result is the same on every instance.

use apache_avro::Schema;
use serde_json::{Map, Value};

pub const AVRO: &str = "AVRO";

/// The schema types this registry accepts (`GET /schemas/types`).
pub const SUPPORTED_TYPES: &[&str] = &[AVRO];

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema type {0} is not supported; this registry supports AVRO only")]
    UnsupportedType(String),
    #[error("the schema is empty")]
    Empty,
    #[error("the schema is not valid JSON: {0}")]
    Json(String),
    #[error("the schema is not a valid Avro schema: {0}")]
    Avro(String),
}

/// Checks `schemaType` (absent means AVRO, as in Confluent's API).
pub fn check_type(schema_type: Option<&str>) -> Result<(), SchemaError> {
    match schema_type {
        None => Ok(()),
        Some(t) if t.eq_ignore_ascii_case(AVRO) => Ok(()),
        Some(t) => Err(SchemaError::UnsupportedType(t.to_owned())),
    }
}

/// Parses the schema text as JSON, with a message that says what is wrong.
pub fn parse_json(text: &str) -> Result<Value, SchemaError> {
    if text.trim().is_empty() {
        return Err(SchemaError::Empty);
    }
    serde_json::from_str(text).map_err(|e| SchemaError::Json(e.to_string()))
}

/// Parses an Avro schema whose named types may come from `references` (the texts of the
/// referenced schemas, transitively), and returns it self-contained: references inlined, so
/// compatibility checks compare the types rather than their names.
pub fn parse_avro(text: &str, references: &[String]) -> Result<Schema, SchemaError> {
    parse_json(text)?;
    let avro = |e: apache_avro::Error| SchemaError::Avro(e.to_string());
    let schema = if references.is_empty() {
        Schema::parse_str(text).map_err(avro)?
    } else {
        let (mut schema, schemata) = Schema::parse_str_with_list(text, references).map_err(avro)?;
        schema.denormalize(&schemata).map_err(avro)?;
        schema
    };
    check_union_defaults(&schema)?;
    Ok(schema)
}

/// The Avro spec wants a union field's default to match the union's first type, and the Java
/// implementation (so Confluent's registry) rejects schemas where it does not; apache-avro
/// accepts them. Checked for the case that matters in practice: `null` defaults and unions
/// starting with `null`.
fn check_union_defaults(schema: &Schema) -> Result<(), SchemaError> {
    match schema {
        Schema::Record(record) => {
            for field in &record.fields {
                if let (Schema::Union(union), Some(default)) = (&field.schema, &field.default) {
                    let first_is_null = matches!(union.variants().first(), Some(Schema::Null));
                    if first_is_null != default.is_null() {
                        return Err(SchemaError::Avro(format!(
                            "the default of union field `{}` in `{}` must match the union's first type ({})",
                            field.name,
                            record.name.fullname(None),
                            if first_is_null { "null" } else { "not null" },
                        )));
                    }
                }
                check_union_defaults(&field.schema)?;
            }
            Ok(())
        }
        Schema::Array(array) => check_union_defaults(&array.items),
        Schema::Map(map) => check_union_defaults(&map.types),
        Schema::Union(union) => union.variants().iter().try_for_each(check_union_defaults),
        _ => Ok(()),
    }
}

/// The identity of a schema's text (see the module docs). Text that is not JSON (only ever
/// found in records written by someone else) is its own identity.
pub fn canonical(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(json) => {
            let mut out = String::with_capacity(text.len());
            write_sorted(&canonical_schema(&json, None), &mut out);
            out
        }
        Err(_) => text.to_owned(),
    }
}

/// `text` without insignificant whitespace, keys left in their order: what is stored and
/// served. `text` must be valid JSON.
pub fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// Qualifies a type name with the enclosing namespace (Avro's name resolution), leaving
/// primitive names and already-qualified names alone.
fn qualify(name: &str, namespace: Option<&str>) -> String {
    if PRIMITIVES.contains(&name) || name.contains('.') {
        return name.to_owned();
    }
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

fn canonical_schema(schema: &Value, namespace: Option<&str>) -> Value {
    match schema {
        Value::String(name) => Value::String(qualify(name, namespace)),
        Value::Array(branches) => Value::Array(
            branches
                .iter()
                .map(|b| canonical_schema(b, namespace))
                .collect(),
        ),
        Value::Object(map) => canonical_object(map, namespace),
        other => other.clone(),
    }
}

fn canonical_object(map: &Map<String, Value>, namespace: Option<&str>) -> Value {
    let kind = map.get("type").and_then(Value::as_str);
    match kind {
        Some("record" | "error" | "enum" | "fixed") => {
            let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
            let own_ns = map.get("namespace").and_then(Value::as_str);
            let fullname = if name.contains('.') {
                name.to_owned()
            } else {
                qualify(name, own_ns.or(namespace))
            };
            let inner_ns = fullname.rsplit_once('.').map(|(ns, _)| ns.to_owned());
            let mut out = Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "doc" | "namespace" => {}
                    "name" => {
                        out.insert(key.clone(), Value::String(fullname.clone()));
                    }
                    "fields" => {
                        let fields = value
                            .as_array()
                            .map(|fields| {
                                fields
                                    .iter()
                                    .map(|f| canonical_field(f, inner_ns.as_deref()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(key.clone(), Value::Array(fields));
                    }
                    "size" => {
                        out.insert(key.clone(), integer(value));
                    }
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(out)
        }
        Some(primitive)
            if map.keys().all(|k| k == "type" || k == "doc") && PRIMITIVES.contains(&primitive) =>
        {
            Value::String(primitive.to_owned())
        }
        _ => {
            let mut out = Map::new();
            for (key, value) in map {
                match key.as_str() {
                    "doc" => {}
                    "type" | "items" | "values" => {
                        out.insert(key.clone(), canonical_schema(value, namespace));
                    }
                    "size" | "precision" | "scale" => {
                        out.insert(key.clone(), integer(value));
                    }
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            // `{"type": "com.example.Named"}` is just a reference to the named type.
            if out.len() == 1
                && let Some(Value::String(name)) = out.get("type")
            {
                return Value::String(name.clone());
            }
            Value::Object(out)
        }
    }
}

fn canonical_field(field: &Value, namespace: Option<&str>) -> Value {
    let Value::Object(map) = field else {
        return field.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "doc" => {}
            "type" => {
                out.insert(key.clone(), canonical_schema(value, namespace));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// `"16"` and `16` are the same size ([INTEGERS] rule of the canonical form).
fn integer(value: &Value) -> Value {
    match value {
        Value::String(s) => s.parse::<i64>().map_or_else(|_| value.clone(), Value::from),
        _ => value.clone(),
    }
}

/// Writes `value` as compact JSON with object keys sorted, whatever map type serde_json was
/// built with (the `preserve_order` feature would otherwise keep insertion order).
fn write_sorted(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_sorted(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"{"type":"record","name":"User","namespace":"feedline.test","doc":"a user",
        "fields":[{"name":"id","type":"long","doc":"the id"},
                  {"name":"created","type":{"type":"long","logicalType":"timestamp-millis"}},
                  {"name":"tags","type":{"type":"array","items":{"type":"string"}},"default":[]}]}"#;

    #[test]
    fn whitespace_key_order_and_docs_do_not_matter() {
        let reordered = r#"{ "namespace" : "feedline.test", "name": "User", "type": "record",
            "fields": [ {"type": "long", "name": "id"},
                        {"name": "created", "type": {"logicalType": "timestamp-millis", "type": "long"}},
                        {"default": [], "name": "tags", "type": {"items": "string", "type": "array"}} ] }"#;
        assert_eq!(canonical(USER), canonical(reordered));
        let fullname = r#"{"type":"record","name":"feedline.test.User",
            "fields":[{"name":"id","type":"long"},
                      {"name":"created","type":{"type":"long","logicalType":"timestamp-millis"}},
                      {"name":"tags","type":{"type":"array","items":"string"},"default":[]}]}"#;
        assert_eq!(canonical(USER), canonical(fullname));
    }

    #[test]
    fn defaults_and_logical_types_do_matter() {
        let no_logical = USER.replace(r#","logicalType":"timestamp-millis""#, "");
        assert_ne!(canonical(USER), canonical(&no_logical));
        let no_default = USER.replace(r#","default":[]"#, "");
        assert_ne!(canonical(USER), canonical(&no_default));
    }

    #[test]
    fn references_to_named_types_are_qualified() {
        let short = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"c","type":"Customer"}]}"#;
        let full = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"c","type":"shop.Customer"}]}"#;
        assert_eq!(canonical(short), canonical(full));
    }

    #[test]
    fn minify_keeps_strings_and_order() {
        assert_eq!(
            minify("{ \"b\" : \"x y\\\" z\",\n \"a\": [1, 2] }"),
            r#"{"b":"x y\" z","a":[1,2]}"#
        );
    }

    #[test]
    fn avro_errors_say_what_is_wrong() {
        assert!(matches!(
            parse_avro("{\"type\":", &[]),
            Err(SchemaError::Json(_))
        ));
        assert!(matches!(parse_avro("  ", &[]), Err(SchemaError::Empty)));
        assert!(matches!(
            parse_avro(
                r#"{"type":"record","name":"X","fields":[{"name":"a","type":"nope"}]}"#,
                &[]
            ),
            Err(SchemaError::Avro(_))
        ));
        assert!(parse_avro(USER, &[]).is_ok());
        let bad_default = r#"{"type":"record","name":"X","fields":[{"name":"n","type":["null","string"],"default":"x"}]}"#;
        let message = parse_avro(bad_default, &[]).unwrap_err().to_string();
        assert!(message.contains("union field `n`"), "{message}");
        let good_default = bad_default.replace(r#""default":"x""#, r#""default":null"#);
        assert!(parse_avro(&good_default, &[]).is_ok());
        let string_first = r#"{"type":"record","name":"X","fields":[{"name":"n","type":["string","null"],"default":null}]}"#;
        assert!(parse_avro(string_first, &[]).is_err());
        assert_eq!(
            check_type(Some("PROTOBUF")).unwrap_err().to_string(),
            "schema type PROTOBUF is not supported; this registry supports AVRO only"
        );
    }

    #[test]
    fn references_resolve_named_types() {
        let customer = r#"{"type":"record","name":"Customer","namespace":"shop","fields":[{"name":"id","type":"long"}]}"#;
        let order = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"customer","type":"shop.Customer"}]}"#;
        assert!(parse_avro(order, &[]).is_err());
        let parsed = parse_avro(order, &[customer.to_owned()]).unwrap();
        // Inlined: the parsed schema carries the referenced record, not just its name.
        assert!(parsed.canonical_form().contains("\"id\""));
    }
}
