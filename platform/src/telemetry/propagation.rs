//! W3C trace context on Kafka messages: the `traceparent` (and `tracestate`) headers, written
//! from the current span when a message is produced, read back when it is consumed.
//!
//! By hand rather than through a `TextMapPropagator`: a traceparent is 55 bytes of fixed
//! layout, and formatting it on the stack keeps the produce path free of allocations.

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rdkafka::message::Headers;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

const LEN: usize = 55;

/// A W3C `traceparent` value (`00-<trace id>-<span id>-<flags>`), held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; LEN]);

impl std::fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Traceparent {
    /// The traceparent of `cx`; `None` when it names no span.
    pub fn of(cx: &SpanContext) -> Option<Self> {
        if !cx.is_valid() {
            return None;
        }
        let mut out = [0u8; LEN];
        out[..3].copy_from_slice(b"00-");
        write_hex(&mut out[3..35], &cx.trace_id().to_bytes());
        out[35] = b'-';
        write_hex(&mut out[36..52], &cx.span_id().to_bytes());
        out[52] = b'-';
        write_hex(&mut out[53..55], &[cx.trace_flags().to_u8()]);
        Some(Traceparent(out))
    }

    /// The traceparent of the current span (the innermost one entered on this thread).
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| Traceparent::of(cx.span().span_context()))
    }

    /// Parses a header value; `None` for anything but a valid version-00 (or later)
    /// traceparent naming a real trace and span.
    pub fn parse(value: &[u8]) -> Option<Self> {
        // Later versions may append fields after a dash; their first 55 bytes keep this layout.
        let head = value.get(..LEN)?;
        if value.len() > LEN && value[LEN] != b'-' {
            return None;
        }
        let text = std::str::from_utf8(head).ok()?;
        let bytes = text.as_bytes();
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let version = u8::from_str_radix(&text[..2], 16).ok()?;
        if version == 0xff || (version == 0 && value.len() != LEN) {
            return None;
        }
        if !text
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let parsed = Traceparent(head.try_into().ok()?);
        parsed.span_context(TraceState::NONE).map(|_| parsed)
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled with ASCII hex digits and dashes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The remote span context this traceparent names, with `state`.
    pub fn span_context(&self, state: TraceState) -> Option<SpanContext> {
        let text = self.as_str();
        let trace_id = TraceId::from_hex(&text[3..35]).ok()?;
        let span_id = SpanId::from_hex(&text[36..52]).ok()?;
        let flags = u8::from_str_radix(&text[53..55], 16).ok()?;
        let cx = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
            true,
            state,
        );
        cx.is_valid().then_some(cx)
    }
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 0xf) as usize];
    }
}

/// The trace context a producer adds to a message: the current span's traceparent and its
/// trace state, when there is one.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub traceparent: Traceparent,
    /// Empty when the trace carries no state (the common case: nothing is allocated).
    pub tracestate: String,
}

impl Outgoing {
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            Traceparent::of(sc).map(|traceparent| Outgoing {
                traceparent,
                tracestate: if sc.trace_state() == &TraceState::NONE {
                    String::new()
                } else {
                    sc.trace_state().header()
                },
            })
        })
    }
}

/// The span context a consumed message carries in its headers, if any.
pub fn extract<H: Headers + ?Sized>(headers: Option<&H>) -> Option<SpanContext> {
    let headers = headers?;
    let mut parent = None;
    let mut state = None;
    for h in (0..headers.count()).filter_map(|i| headers.try_get(i)) {
        match h.key {
            TRACEPARENT => parent = h.value.and_then(Traceparent::parse),
            TRACESTATE => state = h.value.and_then(|v| std::str::from_utf8(v).ok()),
            _ => {}
        }
    }
    let state = state
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or(TraceState::NONE);
    parent?.span_context(state)
}

/// The context whose remote parent is `cx`: what a span continuing a message's trace is
/// given as its parent.
pub fn remote_parent(cx: SpanContext) -> Context {
    Context::new().with_remote_span_context(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, Timestamp};

    fn context(state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            state,
        )
    }

    fn message(headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"payload".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    #[test]
    fn traceparent_is_the_w3c_text() {
        let tp = Traceparent::of(&context(TraceState::NONE)).unwrap();
        assert_eq!(
            tp.as_str(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(Traceparent::parse(tp.as_bytes()), Some(tp));
        assert!(Traceparent::of(&SpanContext::empty_context()).is_none());
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(Traceparent::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(Traceparent::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn headers_round_trip() {
        let state: TraceState = "vendor=value,other=1".parse().unwrap();
        let sent = context(state.clone());
        let tp = Traceparent::of(&sent).unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event-type",
                value: Some("x"),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(tp.as_bytes()),
            })
            .insert(Header {
                key: TRACESTATE,
                value: Some(&state.header()),
            });
        let msg = message(headers);
        let got = extract(msg.headers()).unwrap();
        assert_eq!(got.trace_id(), sent.trace_id());
        assert_eq!(got.span_id(), sent.span_id());
        assert!(got.is_sampled() && got.is_remote());
        assert_eq!(got.trace_state().header(), "vendor=value,other=1");
        let none = message(OwnedHeaders::new());
        assert!(extract(none.headers()).is_none());
    }
}
