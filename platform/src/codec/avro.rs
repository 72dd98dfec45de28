//! Typed Avro encoders and decoders over the Confluent framing.
//!
//! Values of the encoder's (decoder's own) schema go through [`DirectCodec`]; apache-avro's
//! serde support takes over for a value the direct path does not cover, and from then on for
//! that encoder or decoder, so a type with an unusual shape costs one failed attempt and keeps
//! working. Data written with another schema version is resolved through apache-avro.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use apache_avro::schema::ResolvedSchema;

use super::direct::{DirectCodec, DirectError};
use super::{CodecError, SchemaResolver, evolve, split_frame, write_header};

/// Parses a schema for the life of the process. apache-avro's readers and writers borrow
/// their schema; services see a handful of schemas, so leaking them is what lets the
/// prepared readers and writers be cached without re-parsing.
fn leak(schema: &str) -> Result<&'static Schema, CodecError> {
    let parsed = Schema::parse_str(schema).map_err(|e| CodecError::InvalidSchema(e.to_string()))?;
    Ok(Box::leak(Box::new(parsed)))
}

/// Encodes `T` against one registered schema: id looked up once, writer prepared once.
pub struct AvroEncoder<T> {
    id: u32,
    writer: GenericDatumWriter<'static>,
    direct: Direct,
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for AvroEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroEncoder")
            .field("id", &self.id)
            .field("direct", &self.direct.active())
            .finish_non_exhaustive()
    }
}

/// The direct path for one schema, and whether the type still takes it.
#[derive(Debug)]
struct Direct {
    codec: Option<DirectCodec>,
    /// Cleared when a value did not fit the direct path but apache-avro handled it: the
    /// type's shape differs from what the direct path covers, so the rest go to apache-avro
    /// without a failed attempt each.
    fits: AtomicBool,
}

impl Direct {
    fn new(schema: &Schema) -> Self {
        let codec = DirectCodec::new(schema);
        Direct {
            fits: AtomicBool::new(codec.is_some()),
            codec,
        }
    }

    fn active(&self) -> bool {
        self.fits.load(Ordering::Relaxed)
    }

    fn codec(&self) -> Option<&DirectCodec> {
        self.codec.as_ref().filter(|_| self.active())
    }

    fn give_up<T>(&self, id: u32, reason: &DirectError) {
        if self.fits.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                schema_id = id,
                type_name = std::any::type_name::<T>(),
                %reason,
                "type does not fit the direct avro path, using apache-avro for it from now on"
            );
        }
    }
}

impl<T: Serialize> AvroEncoder<T> {
    /// Registers `schema` under `subject` (an existing registration returns its id) and
    /// prepares the writer.
    pub async fn new<R: SchemaResolver>(
        resolver: &R,
        subject: &str,
        schema: &str,
    ) -> Result<Self, CodecError> {
        let parsed = leak(schema)?;
        let id = resolver.register(subject, schema).await?;
        Self::prepared(id, parsed)
    }

