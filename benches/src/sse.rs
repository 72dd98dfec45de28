//! Server-sent events read off a byte stream, as the feed clients of the saga, e2e and chaos
//! runs receive them in chunks that split lines anywhere.

/// One complete event.
#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    /// The `event:` field, empty when there was none.
    pub kind: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Collects lines across chunks and hands over each event once its blank line arrives.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    id: Option<String>,
    kind: String,
    data: String,
}

impl SseParser {
    /// Reads `chunk`, calling `each` for every event it completes; comments (keep-alives)
    /// complete none.
    pub fn feed(&mut self, chunk: &[u8], mut each: impl FnMut(SseEvent)) {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&self.buffer[start..start + end]);
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if !self.kind.is_empty() || !self.data.is_empty() {
                    each(SseEvent {
                        id: self.id.take(),
                        kind: std::mem::take(&mut self.kind),
                        data: std::mem::take(&mut self.data),
                    });
                }
                self.id = None;
            } else if let Some(v) = line.strip_prefix("event:") {
                self.kind = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(v.trim_start());
            } else if let Some(v) = line.strip_prefix("id:") {
                self.id = Some(v.trim().to_owned());
            }
            start += end + 1;
        }
        self.buffer.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_whole_and_keep_alives_come_not_at_all() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for chunk in [
            &b": keep-alive\n\nid: g-1\nevent: ord"[..],
            b"er\r\ndata: {\"a\":\ndata: 1}\n",
            b"\nevent: customer\ndata: x\n\n",
        ] {
            parser.feed(chunk, |e| events.push((e.id, e.kind, e.data)));
        }
        assert_eq!(
            events,
            [
                (Some("g-1".into()), "order".into(), "{\"a\":\n1}".into()),
                (None, "customer".into(), "x".into()),
            ]
        );
    }
}
