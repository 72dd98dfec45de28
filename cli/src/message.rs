//! Kafka messages as the commands show them: values decoded with the schema their id names
//! (fetched from the registry once per id), keys and headers as text where they are text,
//! base64 where they are not, and the `--filter` that selects them.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use feedline::codec::{CodecError, RegistryClient, SchemaResolver, split_frame, write_header};
use rdkafka::message::{Headers, Message};
use serde::ser::SerializeMap;
use serde_json::Value as Json;

use crate::avro_json::{self, AvroJson, ConvertError, JsonMode};

/// Parses a schema for the rest of the process: the datum readers and writers borrow it,
/// and one run sees a handful of schemas at most.
fn leak(text: &str) -> anyhow::Result<&'static Schema> {
    let schema =
        Schema::parse_str(text).map_err(|e| anyhow::anyhow!("invalid Avro schema: {e}"))?;
    Ok(Box::leak(Box::new(schema)))
}

/// Encodes JSON values against one registered schema: parsed and prepared once.
pub struct Encoder {
    id: u32,
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
    writer: GenericDatumWriter<'static>,
    mode: JsonMode,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(id: u32, schema: &str, mode: JsonMode) -> anyhow::Result<Self> {
        let schema = leak(schema)?;
        let resolved = ResolvedSchema::try_from(schema)
            .map_err(|e| anyhow::anyhow!("invalid Avro schema: {e}"))?;
        // Validation on: a value the converter let through that the schema refuses is
        // caught here instead of being written unreadable.
        let writer = GenericDatumWriter::builder(schema)
            .validate(true)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid Avro schema: {e}"))?;
        Ok(Encoder {
            id,
            schema,
            resolved,
            writer,
            mode,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The Confluent-framed message for `json`, or what in it does not fit the schema.
    pub fn encode(&self, json: &Json) -> Result<Vec<u8>, ConvertError> {
        let value = avro_json::to_avro(json, self.schema, self.resolved.get_names(), self.mode)?;
        let mut out = Vec::with_capacity(64);
        write_header(&mut out, self.id);
        self.writer
            .write_value_ref(&mut out, &value)
            .map_err(|e| ConvertError {
                path: String::new(),
                message: format!("the value does not match the schema: {e}"),
            })?;
        Ok(out)
    }
}

/// A schema ready to read the messages written with it.
pub struct Decoder {
    pub id: u32,
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
    reader: GenericDatumReader<'static>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    fn new(id: u32, text: &str) -> anyhow::Result<Self> {
        let schema = leak(text)?;
        let resolved = ResolvedSchema::try_from(schema)
            .map_err(|e| anyhow::anyhow!("invalid Avro schema: {e}"))?;
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| anyhow::anyhow!("invalid Avro schema: {e}"))?;
        Ok(Decoder {
            id,
            schema,
            resolved,
            reader,
        })
    }

    pub fn json<'a>(&'a self, value: &'a Value, mode: JsonMode) -> AvroJson<'a, 'static> {
        AvroJson::new(value, self.schema, self.resolved.get_names(), mode)
    }
}

/// A message body: Avro decoded with its schema, or bytes that are not (with why).
#[derive(Debug)]
pub enum Body {
    Avro { decoder: Arc<Decoder>, value: Value },
    Raw { bytes: Vec<u8>, reason: String },
    Null,
}

impl Body {
    pub fn json(&self, mode: JsonMode) -> Option<AvroJson<'_, 'static>> {
        match self {
            Body::Avro { decoder, value } => Some(decoder.json(value, mode)),
            _ => None,
        }
    }
}

/// Decoders by schema id, each fetched from the registry once; ids the registry does not
/// know are remembered too.
#[derive(Debug)]
pub struct Decoders {
    registry: RegistryClient,
    cache: HashMap<u32, Result<Arc<Decoder>, String>>,
}

impl Decoders {
    pub fn new(registry: RegistryClient) -> Self {
        Decoders {
            registry,
            cache: HashMap::new(),
        }
    }

    /// Decodes a Confluent-framed Avro message. Bytes that are not one, or whose schema id
    /// is unknown, come back as [`Body::Raw`]; only a registry that cannot be asked fails.
    pub async fn decode(&mut self, bytes: Option<&[u8]>) -> anyhow::Result<Body> {
        let Some(bytes) = bytes else {
            return Ok(Body::Null);
        };
        let raw = |reason: String| Body::Raw {
            bytes: bytes.to_vec(),
            reason,
        };
        let (id, mut body) = match split_frame(bytes) {
            Ok(frame) => frame,
            Err(e) => return Ok(raw(format!("not Confluent-framed Avro: {e}"))),
        };
        let decoder = match self.decoder(id).await? {
            Ok(decoder) => decoder,
            Err(reason) => return Ok(raw(reason)),
        };
        match decoder.reader.read_value(&mut body) {
            Ok(value) => Ok(Body::Avro { decoder, value }),
            Err(e) => Ok(raw(format!("does not decode with schema id {id}: {e}"))),
        }
    }

    async fn decoder(&mut self, id: u32) -> anyhow::Result<Result<Arc<Decoder>, String>> {
        if let Some(found) = self.cache.get(&id) {
            return Ok(found.clone());
        }
        let found = match self.registry.schema(id).await {
            Ok(text) => Decoder::new(id, &text)
                .map(Arc::new)
                .map_err(|e| format!("schema id {id}: {e:#}")),
            Err(CodecError::UnknownSchemaId(_)) => {
                Err(format!("schema id {id} is not known to the registry"))
            }
            Err(e) => return Err(e).context("cannot fetch a schema to decode a message"),
        };
        self.cache.insert(id, found.clone());
        Ok(found)
    }
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": ".."}`.
pub fn text_or_base64(bytes: &[u8]) -> Json {
    match std::str::from_utf8(bytes) {
        Ok(text) => Json::String(text.to_owned()),
        Err(_) => serde_json::json!({ "base64": BASE64.encode(bytes) }),
    }
}

pub fn base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A message's headers in order (a repeated name keeps its last value when printed).
pub fn headers<M: Message>(msg: &M) -> Vec<(String, Option<Vec<u8>>)> {
    msg.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// Headers as a JSON object, in order.
#[derive(Debug)]
pub struct HeadersJson<'a>(pub &'a [(String, Option<Vec<u8>>)]);

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, &value.as_deref().map(text_or_base64))?;
        }
        map.end()
    }
}

/// One `--filter k=v`: `k` names a header of the message or, when there is none of that
/// name, a field path in the decoded value (`payload.customer_id`).
#[derive(Debug, Clone)]
pub struct Filter {
    pub key: String,
    pub value: String,
}

impl Filter {
    pub fn parse(arg: &str) -> Result<Filter, String> {
        crate::cluster::key_value(arg).map(|(key, value)| Filter { key, value })
    }

    pub fn matches(&self, headers: &[(String, Option<Vec<u8>>)], body: &Body) -> bool {
        if let Some((_, value)) = headers.iter().rev().find(|(k, _)| *k == self.key) {
            return value.as_deref() == Some(self.value.as_bytes());
        }
        let Some(json) = body.json(JsonMode::Plain) else {
            return false;
        };
        match json.lookup(&self.key) {
            Some(Json::String(s)) => s == self.value,
            Some(other) => serde_json::to_string(&other).is_ok_and(|text| text == self.value),
            None => false,
        }
    }
}

pub fn all_match(filters: &[Filter], headers: &[(String, Option<Vec<u8>>)], body: &Body) -> bool {
    filters.iter().all(|f| f.matches(headers, body))
}
