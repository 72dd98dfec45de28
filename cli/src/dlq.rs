//! One file: one command; only its tests take it past 600 lines.
//!
//! `feedline dlq`: look at dead letters and send them back where they came from.
//!
//! A redrive consumes the DLQ in its own group, `feedline-redrive-<dlq topic>`, and commits
//! an offset only after the redriven copy was acknowledged, so every dead letter goes back
//! once however often the command runs. Letters a `--filter` leaves behind stay redrivable:
//! the committed offset stops at the first of them, and the letters after it that were
//! already sent are remembered in the commit's metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use feedline::dlq::{DLQ_SUFFIX, header};
use feedline::producer::{Outgoing, PendingDelivery};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value as Json, json};

use crate::Output;
use crate::avro_json::JsonMode;
use crate::cluster::Cluster;
use crate::consume::key_json;
use crate::message::{self, Body, Decoders, Filter, HeadersJson};

/// The header a redriven copy carries: `<dlq topic>/<partition>/<offset>`.
pub const REDRIVEN_FROM: &str = "dlq.redriven.from";

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Print each dead letter: why it was rejected, where it came from, and the original
    /// message decoded where possible.
    ///
    /// Examples: feedline dlq inspect order-events; feedline dlq inspect order-events.dlq --output json --filter dlq.error.kind=decode
    Inspect {
        /// The topic or its DLQ (`order-events` and `order-events.dlq` are the same).
        topic: String,
        /// Only dead letters whose header (dlq.error.kind, ...) or value field has this
        /// value (repeatable).
        #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = Filter::parse)]
        filters: Vec<Filter>,
        /// Stop after N dead letters.
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Send dead letters back to their source topic (original key, headers minus dlq.*,
    /// plus dlq.redriven.from), each once.
    ///
    /// Examples: feedline dlq redrive order-events --dry-run; feedline dlq redrive order-events --filter dlq.error.kind=registry
    Redrive {
        /// The topic or its DLQ.
        topic: String,
        /// Only dead letters whose header or value field has this value (repeatable); the
        /// others stay for a later redrive.
        #[arg(long = "filter", value_name = "KEY=VALUE", value_parser = Filter::parse)]
        filters: Vec<Filter>,
        /// Print what would be sent; send and commit nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub fn dlq_name(topic: &str) -> String {
    if topic.ends_with(DLQ_SUFFIX) {
        topic.to_owned()
    } else {
        feedline::dlq::dlq_topic(topic)
    }
}

pub fn redrive_group(dlq: &str) -> String {
    format!("feedline-redrive-{dlq}")
}

pub async fn run(cluster: &Cluster, command: DlqCommand) -> anyhow::Result<bool> {
    match command {
        DlqCommand::Inspect {
            topic,
            filters,
            count,
            output,
        } => inspect(cluster, &dlq_name(&topic), &filters, count, output).await,
        DlqCommand::Redrive {
            topic,
            filters,
            dry_run,
            output,
        } => redrive(cluster, &dlq_name(&topic), &filters, dry_run, output).await,
    }
}

/// Reads partitions from given offsets to the end they had when it started.
struct ToEnd {
    consumer: StreamConsumer,
    ends: BTreeMap<i32, i64>,
    done: BTreeSet<i32>,
    stall: Duration,
    topic: String,
}

impl ToEnd {
    fn new(
        cluster: &Cluster,
        topic: &str,
        group: &str,
        starts: &BTreeMap<i32, Offset>,
    ) -> anyhow::Result<Self> {
        let client = cluster.metadata_client()?;
        let consumer: StreamConsumer = cluster
            .consumer_config(group)
            .create()
            .context("cannot create a Kafka consumer")?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        let mut done = BTreeSet::new();
        for (&p, &start) in starts {
            let (low, high) = cluster.watermarks(&client, topic, p)?;
            ends.insert(p, high);
            let empty = match start {
                Offset::Offset(n) => n >= high,
                _ => low >= high,
            };
            if empty {
                done.insert(p);
            }
            tpl.add_partition_offset(topic, p, start)?;
        }
        consumer.assign(&tpl).context("cannot assign partitions")?;
        Ok(ToEnd {
            consumer,
            ends,
            done,
            stall: cluster.timeout,
            topic: topic.to_owned(),
        })
    }

    /// The next message, or `None` at the end of every partition.
    async fn next(&mut self) -> anyhow::Result<Option<OwnedMessage>> {
        let mut last = Instant::now();
        loop {
            if self.ends.keys().all(|p| self.done.contains(p)) {
                return Ok(None);
            }
            match tokio::time::timeout(Duration::from_millis(250), self.consumer.recv()).await {
                Err(_) if last.elapsed() > self.stall => {
                    bail!(
                        "no progress reading {} for {} s",
                        self.topic,
                        self.stall.as_secs()
                    )
                }
                Err(_) => {}
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    self.done.insert(p);
                    last = Instant::now();
                }
                Ok(Err(e)) => eprintln!("warning: {e}"),
                Ok(Ok(msg)) => {
                    if msg.offset() + 1 >= self.ends[&msg.partition()] {
                        self.done.insert(msg.partition());
                    }
                    return Ok(Some(msg.detach()));
                }
            }
        }
    }
}

fn header_text(headers: &[(String, Option<Vec<u8>>)], name: &str) -> Option<String> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

async fn inspect(
    cluster: &Cluster,
    dlq: &str,
    filters: &[Filter],
    count: Option<u64>,
    output: Output,
) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let partitions = cluster.partitions(&client, dlq)?;
    let starts = partitions.iter().map(|p| (*p, Offset::Beginning)).collect();
    let group = format!("feedline-cli-{}", uuid::Uuid::new_v4().simple());
    let mut reader = ToEnd::new(cluster, dlq, &group, &starts)?;
    let mut decoders = Decoders::new(cluster.registry());
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        let Some(msg) = reader.next().await? else {
            break;
        };
        let headers = message::headers(&msg);
        let body = decoders.decode(msg.payload()).await?;
        if !message::all_match(filters, &headers, &body) {
            continue;
        }
        shown += 1;
        let at = format!("{dlq}/{}/{}", msg.partition(), msg.offset());
        let h = |name| header_text(&headers, name);
        let others: Vec<(String, Option<Vec<u8>>)> = headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .cloned()
            .collect();
        let key = key_json(&mut decoders, msg.key()).await?;
        match output {
            Output::Json => {
                let mut letter = json!({
                    "dlq": at,
                    "error": h(header::ERROR),
                    "error_kind": h(header::ERROR_KIND),
                    "source": {
                        "topic": h(header::SOURCE_TOPIC),
                        "partition": h(header::SOURCE_PARTITION).and_then(|p| p.parse::<i64>().ok()),
                        "offset": h(header::SOURCE_OFFSET).and_then(|o| o.parse::<i64>().ok()),
                        "timestamp": h(header::SOURCE_TIMESTAMP).and_then(|t| t.parse::<i64>().ok()),
                    },
                    "group": h(header::GROUP),
                    "time": h(header::TIME),
                    "redriven_from": h(REDRIVEN_FROM),
                    "key": key,
                    "headers": serde_json::to_value(HeadersJson(&others))?,
                });
                match &body {
                    Body::Avro { .. } => {
                        letter["value"] = serde_json::to_value(body.json(JsonMode::Plain))?
                    }
                    Body::Raw { bytes, reason } => {
                        letter["value_base64"] = json!(message::base64(bytes));
                        letter["value_error"] = json!(reason);
                    }
                    Body::Null => letter["value"] = Json::Null,
                }
                println!("{letter}");
            }
            Output::Text => {
                let or = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
                println!(
                    "{at}  from {}/{}/{}  by {}  at {}",
                    or(h(header::SOURCE_TOPIC)),
                    or(h(header::SOURCE_PARTITION)),
                    or(h(header::SOURCE_OFFSET)),
                    or(h(header::GROUP)),
                    or(h(header::TIME)),
                );
                println!(
                    "  reason ({}): {}",
                    or(h(header::ERROR_KIND)),
                    or(h(header::ERROR))
                );
                println!("  key: {key}");
                if !others.is_empty() {
                    println!(
                        "  headers: {}",
                        serde_json::to_string(&HeadersJson(&others))?
                    );
                }
                match &body {
                    Body::Avro { .. } => println!(
                        "  value: {}",
                        serde_json::to_string(&body.json(JsonMode::Plain))?
                    ),
                    Body::Raw { bytes, reason } => {
                        println!("  value ({reason}), base64: {}", message::base64(bytes))
                    }
                    Body::Null => println!("  value: null"),
                }
            }
        }
    }
    if let Output::Text = output {
        println!("{shown} dead letters in {dlq}");
    }
    Ok(true)
}

