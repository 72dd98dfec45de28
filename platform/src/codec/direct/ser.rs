//! Writing: a serde `Serializer` that walks the compiled schema beside the value.

use serde::ser::{self, Impossible, Serialize};

use super::{DirectError, Field, Node, STRING, expected};

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

pub(super) struct Ser<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) node: &'a Node,
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
pub(super) struct Record<'a> {
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
pub(super) struct Block<'a> {
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

#[cfg(test)]
mod tests {
    use apache_avro::Schema;
    use serde::{Deserialize, Serialize};

    use super::super::de::read_long;
    use super::super::fixtures::apache_bytes;
    use super::*;
    use crate::codec::DirectCodec;

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
}
