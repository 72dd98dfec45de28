//! Typed Avro encoders and decoders over the Confluent framing.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CodecError, SchemaResolver, split_frame, write_header};

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
    /// Another schema (older or newer): resolve to the reader's schema, then into `T`.
    Evolve {
        resolve: GenericDatumReader<'static>,
        rewrite: GenericDatumWriter<'static>,
    },
}

/// Decodes messages of any registered schema id into `T`, whose Avro schema is `reader`.
pub struct AvroDecoder<T, R> {
    resolver: Arc<R>,
    reader_schema: &'static Schema,
    reader_form: String,
    direct: GenericDatumReader<'static>,
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
            direct: direct_reader(reader_schema)?,
            own_id,
            paths: RwLock::default(),
            _type: PhantomData,
        })
    }

    pub async fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (id, mut body) = split_frame(bytes)?;
        if Some(id) == self.own_id {
            return self
                .direct
                .read_deser(&mut body)
                .map_err(|e| decode_error(id, e));
        }
        let cached = self.paths.read().expect("paths poisoned").get(&id).cloned();
        let path = match cached {
            Some(path) => path,
            None => self.load(id).await?,
        };
        match &*path {
            ReadPath::Direct(reader) => reader
                .read_deser(&mut body)
                .map_err(|e| decode_error(id, e)),
            ReadPath::Evolve { resolve, rewrite } => {
                // Rare path (data of another schema version): resolve through `Value`, then
                // re-encode in the reader's schema, since the direct deserializer cannot
                // resolve schemas itself.
                let value = resolve
                    .read_value(&mut body)
                    .map_err(|e| decode_error(id, e))?;
                let bytes = rewrite
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
                resolve: GenericDatumReader::builder(writer)
                    .reader_schema(self.reader_schema)
                    .build()
                    .map_err(|e| CodecError::InvalidSchema(e.to_string()))?,
                rewrite: GenericDatumWriter::builder(self.reader_schema)
                    .build()
                    .map_err(|e| CodecError::InvalidSchema(e.to_string()))?,
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

fn decode_error(id: u32, e: apache_avro::Error) -> CodecError {
    CodecError::Decode {
        id,
        reason: e.to_string(),
    }
}