/// Offsets already redriven beyond the committed one, kept in the commit's metadata as
/// ranges: `feedline-redrive:v1:105-110,115`.
const METADATA_PREFIX: &str = "feedline-redrive:v1:";
/// Kafka refuses commit metadata over 4096 bytes (offset.metadata.max.bytes); ranges of
/// up to ~15 bytes each stay well below.
const MAX_RANGES: usize = 200;

fn parse_remembered(metadata: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    let Some(ranges) = metadata.strip_prefix(METADATA_PREFIX) else {
        return out;
    };
    for range in ranges.split(',').filter(|r| !r.is_empty()) {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
            out.extend(a..=b);
        }
    }
    out
}

fn ranges(offsets: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == o => *end = o,
            _ => out.push((o, o)),
        }
    }
    out
}

fn render_remembered(offsets: &BTreeSet<i64>) -> String {
    let ranges: Vec<String> = ranges(offsets.iter().copied())
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    format!("{METADATA_PREFIX}{}", ranges.join(","))
}

/// One partition's redrive state: what this group already sent, and what it saw now.
#[derive(Debug, Default)]
struct PartitionState {
    /// Redriven before or now (beyond the committed offset).
    sent: BTreeSet<i64>,
    /// Seen and not redriven (filtered out, or with no source topic).
    left: Option<i64>,
    /// One past the last offset seen.
    next: Option<i64>,
}

