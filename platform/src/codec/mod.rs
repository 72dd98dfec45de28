//! The wire format in one place: Confluent framing (magic byte 0, 4-byte big-endian schema
//! id, Avro binary) and the schema cache behind a small [`SchemaResolver`] trait, so tests
//! can use a fixed resolver and production the registry.
//!
//! The hot path does no schema parsing, no registry call and no `Value` tree: an
//! [`AvroEncoder`] is built once per (subject, schema) and serializes straight into the
//! output buffer; an [`AvroDecoder`] deserializes straight into the Rust type when the
//! message was written with the reader's own schema, and resolves through `Value` only for
//! data written with another (older or newer) schema. Both typed paths use [`DirectCodec`],
//! a schema-guided serde codec, rather than apache-avro's serializer (see `direct.rs`).

mod avro;
mod batch;
mod direct;
mod evolve;
mod registry;

pub use avro::{AvroDecoder, AvroEncoder};
pub use batch::{Decode, Fetching, Route, TopicDecoders, decode_batch, decode_each};
pub use direct::{DirectCodec, DirectError};
pub use registry::{FixedResolver, RegistryClient, SchemaResolver};

/// Confluent's framing: magic byte, then the schema id.
pub const MAGIC_BYTE: u8 = 0;
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message is {0} bytes, too short for the Confluent header (5 bytes)")]
    TooShort(usize),
    #[error("bad magic byte {0:#04x}: not Confluent-framed Avro")]
    BadMagic(u8),
    #[error("schema id {0} is not known to the registry")]
    UnknownSchemaId(u32),
    #[error("schema registry unreachable at {url}: {reason}")]
    RegistryUnavailable { url: String, reason: String },
    #[error("schema registry refused the request ({status}): {message}")]
    Registry { status: u16, message: String },
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("cannot encode value: {0}")]
    Encode(String),
    #[error("cannot decode payload with schema id {id}: {reason}")]
    Decode { id: u32, reason: String },
}

impl CodecError {
    /// Bytes that can never decode (as opposed to a registry that is away for a while):
    /// the consumer sends these to the DLQ.
    pub fn is_poison(&self) -> bool {
        matches!(
            self,
            CodecError::TooShort(_)
                | CodecError::BadMagic(_)
                | CodecError::UnknownSchemaId(_)
                | CodecError::Decode { .. }
                | CodecError::InvalidSchema(_)
        )
    }

    /// A stable word for the DLQ's `dlq.error.kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::TooShort(_) | CodecError::BadMagic(_) => "framing",
            CodecError::UnknownSchemaId(_) => "unknown-schema",
            CodecError::RegistryUnavailable { .. } | CodecError::Registry { .. } => "registry",
            CodecError::InvalidSchema(_) => "schema",
            CodecError::Encode(_) => "encode",
            CodecError::Decode { .. } => "decode",
        }
    }
}

/// Splits a Confluent-framed message into its schema id and Avro body.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(CodecError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Writes the Confluent header for `id` to `out`.
pub fn write_header(out: &mut Vec<u8>, id: u32) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        write_header(&mut out, 0x01020304);
        out.extend_from_slice(b"body");
        assert_eq!(out[..5], [0, 1, 2, 3, 4]);
        assert_eq!(split_frame(&out).unwrap(), (0x01020304, &b"body"[..]));
    }

    #[test]
    fn bad_frames_are_poison() {
        let short = split_frame(&[0, 1]).unwrap_err();
        assert!(matches!(short, CodecError::TooShort(2)) && short.is_poison());
        let magic = split_frame(b"{\"json\": true}").unwrap_err();
        assert!(matches!(magic, CodecError::BadMagic(b'{')) && magic.is_poison());
    }
}