    fn prepared(id: u32, schema: &'static Schema) -> Result<Self, CodecError> {
        let writer = GenericDatumWriter::builder(schema)
            .build()
            .map_err(|e| CodecError::InvalidSchema(e.to_string()))?;
        Ok(AvroEncoder {
            id,
            writer,
            direct: Direct::new(schema),
            _type: PhantomData,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// Whether values still take the direct path (see [`DirectCodec`]).
    pub fn uses_direct_path(&self) -> bool {
        self.direct.codec().is_some()
    }

    /// Appends the framed message (header + Avro body) to `out`.
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        write_header(out, self.id);
        let Some(direct) = self.direct.codec() else {
            return self.encode_apache(value, out);
        };
        let start = out.len();
        match direct.encode(value, out) {
            Ok(()) => Ok(()),
            Err(reason) => {
                out.truncate(start);
                // A value apache-avro cannot write either is the value's fault, not the
                // type's: the direct path stays.
                self.encode_apache(value, out)?;
                self.direct.give_up::<T>(self.id, &reason);
                Ok(())
            }
        }
    }

    fn encode_apache(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.writer
            .write_ser(out, value)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        Ok(())
    }

    pub fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }
}

/// How to read data written with one particular writer schema.
enum ReadPath {
    /// Same schema as the reader's (registered under another id, or an id this decoder
    /// was not told about): the reader's own direct path.
    Same,
    /// Another schema (older or newer): decode generically, resolve to the reader's
    /// schema, re-encode in it, then into `T`.
    Evolve(Box<Evolve>),
}

struct Evolve {
    writer: &'static Schema,
    writer_names: ResolvedSchema<'static>,
    read: GenericDatumReader<'static>,
}

/// Decodes messages of any registered schema id into `T`, whose Avro schema is `reader`.
pub struct AvroDecoder<T, R> {
    resolver: Arc<R>,
    reader_schema: &'static Schema,
    reader_form: String,
    reader_names: ResolvedSchema<'static>,
    direct: GenericDatumReader<'static>,
    /// The direct path for data written with the reader's own id.
    own: Direct,
    rewrite: GenericDatumWriter<'static>,
    /// The reader schema's own id, once seen: the lock-free common case.
    own_id: Option<u32>,
    paths: RwLock<HashMap<u32, Arc<ReadPath>>>,
    _type: PhantomData<fn() -> T>,
}

impl<T, R> std::fmt::Debug for AvroDecoder<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroDecoder")
            .field("own_id", &self.own_id)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned, R: SchemaResolver> AvroDecoder<T, R> {
    /// `own_id` is the reader schema's registered id when known (messages with that id take
    /// the direct path without a cache look-up).
    pub fn new(resolver: Arc<R>, reader: &str, own_id: Option<u32>) -> Result<Self, CodecError> {
        let reader_schema = leak(reader)?;
        Ok(AvroDecoder {
            resolver,
            reader_schema,
            reader_form: reader_schema.canonical_form(),
            reader_names: ResolvedSchema::try_from(reader_schema).map_err(invalid)?,
            direct: direct_reader(reader_schema)?,
            own: Direct::new(reader_schema),
            rewrite: GenericDatumWriter::builder(reader_schema)
                .build()
                .map_err(invalid)?,
            own_id,
            paths: RwLock::default(),
            _type: PhantomData,
        })
    }

    /// Decodes `bytes`, fetching and caching the writer's schema the first time its id shows.
    pub async fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if let Some(value) = self.decode_cached(bytes)? {
            return Ok(value);
        }
        let (id, body) = split_frame(bytes)?;
        let path = self.load(id).await?;
        self.read(&path, id, body)
    }

    /// Decodes without any I/O: `Ok(None)` when the writer's schema id was never seen yet
    /// (then [`AvroDecoder::decode`] fetches it).
    pub fn decode_cached(&self, bytes: &[u8]) -> Result<Option<T>, CodecError> {
        let (id, body) = split_frame(bytes)?;
        if Some(id) == self.own_id {
            return self.read_own(id, body).map(Some);
        }
        let cached = self.paths.read().expect("paths poisoned").get(&id).cloned();
        match cached {
            Some(path) => self.read(&path, id, body).map(Some),
            None => Ok(None),
        }
    }

    /// Data written with the reader's own schema: the direct path, unless the type left it.
    fn read_own(&self, id: u32, mut body: &[u8]) -> Result<T, CodecError> {
        if let Some(direct) = self.own.codec() {
            match direct.decode(body) {
                Ok(value) => return Ok(value),
                // Malformed bytes are malformed for apache-avro too; no second attempt
                // (which would also allocate whatever a corrupt length asks for).
                Err(DirectError::Data(reason)) => return Err(CodecError::Decode { id, reason }),
                Err(reason @ DirectError::Shape(_)) => {
                    let value = self
                        .direct
                        .read_deser(&mut body)
                        .map_err(|e| decode_error(id, e))?;
                    self.own.give_up::<T>(id, &reason);
                    return Ok(value);
                }
            }
        }
        self.direct
            .read_deser(&mut body)
            .map_err(|e| decode_error(id, e))
    }

    /// Whether data of the reader's own schema still takes the direct path.
    pub fn uses_direct_path(&self) -> bool {
        self.own.codec().is_some()
    }

