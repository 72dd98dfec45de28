//! Avro binary straight from and into serde, without apache-avro's per-message machinery.
//!
//! apache-avro's schema-aware serializer looks every record field up by name in a map, keeps
//! a cache for fields that arrive out of order and goes through `io::Write`; that is most of
//! what an envelope costs. Our contract types are written in schema order, so a
//! [`DirectCodec`] compiles the schema once into a small tree ([`Node`]) and walks it beside
//! the serde calls, appending to a `Vec<u8>` (and reading from a `&[u8]`).
//!
//! Walking the schema is what makes it safe: every serde call is checked against the node it
//! lands on (kind, field name and position, union branch), so a type that does not have the
//! schema's exact shape fails with [`DirectError::Shape`] instead of writing bytes another
//! reader would misread. The rules mirror apache-avro 0.22's serde support (records by field
//! name in schema order, `Option` as a two-branch union with `null`, a Rust enum's variant
//! index as the union branch, unit variants as enum symbols), so whatever this codec writes
//! is byte for byte what apache-avro writes; anything it does not implement (decimals,
//! tuples, newtype structs, fields out of schema order, skipped fields, bare unions without
//! an enum) is a shape error, and the caller falls back to apache-avro for that value.
//!
//! Malformed bytes are [`DirectError::Data`]: lengths and counts are checked against the
//! bytes left before anything is allocated, so a corrupt length cannot ask for gigabytes.
//!
//! [`ser`] writes, [`de`] reads; both walk the [`Node`] tree compiled here.

mod de;
#[cfg(test)]
mod fixtures;
mod ser;

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema, UuidSchema};
use serde::{Serialize, de as serde_de, ser as serde_ser};
use std::sync::atomic::{AtomicUsize, Ordering};

use de::De;
use ser::Ser;

/// Why a value could not go through the direct path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectError {
    /// The value's serde shape does not match the schema here, or the shape is one this codec
    /// leaves to apache-avro. Nothing about the bytes; apache-avro may still handle it.
    #[error("shape does not fit the schema: {0}")]
    Shape(String),
    /// The bytes are not valid Avro data of the schema (truncated, bad index or length,
    /// invalid UTF-8).
    #[error("malformed avro data: {0}")]
    Data(String),
}

impl DirectError {
    fn shape(what: impl std::fmt::Display) -> Self {
        DirectError::Shape(what.to_string())
    }

    fn data(what: impl std::fmt::Display) -> Self {
        DirectError::Data(what.to_string())
    }
}

// Errors raised by `Serialize`/`Deserialize` impls (missing field, invalid type, ...) are
// about the type, not the bytes.
impl serde_ser::Error for DirectError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DirectError::shape(msg)
    }
}

impl serde_de::Error for DirectError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DirectError::shape(msg)
    }
}

/// The schema, compiled for the walk: references resolved, logical types reduced to the
/// encoding they share with their base type.
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    /// `int`, `date`, `time-millis`.
    Int,
    /// `long` and the `long`-based time and timestamp types.
    Long,
    Float,
    Double,
    /// `bytes` and `uuid` over bytes.
    Bytes,
    /// `string` and `uuid` over string.
    String,
    /// `fixed` (also `uuid` and `duration` over fixed): exactly this many bytes.
    Fixed(usize),
    Enum(Box<[String]>),
    Array(Box<Node>),
    Map(Box<Node>),
    Record {
        name: String,
        fields: Box<[Field]>,
    },
    Union {
        branches: Box<[Node]>,
        /// The `null` branch of a two-branch union: what `Option` maps to.
        null: Option<usize>,
    },
    /// A schema part this codec leaves to apache-avro (decimals, records flagged as apache
    /// derive's "union of records"): any value here is a shape error.
    Unsupported(&'static str),
}

#[derive(Debug)]
struct Field {
    name: String,
    node: Node,
    /// The address of the last key that was found equal to `name`. serde's derive hands
    /// `serialize_field` the same `&'static str` for a field every time, and static memory
    /// never changes, so comparing addresses (and lengths) replaces comparing the strings:
    /// string comparisons were a large share of an envelope's encoding.
    matched: AtomicUsize,
}

impl Field {
    fn new(name: String, node: Node) -> Self {
        Field {
            name,
            node,
            matched: AtomicUsize::new(0),
        }
    }

    fn is_named(&self, key: &'static str) -> bool {
        let address = key.as_ptr() as usize;
        if key.len() == self.name.len() && self.matched.load(Ordering::Relaxed) == address {
            return true;
        }
        let same = self.name == key;
        if same {
            self.matched.store(address, Ordering::Relaxed);
        }
        same
    }
}

static STRING: Node = Node::String;
static NULL: Node = Node::Null;

/// A schema compiled for direct encoding and decoding.
#[derive(Debug)]
pub struct DirectCodec {
    root: Node,
}

impl DirectCodec {
    /// Compiles `schema`; `None` for a recursive schema (the tree would be infinite), which
    /// then stays entirely with apache-avro.
    pub fn new(schema: &Schema) -> Option<DirectCodec> {
        let resolved = ResolvedSchema::try_from(schema).ok()?;
        let root = compile(schema, resolved.get_names(), &mut Vec::new())?;
        Some(DirectCodec { root })
    }

