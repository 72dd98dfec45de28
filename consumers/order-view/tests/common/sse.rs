//! A Server-Sent Events client over reqwest, parsing the event stream itself.

use std::time::Duration;

use feedline_testkit::PATIENCE;
use serde_json::Value;

/// One Server-Sent Event; its id split into the generation and the change number.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<i64>,
    pub generation: Option<String>,
    pub event: String,
    pub data: Value,
}

impl Sse {
    /// The id as the feed sent it.
    pub fn raw_id(&self) -> Option<String> {
        Some(format!("{}-{}", self.generation.as_ref()?, self.id?))
    }
}

/// A feed client over reqwest, parsing the event stream itself.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    pub comments: usize,
}

impl SseClient {
    pub async fn connect(http: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut request = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("feed connected");
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{url}"
        );
        SseClient {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event, or `None` when the stream ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The next event; panics when none came in time.
    pub async fn next(&mut self) -> Sse {
        self.next_within(PATIENCE).await.expect("an event in time")
    }

    /// Reads until an event satisfies `stop`, returning everything read (it included).
    pub async fn read_until(&mut self, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut out = Vec::new();
        loop {
            let event = self.next().await;
            let done = stop(&event);
            out.push(event);
            if done {
                return out;
            }
        }
    }

    fn parse(&mut self, block: &str) -> Option<Sse> {
        let (event, comments) = parse_block(block);
        self.comments += comments;
        event
    }
}

/// Parses one SSE block (the text up to a blank line): the event, if it has fields, and
/// the number of comment lines.
pub fn parse_block(block: &str) -> (Option<Sse>, usize) {
    let (mut id, mut generation) = (None, None);
    let (mut event, mut data) = (String::from("message"), String::new());
    let (mut fields, mut comments) = (0, 0);
    for line in block.lines() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(':') {
            comments += 1;
            continue;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        fields += 1;
        match name {
            "id" => {
                let (g, seq) = value.rsplit_once('-').expect("<generation>-<seq>");
                generation = Some(g.to_owned());
                id = Some(seq.parse().expect("a change number"));
            }
            "event" => event = value.to_owned(),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    let event = (fields > 0).then(|| Sse {
        id,
        generation,
        event,
        data: serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("JSON data ({e}) in {block:?}")),
    });
    (event, comments)
}

/// Every event of an SSE body.
pub fn parse_events(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter_map(|block| parse_block(block).0)
        .collect()
}
