//! Avro binary straight from and into serde, without apache-avro's per-message machinery.
//!
//! apache-avro's schema-aware serializer looks every record field up by name in a map, keeps
//! a cache for fields that arrive out of order and goes through `io::Write`; that is most of
//! the ~280 ns an envelope costs. Our contract types are written in schema order, so a
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

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema, UuidSchema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Impossible, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

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
impl ser::Error for DirectError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DirectError::shape(msg)
    }
}

impl de::Error for DirectError {
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
    /// those comparisons were a third of an envelope's encoding (99 → 68 ns without them).
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
    pub fn decode<'de, T: de::Deserialize<'de>>(&self, bytes: &'de [u8]) -> Result<T, DirectError> {
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

// ----- encoding -------------------------------------------------------------------------

fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut buf = [0u8; 10];
    let mut n = 0;
    while z >= 0x80 {
        buf[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    buf[n] = z as u8;
    out.extend_from_slice(&buf[..=n]);
}

fn write_bytes(out: &mut Vec<u8>, v: &[u8]) {
    write_long(out, v.len() as i64);
    out.extend_from_slice(v);
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

struct Ser<'a> {
    out: &'a mut Vec<u8>,
    node: &'a Node,
}

impl Ser<'_> {
    fn int(self, v: i32, got: &str) -> Result<(), DirectError> {
        match self.node {
            Node::Int => {
                write_long(self.out, i64::from(v));
                Ok(())
            }
            node => Err(expected(node, got)),
        }
    }

    fn long(self, v: i64, got: &str) -> Result<(), DirectError> {
        match self.node {
            Node::Long => {
                write_long(self.out, v);
                Ok(())
            }
            node => Err(expected(node, got)),
        }
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = DirectError;
    type SerializeSeq = Block<'a>;
    type SerializeTuple = Impossible<(), DirectError>;
    type SerializeTupleStruct = Impossible<(), DirectError>;
    type SerializeTupleVariant = Impossible<(), DirectError>;
    type SerializeMap = Block<'a>;
    type SerializeStruct = Record<'a>;
    type SerializeStructVariant = Impossible<(), DirectError>;

    // Same integer rules as apache-avro: the narrow types are Avro ints, `i64` and `u32`
    // longs, and `u64` has no direct mapping.
    fn serialize_i8(self, v: i8) -> Result<(), DirectError> {
        self.int(v.into(), "i8")
    }
    fn serialize_i16(self, v: i16) -> Result<(), DirectError> {
        self.int(v.into(), "i16")
    }
    fn serialize_i32(self, v: i32) -> Result<(), DirectError> {
        self.int(v, "i32")
    }
    fn serialize_u8(self, v: u8) -> Result<(), DirectError> {
        self.int(v.into(), "u8")
    }
    fn serialize_u16(self, v: u16) -> Result<(), DirectError> {
        self.int(v.into(), "u16")
    }
    fn serialize_i64(self, v: i64) -> Result<(), DirectError> {
        self.long(v, "i64")
    }
    fn serialize_u32(self, v: u32) -> Result<(), DirectError> {
        self.long(v.into(), "u32")
    }
    fn serialize_u64(self, _: u64) -> Result<(), DirectError> {
        Err(expected(self.node, "u64"))
    }

    fn serialize_bool(self, v: bool) -> Result<(), DirectError> {
        match self.node {
            Node::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            node => Err(expected(node, "bool")),
        }
    }

    fn serialize_f32(self, v: f32) -> Result<(), DirectError> {
        match self.node {
            Node::Float => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            node => Err(expected(node, "f32")),
        }
    }

    fn serialize_f64(self, v: f64) -> Result<(), DirectError> {
        match self.node {
            Node::Double => {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            node => Err(expected(node, "f64")),
        }
    }

    fn serialize_char(self, _: char) -> Result<(), DirectError> {
        Err(expected(self.node, "char"))
    }

    fn serialize_str(self, v: &str) -> Result<(), DirectError> {
        match self.node {
            Node::String => {
                write_bytes(self.out, v.as_bytes());
                Ok(())
            }
            node => Err(expected(node, "str")),
        }
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), DirectError> {
        match self.node {
            Node::Bytes => {
                write_bytes(self.out, v);
                Ok(())
            }
            Node::Fixed(size) if *size == v.len() => {
                self.out.extend_from_slice(v);
                Ok(())
            }
            Node::Fixed(size) => Err(DirectError::Shape(format!(
                "{} bytes for a fixed of {size}",
                v.len()
            ))),
            node => Err(expected(node, "bytes")),
        }
    }

    fn serialize_none(self) -> Result<(), DirectError> {
        match self.node {
            Node::Union {
                null: Some(null), ..
            } => {
                write_long(self.out, *null as i64);
                Ok(())
            }
            node => Err(expected(node, "Option")),
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), DirectError> {
        match self.node {
            Node::Union {
                branches,
                null: Some(null),
            } => {
                let some = 1 - *null;
                write_long(self.out, some as i64);
                value.serialize(Ser {
                    out: self.out,
                    node: &branches[some],
                })
            }
            node => Err(expected(node, "Option")),
        }
    }

    fn serialize_unit(self) -> Result<(), DirectError> {
        match self.node {
            Node::Null => Ok(()),
            node => Err(expected(node, "()")),
        }
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), DirectError> {
        Err(expected(self.node, "unit struct"))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<(), DirectError> {
        let position = match self.node {
            // By symbol name, as apache-avro does (the index first, the usual case).
            Node::Enum(symbols) => match symbols.get(index as usize) {
                Some(s) if s == variant => Some(index as usize),
                _ => symbols.iter().position(|s| s == variant),
            },
            Node::Union { branches, .. } => match branches.get(index as usize) {
                Some(Node::Null) => Some(index as usize),
                Some(Node::Record { name, fields }) if fields.is_empty() && name == variant => {
                    Some(index as usize)
                }
                _ => None,
            },
            _ => None,
        };
        match position {
            Some(p) => {
                write_long(self.out, p as i64);
                Ok(())
            }
            None => Err(expected(self.node, "unit variant")),
        }
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), DirectError> {
        Err(expected(self.node, "newtype struct"))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), DirectError> {
        // apache-avro maps the variant index to the union branch, whatever the names.
        match self.node {
            Node::Union { branches, .. } if (index as usize) < branches.len() => {
                write_long(self.out, i64::from(index));
                value.serialize(Ser {
                    out: self.out,
                    node: &branches[index as usize],
                })
            }
            node => Err(expected(node, "newtype variant")),
        }
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Block<'a>, DirectError> {
        match (self.node, len) {
            (Node::Array(items), Some(len)) => Ok(Block::start(self.out, items, len)),
            (node, _) => Err(expected(node, "sequence")),
        }
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Block<'a>, DirectError> {
        match (self.node, len) {
            (Node::Map(values), Some(len)) => Ok(Block::start(self.out, values, len)),
            (node, _) => Err(expected(node, "map")),
        }
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Record<'a>, DirectError> {
        match self.node {
            Node::Record { fields, .. } => Ok(Record {
                out: self.out,
                fields,
                next: 0,
            }),
            node => Err(expected(node, name)),
        }
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, DirectError> {
        Err(expected(self.node, "tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, DirectError> {
        Err(expected(self.node, "tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, DirectError> {
        Err(expected(self.node, "tuple variant"))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, DirectError> {
        Err(expected(self.node, "struct variant"))
    }

    fn is_human_readable(&self) -> bool {
        // apache-avro's default: a `Uuid` or a timestamp type must serialize the same way
        // through both paths.
        false
    }
}

/// A record's fields, which must come in schema order under the schema's names.
struct Record<'a> {
    out: &'a mut Vec<u8>,
    fields: &'a [Field],
    next: usize,
}

impl ser::SerializeStruct for Record<'_> {
    type Ok = ();
    type Error = DirectError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), DirectError> {
        let field = match self.fields.get(self.next) {
            Some(f) if f.is_named(key) => f,
            Some(f) => {
                return Err(DirectError::Shape(format!(
                    "field {key} where the schema has {}",
                    f.name
                )));
            }
            None => return Err(DirectError::Shape(format!("field {key} not in the schema"))),
        };
        self.next += 1;
        value.serialize(Ser {
            out: self.out,
            node: &field.node,
        })
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), DirectError> {
        // apache-avro writes the schema default for a skipped field; left to it.
        Err(DirectError::Shape(format!("field {key} skipped")))
    }

    fn end(self) -> Result<(), DirectError> {
        match self.fields.get(self.next) {
            None => Ok(()),
            Some(f) => Err(DirectError::Shape(format!("field {} missing", f.name))),
        }
    }
}

/// An array or map of known length, written as apache-avro does: one block of `len` items
/// (none when empty), then the terminating zero count.
struct Block<'a> {
    out: &'a mut Vec<u8>,
    item: &'a Node,
    left: usize,
}

impl<'a> Block<'a> {
    fn start(out: &'a mut Vec<u8>, item: &'a Node, len: usize) -> Self {
        if len > 0 {
            write_long(out, len as i64);
        }
        Block {
            out,
            item,
            left: len,
        }
    }

    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DirectError> {
        self.left = self
            .left
            .checked_sub(1)
            .ok_or_else(|| DirectError::shape("more items than the announced length"))?;
        value.serialize(Ser {
            out: self.out,
            node: self.item,
        })
    }

    fn finish(self) -> Result<(), DirectError> {
        if self.left != 0 {
            return Err(DirectError::shape("fewer items than the announced length"));
        }
        self.out.push(0);
        Ok(())
    }
}

impl ser::SerializeSeq for Block<'_> {
    type Ok = ();
    type Error = DirectError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DirectError> {
        self.item(value)
    }

    fn end(self) -> Result<(), DirectError> {
        self.finish()
    }
}

impl ser::SerializeMap for Block<'_> {
    type Ok = ();
    type Error = DirectError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), DirectError> {
        // The key belongs to the entry counted by the value.
        key.serialize(Ser {
            out: self.out,
            node: &STRING,
        })
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DirectError> {
        self.item(value)
    }

    fn end(self) -> Result<(), DirectError> {
        self.finish()
    }
}

// ----- decoding -------------------------------------------------------------------------

fn truncated() -> DirectError {
    DirectError::data("truncated")
}

fn read_long(input: &mut &[u8]) -> Result<i64, DirectError> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = input.split_first().ok_or_else(truncated)?;
        *input = rest;
        // The tenth byte may only carry the top bit of 64.
        if i == 9 && byte > 1 {
            return Err(DirectError::data("varint longer than 64 bits"));
        }
        z |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(DirectError::data("varint longer than 10 bytes"))
}

fn read_int(input: &mut &[u8]) -> Result<i32, DirectError> {
    let v = read_long(input)?;
    i32::try_from(v).map_err(|_| DirectError::Data(format!("{v} is out of range for an int")))
}

/// A length, checked against what is left before anyone allocates for it.
fn read_len(input: &mut &[u8]) -> Result<usize, DirectError> {
    let len = read_long(input)?;
    match usize::try_from(len) {
        Ok(len) if len <= input.len() => Ok(len),
        Ok(len) => Err(DirectError::Data(format!(
            "length {len} but only {} bytes left",
            input.len()
        ))),
        Err(_) => Err(DirectError::Data(format!("negative length {len}"))),
    }
}

fn read_slice<'de>(input: &mut &'de [u8], len: usize) -> Result<&'de [u8], DirectError> {
    if input.len() < len {
        return Err(truncated());
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

fn read_array<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], DirectError> {
    let bytes = read_slice(input, N)?;
    Ok(bytes.try_into().expect("read_slice returns N bytes"))
}

fn read_index(input: &mut &[u8], len: usize, what: &str) -> Result<usize, DirectError> {
    let index = read_int(input)?;
    match usize::try_from(index) {
        Ok(i) if i < len => Ok(i),
        _ => Err(DirectError::Data(format!(
            "{what} index {index} out of 0..{len}"
        ))),
    }
}

struct De<'a, 'de> {
    input: &'a mut &'de [u8],
    node: &'a Node,
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DirectError> {
            self.deserialize_any(visitor)
        })*
    };
}

impl<'de> de::Deserializer<'de> for De<'_, 'de> {
    type Error = DirectError;

    // The schema says what comes next, so "any" is well defined; typed requests go the same
    // way and the visitor rejects a type it cannot take.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DirectError> {
        let input = self.input;
        match self.node {
            Node::Null => visitor.visit_unit(),
            Node::Boolean => match read_array::<1>(input)? {
                [0] => visitor.visit_bool(false),
                [1] => visitor.visit_bool(true),
                [b] => Err(DirectError::Data(format!("{b} is not a boolean"))),
            },
            Node::Int => visitor.visit_i32(read_int(input)?),
            Node::Long => visitor.visit_i64(read_long(input)?),
            Node::Float => visitor.visit_f32(f32::from_le_bytes(read_array(input)?)),
            Node::Double => visitor.visit_f64(f64::from_le_bytes(read_array(input)?)),
            Node::Bytes => {
                let len = read_len(input)?;
                visitor.visit_borrowed_bytes(read_slice(input, len)?)
            }
            Node::String => {
                let len = read_len(input)?;
                let bytes = read_slice(input, len)?;
                let s = std::str::from_utf8(bytes)
                    .map_err(|e| DirectError::Data(format!("string is not UTF-8: {e}")))?;
                visitor.visit_borrowed_str(s)
            }
            Node::Fixed(size) => visitor.visit_borrowed_bytes(read_slice(input, *size)?),
            Node::Enum(symbols) => {
                let i = read_index(input, symbols.len(), "enum symbol")?;
                visitor.visit_str(&symbols[i])
            }
            Node::Array(items) => visitor.visit_seq(Blocks::new(input, items)),
            Node::Map(values) => visitor.visit_map(Blocks::new(input, values)),
            Node::Record { fields, .. } => visitor.visit_map(Fields {
                input,
                fields,
                next: 0,
            }),
            Node::Union { branches, null } => {
                let i = read_index(input, branches.len(), "union branch")?;
                let branch = De {
                    input,
                    node: &branches[i],
                };
                match null {
                    Some(n) if *n == i => visitor.visit_none(),
                    Some(_) => visitor.visit_some(branch),
                    None => branch.deserialize_any(visitor),
                }
            }
            node @ Node::Unsupported(_) => Err(expected(node, "a value")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DirectError> {
        match self.node {
            Node::Union { null: Some(_), .. } => self.deserialize_any(visitor),
            node => Err(expected(node, "Option")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DirectError> {
        match self.node {
            Node::Record { .. } => self.deserialize_any(visitor),
            node => Err(expected(node, name)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DirectError> {
        match self.node {
            // Plain enums by symbol name, unions by branch index: apache-avro's mapping.
            Node::Enum(symbols) => {
                let i = read_index(self.input, symbols.len(), "enum symbol")?;
                visitor.visit_enum(Variant {
                    input: self.input,
                    tag: Tag::Symbol(&symbols[i]),
                    node: &NULL,
                })
            }
            Node::Union { branches, .. } => {
                let i = read_index(self.input, branches.len(), "union branch")?;
                visitor.visit_enum(Variant {
                    input: self.input,
                    tag: Tag::Index(i as u32),
                    node: &branches[i],
                })
            }
            node => Err(expected(node, name)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: V,
    ) -> Result<V::Value, DirectError> {
        Err(expected(self.node, name))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: V,
    ) -> Result<V::Value, DirectError> {
        Err(expected(self.node, name))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, DirectError> {
        Err(expected(self.node, "tuple"))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: usize,
        _: V,
    ) -> Result<V::Value, DirectError> {
        Err(expected(self.node, name))
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A record read as a map keyed by the schema's field names, as apache-avro reads it: the
/// type's `Deserialize` matches the names, so a missing or misnamed field is an error.
struct Fields<'a, 'de> {
    input: &'a mut &'de [u8],
    fields: &'a [Field],
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_, 'de> {
    type Error = DirectError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DirectError> {
        match self.fields.get(self.next) {
            Some(f) => seed
                .deserialize(f.name.as_str().into_deserializer())
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DirectError> {
        let field = self
            .fields
            .get(self.next)
            .ok_or_else(|| DirectError::shape("value without a key"))?;
        self.next += 1;
        seed.deserialize(De {
            input: &mut *self.input,
            node: &field.node,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len() - self.next)
    }
}

/// The items of an array or the entries of a map, block by block.
struct Blocks<'a, 'de> {
    input: &'a mut &'de [u8],
    item: &'a Node,
    /// Items left in the current block.
    left: usize,
    /// Items the rest of the array may still have: every block header takes at least a
    /// byte, so bounding the total by the input length at the start bounds the work even
    /// for items that take no bytes (`null`, empty records).
    budget: usize,
    done: bool,
}

impl<'a, 'de> Blocks<'a, 'de> {
    fn new(input: &'a mut &'de [u8], item: &'a Node) -> Self {
        let budget = input.len();
        Blocks {
            input,
            item,
            left: 0,
            budget,
            done: false,
        }
    }

    /// Whether another item follows, reading the next block header when one is due.
    fn more(&mut self) -> Result<bool, DirectError> {
        while self.left == 0 && !self.done {
            let count = read_long(self.input)?;
            if count == 0 {
                self.done = true;
                break;
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                let size = read_long(self.input)?;
                if size < 0 {
                    return Err(DirectError::Data(format!("negative block size {size}")));
                }
            }
            let count = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
            if count > self.budget {
                return Err(DirectError::Data(format!(
                    "block of {count} items in {} bytes",
                    self.budget
                )));
            }
            self.budget -= count;
            self.left = count;
        }
        Ok(!self.done)
    }

    fn next_item<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
        node: &Node,
    ) -> Result<S::Value, DirectError> {
        seed.deserialize(De {
            input: &mut *self.input,
            node,
        })
    }
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, 'de> {
    type Error = DirectError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DirectError> {
        if !self.more()? {
            return Ok(None);
        }
        self.left -= 1;
        self.next_item(seed, self.item).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Blocks<'_, 'de> {
    type Error = DirectError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DirectError> {
        if !self.more()? {
            return Ok(None);
        }
        self.left -= 1;
        self.next_item(seed, &STRING).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DirectError> {
        self.next_item(seed, self.item)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

enum Tag<'a> {
    /// A plain enum's symbol, matched by name.
    Symbol(&'a str),
    /// A union branch, matched by variant index.
    Index(u32),
}

struct Variant<'a, 'de> {
    input: &'a mut &'de [u8],
    tag: Tag<'a>,
    node: &'a Node,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = DirectError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), DirectError> {
        let tag = match self.tag {
            Tag::Symbol(s) => seed.deserialize(s.into_deserializer()),
            Tag::Index(i) => seed.deserialize(i.into_deserializer()),
        }?;
        Ok((tag, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = DirectError;

    fn unit_variant(self) -> Result<(), DirectError> {
        match self.node {
            Node::Null => Ok(()),
            Node::Record { fields, .. } if fields.is_empty() => Ok(()),
            node => Err(expected(node, "unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DirectError> {
        seed.deserialize(De {
            input: self.input,
            node: self.node,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, DirectError> {
        Err(expected(self.node, "tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, DirectError> {
        Err(expected(self.node, "struct variant"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    /// The address shortcut never takes a different name for the field's: equal text at
    /// another address matches, other text at a matched address's length does not.
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
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;

    /// Every shape the direct path implements, in one record.
    const ALL: &str = r#"{"type":"record","name":"All","namespace":"t","fields":[
        {"name":"b","type":"boolean"},
        {"name":"i","type":"int"},
        {"name":"l","type":"long"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"f","type":"float"},
        {"name":"d","type":"double"},
        {"name":"s","type":"string"},
        {"name":"id","type":{"type":"string","logicalType":"uuid"}},
        {"name":"raw","type":"bytes"},
        {"name":"opt","type":["null","long"],"default":null},
        {"name":"opt_last","type":["string","null"]},
        {"name":"colour","type":{"type":"enum","name":"Colour","symbols":["RED","GREEN","BLUE"]}},
        {"name":"list","type":{"type":"array","items":"string"}},
        {"name":"map","type":{"type":"map","values":"int"}},
        {"name":"choice","type":[
            {"type":"record","name":"A","fields":[{"name":"x","type":"long"}]},
            {"type":"record","name":"B","fields":[{"name":"y","type":"string"},{"name":"a","type":"A"}]}
        ]}
    ]}"#;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct All {
        b: bool,
        i: i32,
        l: i64,
        ts: i64,
        f: f32,
        d: f64,
        s: String,
        id: String,
        #[serde(with = "serde_bytes_vec")]
        raw: Vec<u8>,
        opt: Option<i64>,
        opt_last: Option<String>,
        colour: Colour,
        list: Vec<String>,
        map: BTreeMap<String, i32>,
        choice: Choice,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    #[allow(clippy::upper_case_acronyms)]
    enum Colour {
        RED,
        GREEN,
        BLUE,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct A {
        x: i64,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct B {
        y: String,
        a: A,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Choice {
        A(A),
        B(B),
    }

    /// `Vec<u8>` as serde bytes (serde's default is a sequence of u8).
    mod serde_bytes_vec {
        use serde::{Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                    Ok(v.to_vec())
                }
            }
            d.deserialize_bytes(V)
        }
    }

    fn sample() -> All {
        All {
            b: true,
            i: -1,
            l: i64::MIN,
            ts: 1_764_000_000_123,
            f: 1.5,
            d: -0.25,
            s: "grüße, 世界 🚀".into(),
            id: "8a6e0804-2bd0-4672-b79d-d97027f9071a".into(),
            raw: vec![0, 255, 7],
            opt: Some(i64::MAX),
            opt_last: Some(String::new()),
            colour: Colour::BLUE,
            list: vec!["a".into(), String::new(), "ç".into()],
            map: [("k".to_owned(), i32::MIN), ("".to_owned(), i32::MAX)].into(),
            choice: Choice::B(B {
                y: "why".into(),
                a: A { x: -64 },
            }),
        }
    }

    fn variants() -> Vec<All> {
        let base = sample();
        let mut out = vec![base.clone()];
        for (i, l) in [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN]
            .into_iter()
            .enumerate()
        {
            let mut v = base.clone();
            v.l = l;
            v.i = [0, 1, -1, i32::MAX, i32::MIN][i % 5];
            v.b = i % 2 == 0;
            v.opt = if i % 3 == 0 { None } else { Some(l) };
            v.opt_last = if i % 2 == 0 {
                None
            } else {
                Some(format!("n{i}"))
            };
            v.colour = [Colour::RED, Colour::GREEN, Colour::BLUE][i % 3];
            v.list = (0..i).map(|n| n.to_string()).collect();
            v.map = (0..i).map(|n| (format!("k{n}"), n as i32)).collect();
            v.raw = vec![i as u8; i * 50];
            v.s = "x".repeat(i * 40);
            v.choice = if i % 2 == 0 {
                Choice::A(A { x: l })
            } else {
                Choice::B(B {
                    y: String::new(),
                    a: A { x: l },
                })
            };
            out.push(v);
        }
        out
    }

    fn apache_bytes<T: Serialize>(schema: &Schema, value: &T) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_ser_to_vec(value)
            .unwrap()
    }

    fn apache_read<T: DeserializeOwned>(schema: &Schema, bytes: &[u8]) -> T {
        GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_deser(&mut &bytes[..])
            .unwrap()
    }

    fn direct_bytes<T: Serialize>(codec: &DirectCodec, value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        codec.encode(value, &mut out).unwrap();
        out
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
    fn reads_blocks_with_negative_counts_and_several_blocks() {
        let schema = Schema::parse_str(r#"{"type":"array","items":"long"}"#).unwrap();
        let codec = DirectCodec::new(&schema).unwrap();
        // Block of -2 items (with its byte size 2), then a block of 1, then the end.
        let bytes = [3, 4, 4, 6, 2, 8, 0];
        assert_eq!(codec.decode::<Vec<i64>>(&bytes).unwrap(), vec![2, 3, 4]);
        assert_eq!(apache_read::<Vec<i64>>(&schema, &bytes), vec![2, 3, 4]);
    }

    #[test]
    fn zig_zag_varints_cover_the_whole_range() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            8191,
            -8192,
            i32::MAX as i64,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            assert_eq!(out, apache_bytes(&Schema::Long, &v), "{v}");
            assert_eq!(read_long(&mut out.as_slice()).unwrap(), v);
        }
    }

    #[test]
    fn a_type_of_another_shape_is_a_shape_error_not_wrong_bytes() {
        const S: &str = r#"{"type":"record","name":"P","fields":[
            {"name":"a","type":"string"},{"name":"b","type":"long"}]}"#;
        let codec = DirectCodec::new(&Schema::parse_str(S).unwrap()).unwrap();
        #[derive(Serialize, Deserialize, Debug)]
        struct Swapped {
            b: i64,
            a: String,
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct Narrow {
            a: String,
            b: i32,
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct Fewer {
            a: String,
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct More {
            a: String,
            b: i64,
            c: i64,
        }
        let mut out = Vec::new();
        let shape =
            |r: Result<(), DirectError>| assert!(matches!(r, Err(DirectError::Shape(_))), "{r:?}");
        shape(codec.encode(
            &Swapped {
                b: 1,
                a: "x".into(),
            },
            &mut out,
        ));
        shape(codec.encode(
            &Narrow {
                a: "x".into(),
                b: 1,
            },
            &mut out,
        ));
        shape(codec.encode(&Fewer { a: "x".into() }, &mut out));
        shape(codec.encode(
            &More {
                a: "x".into(),
                b: 1,
                c: 2,
            },
            &mut out,
        ));
        shape(codec.encode(&Some(1i64), &mut out));
        shape(codec.encode(&(1i64, 2i64), &mut out));

        // Reading is by field name, as apache-avro's: order does not matter, missing does.
        let bytes = [2, b'x', 4];
        let swapped: Swapped = codec.decode(&bytes).unwrap();
        assert_eq!((swapped.a.as_str(), swapped.b), ("x", 2));
        let more = codec.decode::<More>(&bytes).unwrap_err();
        assert!(matches!(more, DirectError::Shape(_)), "{more:?}");
        assert!(matches!(
            codec.decode::<i64>(&bytes),
            Err(DirectError::Shape(_))
        ));
    }

    #[test]
    fn malformed_bytes_are_data_errors_without_panics_or_big_allocations() {
        let schema = Schema::parse_str(ALL).unwrap();
        let codec = DirectCodec::new(&schema).unwrap();
        let good = apache_bytes(&schema, &sample());
        // Every truncation.
        for len in 0..good.len() {
            let r = codec.decode::<All>(&good[..len]);
            assert!(matches!(r, Err(DirectError::Data(_))), "{len}: {r:?}");
        }
        // Every single-byte corruption either decodes to something or fails cleanly.
        for i in 0..good.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = codec.decode::<All>(&bad);
            }
        }

        let string = DirectCodec::new(&Schema::String).unwrap();
        let data = |r: Result<String, DirectError>| {
            assert!(matches!(r, Err(DirectError::Data(_))), "{r:?}")
        };
        data(string.decode(&[1])); // length -1
        data(string.decode(&[0xfe, 0xff, 0xff, 0xff, 0x0f])); // 2 GiB claimed, nothing there
        data(string.decode(&[0xff; 11])); // varint that never ends
        data(string.decode(&[4, 0xc3, 0x28])); // invalid UTF-8
        data(string.decode(&[])); // empty

        let opt = DirectCodec::new(&Schema::parse_str(r#"["null","long"]"#).unwrap()).unwrap();
        assert!(matches!(
            opt.decode::<Option<i64>>(&[4, 2]),
            Err(DirectError::Data(_))
        ));
        assert!(matches!(
            opt.decode::<Option<i64>>(&[1, 2]),
            Err(DirectError::Data(_))
        ));
        assert_eq!(opt.decode::<Option<i64>>(&[2, 5]).unwrap(), Some(-3));

        // A block claiming far more items than bytes: refused before the vector grows.
        let nulls =
            DirectCodec::new(&Schema::parse_str(r#"{"type":"array","items":"null"}"#).unwrap())
                .unwrap();
        let huge = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0];
        assert!(matches!(
            nulls.decode::<Vec<()>>(&huge),
            Err(DirectError::Data(_))
        ));
        assert_eq!(nulls.decode::<Vec<()>>(&[4, 0]).unwrap(), vec![(), ()]);

        let boolean = DirectCodec::new(&Schema::Boolean).unwrap();
        assert!(matches!(
            boolean.decode::<bool>(&[2]),
            Err(DirectError::Data(_))
        ));
        let int = DirectCodec::new(&Schema::Int).unwrap();
        assert!(matches!(
            int.decode::<i32>(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            Err(DirectError::Data(_))
        ));
        let colour = DirectCodec::new(
            &Schema::parse_str(r#"{"type":"enum","name":"C","symbols":["RED"]}"#).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            colour.decode::<Colour>(&[2]),
            Err(DirectError::Data(_))
        ));
        assert_eq!(colour.decode::<Colour>(&[0]).unwrap(), Colour::RED);
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
