//! Typed Avro encoders and decoders over the Confluent framing.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use apache_avro::schema::ResolvedSchema;

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
    _type: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for AvroEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroEncoder")
            .field("id", &self.id)
            .finish_non_exhaustive()
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
            _type: PhantomData,
        })
    }

    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// Appends the framed message (header + Avro body) to `out`.
    pub fn encode_into(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        write_header(out, self.id);
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
    /// Same schema as the reader's: straight into `T`.
    Direct(GenericDatumReader<'static>),
    /// Another schema (older or newer): decode generically, resolve to the reader's
    /// schema, re-encode in it, then into `T`.
    Evolve {
        writer: &'static Schema,
        writer_names: ResolvedSchema<'static>,
        read: GenericDatumReader<'static>,
    },
}

/// Decodes messages of any registered schema id into `T`, whose Avro schema is `reader`.
pub struct AvroDecoder<T, R> {
    resolver: Arc<R>,
    reader_schema: &'static Schema,
    reader_form: String,
    reader_names: ResolvedSchema<'static>,
    direct: GenericDatumReader<'static>,
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
        let (id, mut body) = split_frame(bytes)?;
        if Some(id) == self.own_id {
            return self
                .direct
                .read_deser(&mut body)
                .map(Some)
                .map_err(|e| decode_error(id, e));
        }
        let cached = self.paths.read().expect("paths poisoned").get(&id).cloned();
        match cached {
            Some(path) => self.read(&path, id, body).map(Some),
            None => Ok(None),
        }
    }

    fn read(&self, path: &ReadPath, id: u32, mut body: &[u8]) -> Result<T, CodecError> {
        match path {
            ReadPath::Direct(reader) => reader
                .read_deser(&mut body)
                .map_err(|e| decode_error(id, e)),
            ReadPath::Evolve {
                writer,
                writer_names,
                read,
            } => {
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
            ReadPath::Direct(direct_reader(writer)?)
        } else {
            ReadPath::Evolve {
                writer,
                writer_names: ResolvedSchema::try_from(writer).map_err(invalid)?,
                read: direct_reader(writer)?,
            }
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