    fn read(&self, path: &ReadPath, id: u32, mut body: &[u8]) -> Result<T, CodecError> {
        match path {
            ReadPath::Same => self.read_own(id, body),
            ReadPath::Evolve(evolve) => {
                let Evolve {
                    writer,
                    writer_names,
                    read,
                } = evolve.as_ref();
                // Rare path (data of another schema version). apache-avro's own resolution
                // picks union branches structurally, so `evolve` resolves by name instead.
                let value = read
                    .read_value(&mut body)
                    .map_err(|e| decode_error(id, e))?;
                let schemas = evolve::Schemas {
                    writer_names: writer_names.get_names(),
                    reader_names: self.reader_names.get_names(),
                    reader_list: vec![self.reader_schema],
                };
                let value = evolve::resolve(value, writer, self.reader_schema, &schemas)
                    .map_err(|reason| CodecError::Decode { id, reason })?;
                let bytes = self
                    .rewrite
                    .write_value_to_vec(value)
                    .map_err(|e| decode_error(id, e))?;
                self.direct
                    .read_deser(&mut bytes.as_slice())
                    .map_err(|e| decode_error(id, e))
            }
        }
    }

    async fn load(&self, id: u32) -> Result<Arc<ReadPath>, CodecError> {
        let text = self.resolver.schema(id).await?;
        let writer = leak(&text)?;
        let path = if writer.canonical_form() == self.reader_form {
            ReadPath::Same
        } else {
            ReadPath::Evolve(Box::new(Evolve {
                writer,
                writer_names: ResolvedSchema::try_from(writer).map_err(invalid)?,
                read: direct_reader(writer)?,
            }))
        };
        let path = Arc::new(path);
        self.paths
            .write()
            .expect("paths poisoned")
            .insert(id, path.clone());
        Ok(path)
    }
}

fn direct_reader(schema: &'static Schema) -> Result<GenericDatumReader<'static>, CodecError> {
    GenericDatumReader::builder(schema)
        .build()
        .map_err(|e| CodecError::InvalidSchema(e.to_string()))
}

fn invalid(e: apache_avro::Error) -> CodecError {
    CodecError::InvalidSchema(e.to_string())
}

fn decode_error(id: u32, e: apache_avro::Error) -> CodecError {
    CodecError::Decode {
        id,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::codec::FixedResolver;

    const SCHEMA: &str = r#"{"type":"record","name":"P","fields":[
        {"name":"a","type":"string"},{"name":"b","type":["null","long"]}]}"#;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct InOrder {
        a: String,
        b: Option<i64>,
    }

    /// apache-avro writes fields by name in any order; the direct path does not.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OutOfOrder {
        b: Option<i64>,
        a: String,
    }

    #[tokio::test]
    async fn a_type_that_does_not_fit_falls_back_to_apache_avro_for_good() {
        let resolver = Arc::new(FixedResolver::new());
        let fits: AvroEncoder<InOrder> = AvroEncoder::new(&*resolver, "s", SCHEMA).await.unwrap();
        let misfit: AvroEncoder<OutOfOrder> =
            AvroEncoder::new(&*resolver, "s", SCHEMA).await.unwrap();
        assert!(fits.uses_direct_path() && misfit.uses_direct_path());

        let a = fits
            .encode(&InOrder {
                a: "ü".into(),
                b: Some(-1),
            })
            .unwrap();
        let b = misfit
            .encode(&OutOfOrder {
                b: Some(-1),
                a: "ü".into(),
            })
            .unwrap();
        assert_eq!(a, b, "same bytes either way");
        assert!(fits.uses_direct_path());
        assert!(
            !misfit.uses_direct_path(),
            "switched after the first misfit"
        );

        // Both decode either way: records are read by field name.
        let decoder: AvroDecoder<OutOfOrder, _> =
            AvroDecoder::new(resolver.clone(), SCHEMA, Some(fits.schema_id())).unwrap();
        assert_eq!(
            decoder.decode(&a).await.unwrap(),
            OutOfOrder {
                b: Some(-1),
                a: "ü".into()
            }
        );
        assert!(decoder.uses_direct_path());
    }

    #[tokio::test]
    async fn a_value_neither_path_can_write_is_an_encode_error() {
        #[derive(Serialize)]
        struct Wrong {
            a: i64,
        }
        let resolver = FixedResolver::new();
        let encoder: AvroEncoder<Wrong> = AvroEncoder::new(&resolver, "s", SCHEMA).await.unwrap();
        let mut out = vec![9];
        let err = encoder.encode_into(&Wrong { a: 1 }, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::Encode(_)), "{err:?}");
        assert!(
            encoder.uses_direct_path(),
            "a bad value does not switch paths"
        );
    }
}
