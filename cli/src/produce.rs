//! One file: one pipeline (read, encode, send); only its tests take it past 600 lines.
//!
//! `feedline produce`: JSON in, Confluent-framed Avro out.
//!
//! Input is read on its own thread (stdin may be a slow pipe) and handed over in order;
//! each value is converted against the schema, framed and enqueued without waiting for the
//! broker; a second task awaits the acknowledgements in order, so sends are pipelined and
//! a failure is still attributed to its input line.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use feedline::Producer;
use feedline::codec::SchemaResolver;
use feedline::producer::{Outgoing, PendingDelivery};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::Output;
use crate::avro_json::JsonMode;
use crate::cluster::{Cluster, key_value};
use crate::message::Encoder;

const EXAMPLES: &str = "\
Examples:
  echo '{\"event_id\": \"...\", ...}' | feedline produce customer-commands --key-field payload.customer_id
  feedline produce order-events --file events.jsonl --key-field payload.customer_id --header source=replay
  feedline produce clicks --schema click.avsc --file clicks.json --rate 500
  feedline produce clicks --file one-click.json --count 100000 --rate 20000   # load: one value, 100000 times

Input is one JSON value per line, or one JSON array. Fields missing from a record take their
schema default; unions take the plain value or {\"Branch\": value}; bytes are base64;
timestamps are epoch numbers or RFC 3339 strings. Exit status: 0 when every value was sent,
1 when any was not (the summary says which), 2 for a usage error.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    /// Stop at the first value that cannot be sent; the rest of the input is not read.
    Stop,
    /// Report the value and go on with the next.
    Skip,
}

/// Publish JSON values as Avro, encoded against the topic's registered value schema.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ProduceArgs {
    /// Topic to publish to (its full name).
    topic: String,
    /// Read the JSON from this file instead of stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Encode with this schema (registered under <topic>-value if new) instead of the
    /// subject's latest version.
    #[arg(long, value_name = "FILE.avsc")]
    schema: Option<PathBuf>,
    /// The same key for every message.
    #[arg(long, conflicts_with = "key_field")]
    key: Option<String>,
    /// Take each message's key from this field of its JSON (`customer_id`,
    /// `payload.customer_id`).
    #[arg(long, value_name = "PATH")]
    key_field: Option<String>,
    /// A header for every message (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Messages per second (open loop: the schedule does not wait for acknowledgements).
    #[arg(long, value_name = "N", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Stop after N messages; with a single input value, send it N times.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Send every message to this partition instead of the key's.
    #[arg(long)]
    partition: Option<i32>,
    /// What to do with a value that cannot be sent.
    #[arg(long, value_enum, default_value = "stop")]
    on_error: OnError,
    /// The input is in Avro's JSON encoding (bytes as ISO-8859-1 strings, not base64).
    #[arg(long)]
    avro_json: bool,
    /// Summary format.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

fn positive_rate(arg: &str) -> Result<f64, String> {
    arg.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("expected a positive number of messages per second, got {arg:?}"))
}

/// Where a value came from: its line, or its place in a JSON array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Line(u64),
    Element(u64),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Element(n) => write!(f, "element {n}"),
        }
    }
}

/// One input value, or why it is not one.
type Input = (Place, Result<Json, String>);

/// Reads the input on a thread of its own. The first byte decides the format: `[` a JSON
/// array, anything else one value per line (blank lines skipped).
/// A read error arrives as the last input item. The thread is never joined: on Ctrl-C it may
/// still be blocked reading a terminal.
fn spawn_reader(source: Box<dyn Read + Send>, tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut line_number = 0;
        if let Err(e) = read_input(source, &tx, &mut line_number) {
            let place = Place::Line(line_number + 1);
            let _ = tx.blocking_send((place, Err(format!("cannot read the input: {e}"))));
        }
    });
}

