//! Decoding a consumer's batch: which decoder reads each message (a service says that much,
//! see [`Route`]), the schema cache's fast path, and what becomes of a message that cannot
//! be read.

use std::future::Future;
use std::pin::Pin;

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::de::DeserializeOwned;

use super::{AvroDecoder, CodecError, SchemaResolver};
use crate::consumer::{HandlerError, Outcome};
use crate::dlq::Rejection;

/// The future of a decode that fetches the writer's schema first.
pub type Fetching<'a, T> = Pin<Box<dyn Future<Output = Result<T, CodecError>> + Send + 'a>>;

/// Decodes one topic's messages into `T`, a service's message type. Every [`AvroDecoder`]
/// is one, for any `T` its type converts into (`impl From<OrderEvent> for Event`).
pub trait Decode<T>: Send + Sync {
    /// Decodes without I/O: `Ok(None)` when the writer's schema is not cached yet.
    fn decode_cached(&self, bytes: &[u8]) -> Result<Option<T>, CodecError>;

    /// Fetches the writer's schema, then decodes. Only a cache miss takes this path, which
    /// is why its future may be boxed.
    fn decode_fetching<'a>(&'a self, bytes: &'a [u8]) -> Fetching<'a, T>;
}

impl<U, T, R> Decode<T> for AvroDecoder<U, R>
where
    U: DeserializeOwned + Into<T> + Send + 'static,
    T: Send + 'static,
    R: SchemaResolver,
{
    fn decode_cached(&self, bytes: &[u8]) -> Result<Option<T>, CodecError> {
        Ok(AvroDecoder::decode_cached(self, bytes)?.map(Into::into))
    }

    fn decode_fetching<'a>(&'a self, bytes: &'a [u8]) -> Fetching<'a, T> {
        Box::pin(async move { self.decode(bytes).await.map(Into::into) })
    }
}

/// The per-message step of [`decode_batch`]: which decoder reads a message. A single
/// [`AvroDecoder`] reads every message; [`TopicDecoders`] picks one by topic.
pub trait Route<T>: Sync {
    /// The decoder of `msg`; an error is the message's own (it is dead-lettered when poison).
    fn route(&self, msg: &OwnedMessage) -> Result<&dyn Decode<T>, CodecError>;
}

impl<T, R> Route<T> for AvroDecoder<T, R>
where
    T: DeserializeOwned + Send + 'static,
    R: SchemaResolver,
{
    fn route(&self, _: &OwnedMessage) -> Result<&dyn Decode<T>, CodecError> {
        Ok(self)
    }
}

/// The decoders of a consumer's topics, one per topic (full, prefixed names).
pub struct TopicDecoders<T> {
    topics: Vec<String>,
    decoders: Vec<Box<dyn Decode<T>>>,
}

impl<T> Default for TopicDecoders<T> {
    fn default() -> Self {
        TopicDecoders {
            topics: Vec::new(),
            decoders: Vec::new(),
        }
    }
}

impl<T> std::fmt::Debug for TopicDecoders<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicDecoders")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl<T> TopicDecoders<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `topic`'s messages with `decoder`.
    pub fn topic(mut self, topic: impl Into<String>, decoder: impl Decode<T> + 'static) -> Self {
        self.topics.push(topic.into());
        self.decoders.push(Box::new(decoder));
        self
    }

    /// The topics, in the order they were added: what the consumer subscribes to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }
}

impl<T> Route<T> for TopicDecoders<T> {
    fn route(&self, msg: &OwnedMessage) -> Result<&dyn Decode<T>, CodecError> {
        match self.topics.iter().position(|t| t == msg.topic()) {
            Some(i) => Ok(self.decoders[i].as_ref()),
            None => Err(CodecError::Decode {
                id: 0,
                reason: format!("unexpected topic {}", msg.topic()),
            }),
        }
    }
}

/// Decodes every message of a batch for a [`crate::Handler`], each with the decoder
/// `decoders` picks for it: poison messages (bad framing, unknown schema, undecodable bytes)
/// are rejected into `outcome` and so go to the DLQ; a registry that cannot be reached
/// fails the batch for a retry. Returns the decoded values with their index in `batch`.
pub async fn decode_batch<T, S>(
    batch: &[OwnedMessage],
    outcome: &mut Outcome,
    decoders: &S,
) -> Result<Vec<(usize, T)>, HandlerError>
where
    S: Route<T> + ?Sized,
{
    let mut decoded = Vec::with_capacity(batch.len());
    decode_each(batch, outcome, decoders, |index, value| {
        decoded.push((index, value))
    })
    .await?;
    Ok(decoded)
}

/// [`decode_batch`], handing each decoded value with its index in `batch` to `each` as soon
/// as it is decoded: a handler can start on the first values while the rest decode. Both
/// the decoding and `each` run in the message's span ([`crate::telemetry::message_span`]).
pub async fn decode_each<T, S>(
    batch: &[OwnedMessage],
    outcome: &mut Outcome,
    decoders: &S,
    mut each: impl FnMut(usize, T),
) -> Result<(), HandlerError>
where
    S: Route<T> + ?Sized,
{
    for (index, msg) in batch.iter().enumerate() {
        // The message's own span (its trace continues), around its decoding and what the
        // handler does with the value.
        let span = crate::telemetry::message_span(msg);
        let bytes = msg.payload().unwrap_or_default();
        // A cached schema decodes without I/O or an allocated future: every message but the
        // first of each schema id.
        let decoded = match span.in_scope(|| {
            let decoder = decoders.route(msg)?;
            Ok::<_, CodecError>((decoder, decoder.decode_cached(bytes)?))
        }) {
            Ok((_, Some(value))) => Ok(value),
            Ok((decoder, None)) => span.within(decoder.decode_fetching(bytes)).await,
            Err(e) => Err(e),
        };
        match decoded {
            Ok(value) => span.in_scope(|| each(index, value)),
            Err(e) if e.is_poison() => {
                outcome.reject(index, Rejection::new(e.kind(), e.to_string()))
            }
            Err(e) => return Err(HandlerError::classified(e)),
        }
    }
    Ok(())
}
