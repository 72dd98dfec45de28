//! `feedline consume`: Avro out of a topic, as JSON lines.
//!
//! Without `--group` the partitions are assigned directly and nothing is committed: reading
//! a topic leaves no trace. With `--group` the command is a member of that consumer group
//! and commits what it printed (an offset is stored only after its line was written), so
//! the next run with the same group resumes after it.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::DateTime;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::ser::SerializeMap;
use serde_json::Value as Json;

use crate::avro_json::JsonMode;
use crate::cluster::Cluster;
use crate::message::{self, Body, Decoders, Filter, HeadersJson};

const EXAMPLES: &str = "\
Examples:
  feedline consume order-events                       # everything up to now, then exit
  feedline consume order-events --follow              # new messages as they come, until Ctrl-C
  feedline consume order-events --from-beginning --meta --count 5
  feedline consume order-events --from-time 2025-11-24T12:00:00Z --filter payload.customer_id=c0ffee00-0000-4000-8000-000000000001
  feedline consume order-events --offset -10 --partition 0 --pretty
  feedline consume order-events --group audit          # resumes where the last run of group audit stopped

Where reading starts: --offset, --from-time or --from-beginning when given; otherwise with
--group the group's committed offsets (where there are none: the beginning, or the end with
--follow), without --group the beginning of each partition, or its end with --follow.

Unions print as their plain value; --avro-json names the branch, which tells apart records
of the same fields (OrderCreated and OrderApproved). Messages that are not Confluent-framed
Avro, or whose schema id the registry does not know, are printed as {\"value_base64\": ..}
with a warning on stderr.";

/// Print the messages of a topic as JSON, decoded with the schemas their ids name.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ConsumeArgs {
    /// Topic to read (its full name).
    topic: String,
    /// Start at the beginning of each partition (with --group: where it has no committed
    /// offset).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset of each partition; negative counts back from the end.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "from_time")]
    offset: Option<i64>,
    /// Start at the first message at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = rfc3339_millis)]
    from_time: Option<i64>,
    /// Read only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// Consume as a member of this consumer group and commit what was printed.
    #[arg(long)]
    group: Option<String>,
    /// Keep waiting for new messages (until Ctrl-C or --count).
    #[arg(long, conflicts_with = "until_end")]
    follow: bool,
    /// Stop at the end of every partition (the default).
    #[arg(long)]
    until_end: bool,
    /// Stop after printing N messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print only messages whose field (a path such as payload.customer_id) or header has
    /// this value (repeatable; all must match).
    #[arg(long = "filter", value_name = "FIELD=VALUE", value_parser = Filter::parse)]
    filters: Vec<Filter>,
    /// Print {"key", "partition", "offset", "timestamp", "headers", "value"} per message.
    #[arg(long)]
    meta: bool,
    /// Indent the JSON.
    #[arg(long)]
    pretty: bool,
    /// Print Avro's JSON encoding (unions as {"type": value}, bytes as ISO-8859-1 strings).
    #[arg(long)]
    avro_json: bool,
}

fn rfc3339_millis(arg: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(arg)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("expected an RFC 3339 time such as 2025-11-24T12:00:00Z: {e}"))
}

/// Where each partition starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    Beginning,
    End,
    At(i64),
    FromEnd(i64),
    Time(i64),
    Committed,
}

/// A message to print: what `--meta` adds, and the value.
struct Printed<'a> {
    meta: Option<Meta<'a>>,
    body: &'a Body,
    mode: JsonMode,
}

struct Meta<'a> {
    key: Json,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    headers: HeadersJson<'a>,
}

impl serde::Serialize for Printed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(meta) = &self.meta else {
            return match self.body {
                Body::Avro { .. } => self.body.json(self.mode).serialize(serializer),
                Body::Raw { bytes, .. } => {
                    let mut map = serializer.serialize_map(Some(1))?;
                    map.serialize_entry("value_base64", &message::base64(bytes))?;
                    map.end()
                }
                Body::Null => serializer.serialize_unit(),
            };
        };
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("key", &meta.key)?;
        map.serialize_entry("partition", &meta.partition)?;
        map.serialize_entry("offset", &meta.offset)?;
        map.serialize_entry("timestamp", &meta.timestamp)?;
        map.serialize_entry("headers", &meta.headers)?;
        match self.body {
            Body::Avro { .. } => map.serialize_entry("value", &self.body.json(self.mode))?,
            Body::Raw { bytes, .. } => {
                map.serialize_entry("value_base64", &message::base64(bytes))?
            }
            Body::Null => map.serialize_entry("value", &())?,
        }
        map.end()
    }
}