impl PartitionState {
    /// The offset to commit and the metadata remembering what was sent beyond it.
    fn commit(&self, committed: Option<i64>) -> Option<(i64, String)> {
        let next = self.next?;
        let offset = self.left.unwrap_or(next);
        let beyond: BTreeSet<i64> = self.sent.range(offset..).copied().collect();
        if committed == Some(offset) && beyond.is_empty() {
            return None;
        }
        Some((offset, render_remembered(&beyond)))
    }
}

async fn redrive(
    cluster: &Cluster,
    dlq: &str,
    filters: &[Filter],
    dry_run: bool,
    output: Output,
) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let partitions = cluster.partitions(&client, dlq)?;
    let group = redrive_group(dlq);
    let committer: StreamConsumer = cluster
        .consumer_config(&group)
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut query = TopicPartitionList::new();
    for &p in &partitions {
        query.add_partition(dlq, p);
    }
    let committed_tpl = committer
        .committed_offsets(query, cluster.timeout)
        .map_err(|e| cluster.unreachable(e))
        .with_context(|| format!("cannot read the committed offsets of group {group}"))?;
    let mut committed: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    let mut states: BTreeMap<i32, PartitionState> = BTreeMap::new();
    let mut starts = BTreeMap::new();
    for elem in committed_tpl.elements() {
        let p = elem.partition();
        let offset = match elem.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        committed.insert(p, offset);
        starts.insert(p, offset.map_or(Offset::Beginning, Offset::Offset));
        states.insert(
            p,
            PartitionState {
                sent: parse_remembered(elem.metadata()),
                ..PartitionState::default()
            },
        );
    }

    let producer = if dry_run {
        None
    } else {
        Some(cluster.producer()?)
    };
    let mut reader = ToEnd::new(cluster, dlq, &group, &starts)?;
    let mut decoders = Decoders::new(cluster.registry());
    let mut pending: Vec<(i32, i64, PendingDelivery)> = Vec::new();
    let (mut redriven, mut already, mut left, mut capped) = (0u64, 0u64, 0u64, false);
    let mut failure = None;
    let mut targets: BTreeMap<String, u64> = BTreeMap::new();

    loop {
        let msg = reader.next().await?;
        // Acknowledge and commit in batches, and at the end.
        if pending.len() >= 1000 || (msg.is_none() && !pending.is_empty()) {
            for (p, offset, delivery) in pending.drain(..) {
                match delivery.acknowledged().await {
                    Ok(_) => {
                        states.get_mut(&p).expect("assigned").sent.insert(offset);
                        redriven += 1;
                    }
                    Err(e) => {
                        let state = states.get_mut(&p).expect("assigned");
                        state.left = Some(state.left.map_or(offset, |l| l.min(offset)));
                        failure.get_or_insert(format!("{dlq}/{p}/{offset} was not redriven: {e}"));
                    }
                }
            }
            commit(&committer, dlq, &states, &committed)?;
        }
        let Some(msg) = msg else {
            break;
        };
        if failure.is_some() {
            break;
        }
        let (p, offset) = (msg.partition(), msg.offset());
        let state = states.get_mut(&p).expect("assigned");
        state.next = Some(offset + 1);
        if state.sent.contains(&offset) {
            already += 1;
            continue;
        }
        let headers = message::headers(&msg);
        let body = if filters.is_empty() {
            Body::Null
        } else {
            decoders.decode(msg.payload()).await?
        };
        let source = header_text(&headers, header::SOURCE_TOPIC);
        let from = format!("{dlq}/{p}/{offset}");
        let leave = |state: &mut PartitionState| {
            state.left.get_or_insert(offset);
        };
        if !message::all_match(filters, &headers, &body) {
            leave(state);
            left += 1;
            continue;
        }
        let Some(source) = source else {
            eprintln!(
                "warning: {from} has no {} header; left in the DLQ",
                header::SOURCE_TOPIC
            );
            leave(state);
            left += 1;
            continue;
        };
        // Each letter sent after one left behind costs commit metadata; past the cap the
        // rest wait for the next run.
        if state.left.is_some()
            && ranges(state.sent.range(state.left.unwrap_or(0)..).copied()).len() >= MAX_RANGES
        {
            capped = true;
            left += 1;
            continue;
        }
        let mut out_headers: Vec<(&str, &[u8])> = headers
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or_default()))
            .collect();
        out_headers.push((REDRIVEN_FROM, from.as_bytes()));
        *targets.entry(source.clone()).or_default() += 1;
        match &producer {
            None => {
                let plan = json!({
                    "from": from,
                    "to": source,
                    "key": msg.key().map(message::text_or_base64),
                    "headers": out_headers.iter().map(|(k, v)| (k.to_string(), message::text_or_base64(v))).collect::<serde_json::Map<_, _>>(),
                    "error": header_text(&headers, header::ERROR),
                });
                match output {
                    Output::Json => println!("{plan}"),
                    Output::Text => println!("would send {from} to {source} (key {})", plan["key"]),
                }
                redriven += 1;
            }
            Some(producer) => {
                let outgoing = Outgoing {
                    topic: &source,
                    key: msg.key(),
                    payload: msg.payload().unwrap_or_default(),
                    headers: &out_headers,
                    partition: None,
                };
                match producer.enqueue(outgoing).await {
                    Ok(delivery) => pending.push((p, offset, delivery)),
                    Err(e) => {
                        leave(state);
                        failure.get_or_insert(format!("{from} was not redriven: {e}"));
                    }
                }
            }
        }
    }
    if failure.is_some() && !pending.is_empty() {
        for (p, offset, delivery) in pending.drain(..) {
            if delivery.acknowledged().await.is_ok() {
                states.get_mut(&p).expect("assigned").sent.insert(offset);
                redriven += 1;
            }
        }
        commit(&committer, dlq, &states, &committed)?;
    }

    let verb = if dry_run { "would redrive" } else { "redrove" };
    match output {
        Output::Json if !dry_run => println!(
            "{}",
            json!({"dlq": dlq, "group": group, "redriven": redriven, "already_redriven": already, "left": left, "to": targets})
        ),
        Output::Json => {}
        Output::Text => {
            let to: Vec<String> = targets.iter().map(|(t, n)| format!("{n} to {t}")).collect();
            println!(
                "{verb} {redriven} dead letters from {dlq}{}; {left} left in the DLQ, {already} redriven by earlier runs",
                if to.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", to.join(", "))
                }
            );
        }
    }
    if capped {
        eprintln!(
            "warning: some matching letters were not sent this time (too many left behind by --filter before them); run the redrive again"
        );
    }
    match failure {
        Some(e) => bail!(e),
        None => Ok(true),
    }
}

