//! Reading: a serde `Deserializer` over a byte slice, guided by the compiled schema.
//! Lengths and counts are checked against the bytes left before anything is allocated.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::{DirectError, Field, NULL, Node, STRING, expected};

fn truncated() -> DirectError {
    DirectError::data("truncated")
}

pub(super) fn read_long(input: &mut &[u8]) -> Result<i64, DirectError> {
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

pub(super) struct De<'a, 'de> {
    pub(super) input: &'a mut &'de [u8],
    pub(super) node: &'a Node,
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
    use apache_avro::Schema;

    use super::super::fixtures::{ALL, All, Colour, apache_bytes, apache_read, sample};
    use crate::codec::{DirectCodec, DirectError};

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
}