fn read_input(
    source: Box<dyn Read + Send>,
    tx: &mpsc::Sender<Input>,
    number: &mut u64,
) -> std::io::Result<()> {
    let mut reader = std::io::BufReader::with_capacity(1 << 16, source);
    let first = loop {
        let buf = reader.fill_buf()?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first == Some(b'[') {
        let mut text = String::new();
        reader.read_to_string(&mut text)?;
        match serde_json::from_str::<Vec<Json>>(&text) {
            Ok(values) => {
                for (i, value) in values.into_iter().enumerate() {
                    if tx
                        .blocking_send((Place::Element(i as u64 + 1), Ok(value)))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            Err(e) => {
                let place = Place::Line(e.line() as u64);
                let _ = tx.blocking_send((place, Err(format!("invalid JSON array: {e}"))));
            }
        }
        return Ok(());
    }
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        *number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str::<Json>(&line).map_err(|e| {
            format!("invalid JSON at column {}: {e}", e.column())
                .replace(&format!(" at line 1 column {}", e.column()), "")
        });
        if tx.blocking_send((Place::Line(*number), parsed)).is_err() {
            return Ok(());
        }
    }
}

/// The field at a dotted path of the input (a union written as `{"Branch": {..}}` is
/// looked through).
fn field<'j>(json: &'j Json, path: &str) -> Option<&'j Json> {
    let mut at = json;
    for segment in path.split('.') {
        let object = at.as_object()?;
        at = match object.get(segment) {
            Some(next) => next,
            None if object.len() == 1 => object.values().next()?.as_object()?.get(segment)?,
            None => return None,
        };
    }
    Some(at)
}

fn key_of(json: &Json, path: &str) -> Result<Vec<u8>, String> {
    match field(json, path) {
        None | Some(Json::Null) => Err(format!("key field {path} is missing")),
        Some(Json::String(s)) => Ok(s.clone().into_bytes()),
        Some(other) => Ok(other.to_string().into_bytes()),
    }
}

/// What happened to the input, for the summary.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    bytes: u64,
    failed: Vec<(Place, String)>,
}

/// Awaits acknowledgements in enqueue order, counting and attributing failures.
async fn collect(
    mut rx: mpsc::Receiver<(Place, u64, PendingDelivery)>,
    progress: ProgressBar,
    stop_on_error: bool,
    failed_flag: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    while let Some((place, len, pending)) = rx.recv().await {
        match pending.acknowledged().await {
            Ok(_) => {
                tally.sent += 1;
                tally.bytes += len;
                progress.inc(1);
            }
            Err(e) => {
                let message = format!("not acknowledged by the broker: {e}");
                if !stop_on_error {
                    progress.suspend(|| eprintln!("error: {place}: {message} (skipped)"));
                }
                tally.failed.push((place, message));
                failed_flag.store(true, Ordering::Relaxed);
            }
        }
    }
    tally
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} sent  {per_sec}  eta {eta}")
                .expect("static template"),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{spinner} {pos} sent  {per_sec}  {elapsed}")
                .expect("static template"),
        ),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Looks up or registers the schema to encode with.
async fn encoder(cluster: &Cluster, args: &ProduceArgs) -> anyhow::Result<Encoder> {
    let subject = feedline_schemas::value_subject(&args.topic);
    let registry = cluster.registry();
    let mode = if args.avro_json {
        JsonMode::Avro
    } else {
        JsonMode::Plain
    };
    let (id, text) = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            apache_avro::Schema::parse_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a valid Avro schema: {e}", path.display())
            })?;
            let id = registry
                .register(&subject, &text)
                .await
                .with_context(|| format!("cannot register {} under {subject}", path.display()))?;
            (id, text)
        }
        None => match registry
            .version(&subject, "latest")
            .await
            .with_context(|| format!("cannot look up the schema of {}", args.topic))?
        {
            Some(latest) => (latest.id, latest.schema),
            None => bail!(
                "no schema is registered under {subject}; pass --schema FILE.avsc to register one"
            ),
        },
    };
    Encoder::new(id, &text, mode).with_context(|| format!("schema id {id} of {subject}"))
}