    /// Appends `value`'s Avro binary encoding to `out`. On error `out` may hold a partial
    /// encoding: the caller truncates it.
    pub fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), DirectError> {
        value.serialize(Ser {
            out,
            node: &self.root,
        })
    }

    /// Reads one `T` from the start of `bytes`. Trailing bytes are ignored, as apache-avro's
    /// reader does.
    pub fn decode<'de, T: serde_de::Deserialize<'de>>(
        &self,
        bytes: &'de [u8],
    ) -> Result<T, DirectError> {
        let mut input = bytes;
        T::deserialize(De {
            input: &mut input,
            node: &self.root,
        })
    }
}

fn compile(schema: &Schema, names: &NamesRef<'_>, open: &mut Vec<Name>) -> Option<Node> {
    Some(match schema {
        Schema::Null => Node::Null,
        Schema::Boolean => Node::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Node::Long,
        Schema::Float => Node::Float,
        Schema::Double => Node::Double,
        Schema::Bytes | Schema::Uuid(UuidSchema::Bytes) => Node::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => Node::String,
        Schema::Fixed(f) | Schema::Uuid(UuidSchema::Fixed(f)) | Schema::Duration(f) => {
            Node::Fixed(f.size)
        }
        Schema::Decimal(_) | Schema::BigDecimal => Node::Unsupported("decimal"),
        Schema::Enum(e) => Node::Enum(e.symbols.clone().into_boxed_slice()),
        Schema::Array(a) => Node::Array(Box::new(compile(&a.items, names, open)?)),
        Schema::Map(m) => Node::Map(Box::new(compile(&m.types, names, open)?)),
        Schema::Union(u) => {
            let branches = u
                .variants()
                .iter()
                .map(|b| compile(b, names, open))
                .collect::<Option<Box<[Node]>>>()?;
            let null = match branches.len() {
                2 => branches.iter().position(|b| matches!(b, Node::Null)),
                _ => None,
            };
            Node::Union { branches, null }
        }
        Schema::Record(r) => {
            if r.attributes.get("org.apache.avro.rust.union_of_records")
                == Some(&serde_json::Value::Bool(true))
            {
                return Some(Node::Unsupported("union-of-records record"));
            }
            if open.contains(&r.name) {
                return None;
            }
            open.push(r.name.clone());
            let fields = r
                .fields
                .iter()
                .map(|f| Some(Field::new(f.name.clone(), compile(&f.schema, names, open)?)))
                .collect::<Option<Box<[Field]>>>();
            open.pop();
            Node::Record {
                name: r.name.name().to_owned(),
                fields: fields?,
            }
        }
        // A named type used again: the tree repeats its definition. Recursion (a record that
        // contains itself) would never end, so it gives up.
        Schema::Ref { name } => {
            if open.contains(name) {
                return None;
            }
            compile(names.get(name)?, names, open)?
        }
    })
}

fn expected(node: &Node, got: &str) -> DirectError {
    DirectError::Shape(format!("{got} where the schema has {}", describe(node)))
}

fn describe(node: &Node) -> &'static str {
    match node {
        Node::Null => "null",
        Node::Boolean => "boolean",
        Node::Int => "int",
        Node::Long => "long",
        Node::Float => "float",
        Node::Double => "double",
        Node::Bytes => "bytes",
        Node::String => "string",
        Node::Fixed(_) => "fixed",
        Node::Enum(_) => "enum",
        Node::Array(_) => "array",
        Node::Map(_) => "map",
        Node::Record { .. } => "record",
        Node::Union { .. } => "union",
        Node::Unsupported(what) => what,
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::fixtures::{A, ALL, All, apache_bytes, apache_read, direct_bytes, variants};
    use super::*;

    #[test]
    fn field_names_match_by_text_whatever_their_address() {
        let field = Field::new("total".into(), Node::Long);
        assert!(field.is_named("total"));
        assert!(field.is_named("total"), "again, by address");
        let elsewhere: &'static str = Box::leak(String::from("total").into_boxed_str());
        assert!(field.is_named(elsewhere));
        let other: &'static str = Box::leak(String::from("tota1").into_boxed_str());
        assert!(!field.is_named(other));
        assert!(!field.is_named("tot"));
        assert!(field.is_named("total"));
    }

    #[test]
    fn writes_what_apache_avro_writes_and_reads_it_back() {
        let schema = Schema::parse_str(ALL).unwrap();
        let codec = DirectCodec::new(&schema).unwrap();
        for value in variants() {
            let expected = apache_bytes(&schema, &value);
            assert_eq!(direct_bytes(&codec, &value), expected, "{value:?}");
            let back: All = codec.decode(&expected).unwrap();
            assert_eq!(back, value);
            assert_eq!(apache_read::<All>(&schema, &expected), value);
        }
    }

    #[test]
    fn recursive_schemas_stay_with_apache_avro() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        )
        .unwrap();
        assert!(DirectCodec::new(&schema).is_none());
    }

    #[test]
    fn a_named_type_used_twice_is_compiled_twice() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Pair","fields":[
                {"name":"first","type":{"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}},
                {"name":"second","type":"A"}]}"#,
        )
        .unwrap();
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Pair {
            first: A,
            second: A,
        }
        let codec = DirectCodec::new(&schema).unwrap();
        let value = Pair {
            first: A { x: 1 },
            second: A { x: -2 },
        };
        let bytes = apache_bytes(&schema, &value);
        assert_eq!(direct_bytes(&codec, &value), bytes);
        assert_eq!(codec.decode::<Pair>(&bytes).unwrap(), value);
    }
}