/// A key as JSON: Avro when it is Confluent-framed Avro, else text, else base64.
pub async fn key_json(decoders: &mut Decoders, key: Option<&[u8]>) -> anyhow::Result<Json> {
    let Some(key) = key else {
        return Ok(Json::Null);
    };
    if key.len() > 5
        && key[0] == 0
        && let body @ Body::Avro { .. } = decoders.decode(Some(key)).await?
    {
        return Ok(serde_json::to_value(body.json(JsonMode::Plain))?);
    }
    Ok(message::text_or_base64(key))
}

pub async fn run(cluster: &Cluster, args: ConsumeArgs) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let all = cluster.partitions(&client, &args.topic)?;
    let partitions = match args.partition {
        Some(p) if !all.contains(&p) => bail!(
            "topic {} has no partition {p} (it has {})",
            args.topic,
            all.len()
        ),
        Some(p) => vec![p],
        None => all,
    };
    let mut ends = HashMap::new();
    for &p in &partitions {
        ends.insert(p, cluster.watermarks(&client, &args.topic, p)?);
    }

    let start = match (args.offset, args.from_time) {
        (Some(n), _) if n < 0 => Start::FromEnd(-n),
        (Some(n), _) => Start::At(n),
        (None, Some(ms)) => Start::Time(ms),
        _ if args.from_beginning && args.group.is_none() => Start::Beginning,
        _ if args.group.is_some() => Start::Committed,
        _ if args.follow => Start::End,
        _ => Start::Beginning,
    };
    // A group member subscribes (and shares the partitions with the group's other members)
    // unless it was told where to start or which partition to read.
    let subscribe =
        args.group.is_some() && matches!(start, Start::Committed) && args.partition.is_none();
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("feedline-cli-{}", uuid::Uuid::new_v4().simple()));
    let mut config = cluster.consumer_config(&group);
    if args.group.is_some() {
        // Offsets are stored once their line is written, and committed from that store.
        config
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000");
        if args.follow && !args.from_beginning {
            config.set("auto.offset.reset", "latest");
        }
    }
    let consumer: StreamConsumer = config.create().context("cannot create a Kafka consumer")?;

    let mut done: BTreeSet<i32> = BTreeSet::new();
    if subscribe {
        consumer
            .subscribe(&[&args.topic])
            .context("cannot subscribe")?;
    } else {
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = ends[&p];
            let offset = match start {
                Start::Beginning => Offset::Beginning,
                // The end as read above, not as the broker has it at the first fetch: a
                // message sent once `following` was printed is never skipped.
                Start::End => Offset::Offset(high),
                Start::At(n) => Offset::Offset(n.clamp(low, high)),
                Start::FromEnd(n) => Offset::Offset((high - n).max(low)),
                Start::Committed => Offset::Stored,
                Start::Time(_) => Offset::End,
            };
            match offset {
                Offset::Beginning if low >= high => {
                    done.insert(p);
                }
                Offset::Offset(n) if n >= high => {
                    done.insert(p);
                }
                _ => {}
            }
            tpl.add_partition_offset(&args.topic, p, offset)?;
        }
        if let Start::Time(ms) = start {
            tpl = times_to_offsets(cluster, &consumer, &args.topic, &partitions, ms)?;
            done.clear();
            for elem in tpl.elements() {
                match elem.offset() {
                    Offset::Offset(n) if n < ends[&elem.partition()].1 => {}
                    _ => {
                        done.insert(elem.partition());
                    }
                }
            }
        }
        consumer.assign(&tpl).context("cannot assign partitions")?;
        if matches!(start, Start::End) {
            eprintln!("following {} from its end; Ctrl-C stops", args.topic);
        }
    }

    let mode = if args.avro_json {
        JsonMode::Avro
    } else {
        JsonMode::Plain
    };
    let until_end = !args.follow;
    let committing = args.group.is_some();
    let flush_each = args.follow || committing;
    let mut decoders = Decoders::new(cluster.registry());
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut printed = 0u64;
    let mut last_progress = Instant::now();
    let stall = if subscribe {
        cluster.timeout.max(Duration::from_secs(10))
    } else {
        cluster.timeout
    };
    // Ctrl-C or SIGTERM ends the run cleanly: what was printed is committed.
    let stop = feedline::CancellationToken::new();
    feedline::shutdown::cancel_on_signal(stop.clone());

    'read: loop {
        if args.count.is_some_and(|n| printed >= n) {
            break;
        }
        if until_end {
            let assigned: Vec<i32> = if subscribe {
                consumer
                    .assignment()
                    .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                    .unwrap_or_default()
            } else {
                partitions.clone()
            };
            if !assigned.is_empty() && assigned.iter().all(|p| done.contains(p)) {
                break;
            }
        }
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = tokio::time::timeout(Duration::from_millis(250), consumer.recv()) => next,
        };
        let msg: BorrowedMessage<'_> = match next {
            Err(_idle) => {
                if let Err(e) = out.flush() {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(e).context("cannot write to stdout");
                }
                if until_end && last_progress.elapsed() > stall {
                    if subscribe && consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
                        bail!(
                            "no partition of {} was assigned to this member of group {group} within {} s (do other members hold them all?)",
                            args.topic,
                            stall.as_secs()
                        );
                    }
                    bail!(
                        "no progress reading {} for {} s; is Kafka at {} still up?",
                        args.topic,
                        stall.as_secs(),
                        cluster.settings.kafka.bootstrap_servers
                    );
                }
                continue;
            }
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
                last_progress = Instant::now();
                continue;
            }
            Ok(Err(e)) => {
                eprintln!("warning: {e}");
                continue;
            }
            Ok(Ok(msg)) => msg,
        };
        last_progress = Instant::now();
        let (p, offset) = (msg.partition(), msg.offset());
        if let Some((_, high)) = ends.get(&p)
            && offset + 1 >= *high
        {
            done.insert(p);
        }
        let body = decoders.decode(msg.payload()).await?;
        if let Body::Raw { reason, .. } = &body {
            eprintln!(
                "warning: {}/{p}/{offset}: {reason}; printed as base64",
                args.topic
            );
        }
        let headers = message::headers(&msg);
        if message::all_match(&args.filters, &headers, &body) {
            let meta = if args.meta {
                Some(Meta {
                    key: key_json(&mut decoders, msg.key()).await?,
                    partition: p,
                    offset,
                    timestamp: msg.timestamp().to_millis(),
                    headers: HeadersJson(&headers),
                })
            } else {
                None
            };
            let printed_msg = Printed {
                meta,
                body: &body,
                mode,
            };
            let written = if args.pretty {
                serde_json::to_writer_pretty(&mut out, &printed_msg)
            } else {
                serde_json::to_writer(&mut out, &printed_msg)
            }
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| if flush_each { out.flush() } else { Ok(()) });
            match written {
                Ok(()) => printed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break 'read,
                Err(e) => return Err(e).context("cannot write to stdout"),
            }
        }
        if committing {
            // Only what was written (or filtered out) counts as consumed.
            consumer
                .store_offset_from_message(&msg)
                .context("cannot store an offset")?;
        }
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(e).context("cannot write to stdout");
        }
        _ => {}
    }
    if committing {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => return Err(e).context(format!("cannot commit the offsets of group {group}")),
        }
    }
    Ok(true)
}

/// The first offset at or after `ms` in each partition (the end where there is none).
fn times_to_offsets(
    cluster: &Cluster,
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> anyhow::Result<TopicPartitionList> {
    let mut query = TopicPartitionList::new();
    for &p in partitions {
        query.add_partition_offset(topic, p, Offset::Offset(ms))?;
    }
    let found = consumer
        .offsets_for_times(query, cluster.timeout)
        .map_err(|e| cluster.unreachable(e))?;
    let mut tpl = TopicPartitionList::new();
    for elem in found.elements() {
        let offset = match elem.offset() {
            Offset::Offset(n) if n >= 0 => Offset::Offset(n),
            _ => Offset::End,
        };
        tpl.add_partition_offset(topic, elem.partition(), offset)?;
    }
    Ok(tpl)
}