pub async fn run(cluster: &Cluster, args: ProduceArgs) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let partitions = cluster.partitions(&client, &args.topic)?;
    drop(client);
    if let Some(p) = args.partition
        && !partitions.contains(&p)
    {
        bail!(
            "topic {} has no partition {p} (it has {})",
            args.topic,
            partitions.len()
        );
    }
    let encoder = encoder(cluster, &args).await?;
    let producer = cluster.producer()?;

    let source: Box<dyn Read + Send> = match &args.file {
        Some(path) => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    // Ctrl-C (or SIGTERM) stops reading; what was enqueued is still awaited and counted.
    let interrupted = feedline::CancellationToken::new();
    feedline::shutdown::cancel_on_signal(interrupted.clone());

    let (input_tx, mut input) = mpsc::channel::<Input>(4096);
    spawn_reader(source, input_tx);

    // With a single input value and --count, the value is sent --count times.
    let first = next_input(&mut input, &interrupted).await;
    let second = if first.is_some() {
        next_input(&mut input, &interrupted).await
    } else {
        None
    };
    let repeat = args.count.filter(|_| first.is_some() && second.is_none());

    let progress = progress_bar(args.count);
    let (acks_tx, acks_rx) = mpsc::channel(65_536);
    let failed_flag = Arc::new(AtomicBool::new(false));
    let stop_on_error = args.on_error == OnError::Stop;
    let collector = tokio::spawn(collect(
        acks_rx,
        progress.clone(),
        stop_on_error,
        failed_flag.clone(),
    ));

    let headers: Vec<(&str, &[u8])> = args
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let mut sender = Sender {
        producer: &producer,
        topic: &args.topic,
        headers: &headers,
        partition: args.partition,
        acks: acks_tx,
        rate: args.rate,
        started: Instant::now(),
        enqueued: 0,
        interrupted: interrupted.clone(),
    };
    let mut rejected: Vec<(Place, String)> = Vec::new();
    let mut stopped: Option<Stop> = None;

    let prepare = |parsed: Result<Json, String>| -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let json = parsed?;
        let key = match (&args.key, &args.key_field) {
            (Some(key), _) => Some(key.clone().into_bytes()),
            (None, Some(path)) => Some(key_of(&json, path)?),
            (None, None) => None,
        };
        let payload = encoder.encode(&json).map_err(|e| e.to_string())?;
        Ok((payload, key))
    };

    if let (Some(n), Some((place, parsed))) = (repeat, first.clone()) {
        match prepare(parsed) {
            Ok((payload, key)) => {
                for _ in 0..n {
                    if interrupted.is_cancelled() {
                        break;
                    }
                    if stop_on_error && failed_flag.load(Ordering::Relaxed) {
                        stopped = Some(Stop::AfterFailedSend(None));
                        break;
                    }
                    if let Err(e) = sender.send(place, &payload, key.as_deref()).await {
                        if interrupted.is_cancelled() {
                            break;
                        }
                        rejected.push((place, e));
                        if stop_on_error {
                            stopped = Some(Stop::Rejected(place));
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                rejected.push((place, e));
                stopped = stop_on_error.then_some(Stop::Rejected(place));
            }
        }
    } else {
        let mut pending = first.into_iter().chain(second);
        while let Some((place, parsed)) = match pending.next() {
            Some(item) => Some(item),
            None => next_input(&mut input, &interrupted).await,
        } {
            if interrupted.is_cancelled() {
                break;
            }
            if args.count.is_some_and(|n| sender.enqueued >= n) {
                break;
            }
            if stop_on_error && failed_flag.load(Ordering::Relaxed) {
                stopped = Some(Stop::AfterFailedSend(Some(place)));
                break;
            }
            let result = match prepare(parsed) {
                Ok((payload, key)) => sender.send(place, &payload, key.as_deref()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                if interrupted.is_cancelled() {
                    break;
                }
                if !stop_on_error {
                    progress.suspend(|| eprintln!("error: {place}: {e} (skipped)"));
                }
                rejected.push((place, e));
                if stop_on_error {
                    stopped = Some(Stop::Rejected(place));
                    break;
                }
            }
        }
    }
    // Stops the reader thread at its next hand-over, if it is still reading.
    drop(input);
    let Sender { acks, started, .. } = sender;
    drop(acks);
    let mut tally = collector.await.context("the acknowledgement task failed")?;
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    tally.failed.extend(rejected);
    tally.failed.sort_by_key(|(place, _)| match place {
        Place::Line(n) | Place::Element(n) => *n,
    });
    if stop_on_error && stopped.is_none() && !tally.failed.is_empty() {
        stopped = Some(Stop::AfterFailedSend(None));
    }
    let summary = Summary {
        topic: &args.topic,
        schema_id: encoder.id(),
        tally: &tally,
        elapsed,
        stopped,
    };
    summary.print(args.output)?;
    if interrupted.is_cancelled() {
        eprintln!("interrupted: the input after what was sent was not read");
        return Ok(false);
    }
    match (stop_on_error, tally.failed.first()) {
        (true, Some((place, message))) => bail!("{place}: {message}"),
        (false, Some(_)) => Ok(false),
        (_, None) => Ok(true),
    }
}

/// The next input value, or `None` at its end or on Ctrl-C.
async fn next_input(
    input: &mut mpsc::Receiver<Input>,
    interrupted: &feedline::CancellationToken,
) -> Option<Input> {
    tokio::select! {
        biased;
        _ = interrupted.cancelled() => None,
        item = input.recv() => item,
    }
}

/// Why `--on-error stop` stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// This value could not be converted or enqueued: neither it nor anything after it was sent.
    Rejected(Place),
    /// The broker refused a message already in flight; the input from here on was not read.
    AfterFailedSend(Option<Place>),
}

/// Enqueues messages at the requested rate and hands their acknowledgements to the
/// collector.
struct Sender<'a> {
    producer: &'a Producer,
    topic: &'a str,
    headers: &'a [(&'a str, &'a [u8])],
    partition: Option<i32>,
    acks: mpsc::Sender<(Place, u64, PendingDelivery)>,
    rate: Option<f64>,
    started: Instant,
    enqueued: u64,
    interrupted: feedline::CancellationToken,
}

impl Sender<'_> {
    async fn send(
        &mut self,
        place: Place,
        payload: &[u8],
        key: Option<&[u8]>,
    ) -> Result<(), String> {
        if let Some(rate) = self.rate {
            // Open loop: message n is due at n / rate, however long earlier sends took.
            let due = self.started + Duration::from_secs_f64(self.enqueued as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = self.interrupted.cancelled() => return Err("interrupted".to_owned()),
            }
        }
        let outgoing = Outgoing {
            topic: self.topic,
            key,
            payload,
            headers: self.headers,
            partition: self.partition,
        };
        let pending = self
            .producer
            .enqueue(outgoing)
            .await
            .map_err(|e| format!("not accepted by the producer: {e}"))?;
        self.enqueued += 1;
        self.acks
            .send((place, payload.len() as u64, pending))
            .await
            .map_err(|_| "the acknowledgement task stopped".to_owned())
    }
}