/// Commits each partition's progress (only when it changed) with what was sent beyond it.
fn commit(
    committer: &StreamConsumer,
    dlq: &str,
    states: &BTreeMap<i32, PartitionState>,
    committed: &BTreeMap<i32, Option<i64>>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (&p, state) in states {
        if let Some((offset, metadata)) = state.commit(committed.get(&p).copied().flatten()) {
            tpl.add_partition_offset(dlq, p, Offset::Offset(offset))?;
            if let Some(mut elem) = tpl.find_partition(dlq, p) {
                elem.set_metadata(metadata);
            }
        }
    }
    if tpl.count() > 0 {
        committer
            .commit(&tpl, CommitMode::Sync)
            .context("cannot commit the redrive's progress")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_offsets_round_trip_as_ranges() {
        let offsets: BTreeSet<i64> = [3, 4, 5, 9, 11, 12].into();
        let text = render_remembered(&offsets);
        assert_eq!(text, "feedline-redrive:v1:3-5,9,11-12");
        assert_eq!(parse_remembered(&text), offsets);
        assert!(parse_remembered("").is_empty());
        assert!(parse_remembered("something else").is_empty());
    }

    #[test]
    fn the_commit_stops_at_the_first_letter_left_behind() {
        let state = PartitionState {
            sent: [0, 1, 3, 4].into(),
            left: Some(2),
            next: Some(5),
        };
        assert_eq!(
            state.commit(None),
            Some((2, "feedline-redrive:v1:3-4".to_owned()))
        );
        let all_sent = PartitionState {
            sent: [0, 1, 2].into(),
            left: None,
            next: Some(3),
        };
        assert_eq!(
            all_sent.commit(None),
            Some((3, "feedline-redrive:v1:".to_owned()))
        );
        assert_eq!(all_sent.commit(Some(3)), None);
    }

    #[test]
    fn dlq_names() {
        assert_eq!(dlq_name("orders"), "orders.dlq");
        assert_eq!(dlq_name("orders.dlq"), "orders.dlq");
        assert_eq!(redrive_group("orders.dlq"), "feedline-redrive-orders.dlq");
    }
}
