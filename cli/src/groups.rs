//! `feedline groups`: consumer groups, their members, committed offsets and lag.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::cluster::Cluster;
use crate::{Output, print_table};

#[derive(Debug, clap::Subcommand)]
pub enum GroupsCommand {
    /// List consumer groups with their state and member count.
    ///
    /// Example: feedline groups list --output json
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Members (client id, host, assigned partitions) and, per partition of the topics the
    /// group reads, the committed offset, the end offset and the lag (from the beginning
    /// where nothing was committed yet).
    ///
    /// Examples: feedline groups describe orders; feedline groups describe orders --output json
    Describe {
        group: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

pub async fn run(cluster: &Cluster, command: GroupsCommand) -> anyhow::Result<bool> {
    match command {
        GroupsCommand::List { output } => list(cluster, output),
        GroupsCommand::Describe { group, output } => describe(cluster, &group, output),
    }
}

fn list(cluster: &Cluster, output: Output) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    cluster.metadata(&client, None)?;
    let groups = client
        .fetch_group_list(None, cluster.timeout)
        .map_err(|e| cluster.unreachable(e))?;
    let mut rows: Vec<(String, String, String, usize)> = groups
        .groups()
        .iter()
        .map(|g| {
            (
                g.name().to_owned(),
                g.state().to_owned(),
                g.protocol_type().to_owned(),
                g.members().len(),
            )
        })
        .collect();
    rows.sort();
    match output {
        Output::Json => {
            let list: Vec<_> = rows
                .iter()
                .map(|(name, state, kind, members)| {
                    json!({"group": name, "state": state, "protocol_type": kind, "members": members})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Text => {
            for (name, state, _, members) in rows {
                println!("{name}\t{state}\t{members} members");
            }
        }
    }
    Ok(true)
}

/// A member's assignment in Kafka's consumer protocol: version (i16), then an array (i32
/// count) of topic (i16-length string) with an array of partitions (i32 each), then user
/// data, which is ignored.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    struct Cursor<'a>(&'a [u8]);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Some(head)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut c = Cursor(bytes);
    let _version = c.i16()?;
    let topics = c.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(c.i16()?).ok()?;
        let topic = String::from_utf8(c.take(len)?.to_vec()).ok()?;
        let count = c.i32()?;
        let mut partitions = Vec::new();
        for _ in 0..count.max(0) {
            partitions.push(c.i32()?);
        }
        out.push((topic, partitions));
    }
    Some(out)
}

fn describe(cluster: &Cluster, group: &str, output: Output) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let metadata = cluster.metadata(&client, None)?;
    let groups = client
        .fetch_group_list(Some(group), cluster.timeout)
        .map_err(|e| cluster.unreachable(e))?;
    let info = groups.groups().iter().find(|g| g.name() == group);

    // Who holds which partition.
    let mut members = Vec::new();
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in info.map(|g| g.members()).unwrap_or_default() {
        let assignment = m
            .assignment()
            .and_then(parse_assignment)
            .unwrap_or_default();
        for (topic, partitions) in &assignment {
            for p in partitions {
                owner.insert((topic.clone(), *p), m.id().to_owned());
            }
        }
        members.push((
            m.id().to_owned(),
            m.client_id().to_owned(),
            m.client_host().to_owned(),
            assignment,
        ));
    }

    // Committed offsets: asked of the group's coordinator through a client configured with
    // the group's id (it does not join the group), for every partition of every topic, since
    // an empty group names none.
    let reader: BaseConsumer = cluster
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka client")?;
    let mut query = TopicPartitionList::new();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
    {
        for p in topic.partitions() {
            query.add_partition(topic.name(), p.id());
        }
    }
    let committed = reader
        .committed_offsets(query, cluster.timeout)
        .map_err(|e| cluster.unreachable(e))
        .with_context(|| format!("cannot read the committed offsets of group {group}"))?;
    let mut rows: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    for elem in committed.elements() {
        if let Offset::Offset(n) = elem.offset() {
            rows.insert((elem.topic().to_owned(), elem.partition()), Some(n));
        }
    }
    // Every partition of a topic the group reads, committed or not: one without a commit
    // counts in full (the group starts at the beginning there, as feedline's services do).
    let topics: std::collections::BTreeSet<String> = rows
        .keys()
        .chain(owner.keys())
        .map(|(t, _)| t.clone())
        .collect();
    for topic in metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(t.name()))
    {
        for p in topic.partitions() {
            rows.entry((topic.name().to_owned(), p.id()))
                .or_insert(None);
        }
    }
    for key in owner.keys() {
        rows.entry(key.clone()).or_insert(None);
    }
    let state = info.map(|g| g.state()).unwrap_or("Dead");
    if rows.is_empty() && members.is_empty() {
        bail!(
            "group {group} does not exist (no members, no committed offsets); see `feedline groups list`"
        );
    }

    let mut partitions = Vec::new();
    let mut total_lag = 0;
    for ((topic, p), committed) in &rows {
        let (start, end) = cluster.watermarks(&client, topic, *p)?;
        let lag = (end - committed.unwrap_or(start)).max(0);
        total_lag += lag;
        partitions.push(json!({
            "topic": topic,
            "partition": p,
            "committed": committed,
            "end": end,
            "lag": lag,
            "member": owner.get(&(topic.clone(), *p)),
        }));
    }

    match output {
        Output::Json => {
            let members: Vec<_> = members
                .iter()
                .map(|(id, client_id, host, assignment)| {
                    json!({
                        "id": id,
                        "client_id": client_id,
                        "host": host,
                        "assignment": assignment
                            .iter()
                            .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect();
            let out = json!({
                "group": group,
                "state": state,
                "protocol": info.map(|g| g.protocol()),
                "members": members,
                "partitions": partitions,
                "lag": total_lag,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            println!(
                "group {group}: {state}, {} members, total lag {total_lag}",
                members.len()
            );
            if !members.is_empty() {
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|(id, client_id, host, assignment)| {
                        let assigned: Vec<String> = assignment
                            .iter()
                            .map(|(t, ps)| {
                                let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                                format!("{t}[{}]", ps.join(","))
                            })
                            .collect();
                        vec![
                            id.clone(),
                            client_id.clone(),
                            host.clone(),
                            assigned.join(" "),
                        ]
                    })
                    .collect();
                print_table(&["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"], &rows);
            }
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let rows: Vec<Vec<String>> = partitions
                .iter()
                .map(|row| {
                    ["topic", "partition", "committed", "end", "lag", "member"]
                        .iter()
                        .map(|k| text(&row[*k]))
                        .collect()
                })
                .collect();
            print_table(
                &["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"],
                &rows,
            );
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_protocol_assignments_parse() {
        // version 1, one topic "ab" with partitions 0 and 3, then 4 bytes of (empty) user data
        let bytes = [
            0, 1, 0, 0, 0, 1, 0, 2, b'a', b'b', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff,
            0xff, 0xff,
        ];
        assert_eq!(
            parse_assignment(&bytes),
            Some(vec![("ab".to_owned(), vec![0, 3])])
        );
        assert_eq!(parse_assignment(&[]), Some(vec![]));
        assert_eq!(parse_assignment(&[0, 1, 0, 0, 0, 1, 0, 9]), None);
    }
}