struct Summary<'a> {
    topic: &'a str,
    schema_id: u32,
    tally: &'a Tally,
    elapsed: Duration,
    stopped: Option<Stop>,
}

impl Summary<'_> {
    fn print(&self, output: Output) -> anyhow::Result<()> {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rate = self.tally.sent as f64 / secs;
        let mb = self.tally.bytes as f64 / 1e6;
        match output {
            Output::Json => {
                let failed: Vec<Json> = self
                    .tally
                    .failed
                    .iter()
                    .map(|(place, error)| serde_json::json!({"at": place.to_string(), "error": error}))
                    .collect();
                let summary = serde_json::json!({
                    "topic": self.topic,
                    "schema_id": self.schema_id,
                    "sent": self.tally.sent,
                    "failed": self.tally.failed.len(),
                    "not_sent": failed,
                    "stopped_at": match self.stopped {
                        Some(Stop::Rejected(p) | Stop::AfterFailedSend(Some(p))) => Some(p.to_string()),
                        _ => None,
                    },
                    "bytes": self.tally.bytes,
                    "seconds": secs,
                    "msgs_per_sec": rate,
                    "mb_per_sec": mb / secs,
                });
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
            Output::Text => {
                println!(
                    "sent {} failed {} to {} in {:.3} s: {:.0} msgs/s, {:.2} MB/s",
                    self.tally.sent,
                    self.tally.failed.len(),
                    self.topic,
                    secs,
                    rate,
                    mb / secs
                );
                if !self.tally.failed.is_empty() {
                    let shown: Vec<String> = self
                        .tally
                        .failed
                        .iter()
                        .take(20)
                        .map(|(place, _)| place.to_string())
                        .collect();
                    let more = self.tally.failed.len().saturating_sub(shown.len());
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    println!("not sent: {}{more}", shown.join(", "));
                }
                match self.stopped {
                    Some(Stop::Rejected(place)) => println!(
                        "stopped at {place} (--on-error stop): neither it nor anything after it was sent"
                    ),
                    Some(Stop::AfterFailedSend(Some(place))) => println!(
                        "stopped after a failed send (--on-error stop): the input from {place} on was not sent"
                    ),
                    Some(Stop::AfterFailedSend(None)) => {
                        println!("stopped after a failed send (--on-error stop)")
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fields_follow_paths_and_look_through_named_unions() {
        let json = serde_json::json!({"id": 7, "payload": {"OrderCreated": {"customer_id": "c1"}}});
        assert_eq!(key_of(&json, "payload.customer_id").unwrap(), b"c1");
        assert_eq!(key_of(&json, "id").unwrap(), b"7");
        assert_eq!(
            key_of(&json, "payload.nope").unwrap_err(),
            "key field payload.nope is missing"
        );
    }
}
