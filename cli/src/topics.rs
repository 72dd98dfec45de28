//! `feedline topics`: list, describe and create topics.

use std::time::Duration;

use anyhow::Context;
use feedline::admin::{Admin, TopicSpec};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::json;

use crate::cluster::{Cluster, key_value};
use crate::{Output, print_table};

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// List topics with their partition counts.
    ///
    /// Example: feedline topics list --output json
    List {
        /// Include Kafka's internal topics (__consumer_offsets, ...).
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Partitions (leader, replicas, in-sync replicas, watermarks) and configuration of a
    /// topic.
    ///
    /// Examples: feedline topics describe order-events; feedline topics describe order-events --output json
    Describe {
        topic: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create the system's topics (or the named one) if missing.
    ///
    /// Examples: feedline topics create; feedline topics create clicks --partitions 12 --topic-config retention.ms=86400000
    Create {
        /// Topic to create; without it, every topic feedline's services use.
        name: Option<String>,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor; -1 lets the broker decide.
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        replication: i32,
        /// Topic configuration for the named topic (repeatable).
        #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = key_value, requires = "name")]
        configs: Vec<(String, String)>,
    },
}

pub async fn run(cluster: &Cluster, command: TopicsCommand) -> anyhow::Result<bool> {
    match command {
        TopicsCommand::List { all, output } => list(cluster, all, output),
        TopicsCommand::Describe { topic, output } => describe(cluster, &topic, output).await,
        TopicsCommand::Create {
            name,
            partitions,
            replication,
            configs,
        } => create(cluster, name, partitions, replication, configs).await,
    }
}

fn list(cluster: &Cluster, all: bool, output: Output) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    let metadata = cluster.metadata(&client, None)?;
    let mut topics: Vec<(String, usize)> = metadata
        .topics()
        .iter()
        .filter(|t| all || !t.name().starts_with("__"))
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect();
    topics.sort();
    match output {
        Output::Json => {
            let list: Vec<_> = topics
                .iter()
                .map(|(name, partitions)| json!({"name": name, "partitions": partitions}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Text => {
            for (name, partitions) in topics {
                println!("{name}\t{partitions}");
            }
        }
    }
    Ok(true)
}

async fn describe(cluster: &Cluster, topic: &str, output: Output) -> anyhow::Result<bool> {
    let client = cluster.metadata_client()?;
    cluster.partitions(&client, topic)?;
    let metadata = cluster.metadata(&client, Some(topic))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("the broker's metadata lost the topic")?;
    let mut partitions = Vec::new();
    let mut sorted: Vec<_> = found.partitions().iter().collect();
    sorted.sort_by_key(|p| p.id());
    for p in sorted {
        let (low, high) = cluster.watermarks(&client, topic, p.id())?;
        partitions.push(json!({
            "partition": p.id(),
            "leader": p.leader(),
            "replicas": p.replicas(),
            "isr": p.isr(),
            "low": low,
            "high": high,
            "messages": high - low,
        }));
    }

    let admin: AdminClient<DefaultClientContext> = cluster
        .client_config()
        .create()
        .context("cannot create a Kafka admin client")?;
    let options = AdminOptions::new().request_timeout(Some(cluster.timeout));
    let results = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| cluster.unreachable(e))?;
    let mut configs = Vec::new();
    for result in results {
        let resource = result
            .map_err(|e| anyhow::anyhow!("cannot read the configuration of {topic}: {e:?}"))?;
        for entry in resource.entries {
            configs.push((
                entry.name,
                entry.value,
                entry.is_default,
                entry.is_sensitive,
            ));
        }
    }
    configs.sort();

    match output {
        Output::Json => {
            let configs: serde_json::Map<String, serde_json::Value> = configs
                .iter()
                .map(|(name, value, is_default, sensitive)| {
                    let value = if *sensitive { None } else { value.clone() };
                    (name.clone(), json!({"value": value, "default": is_default}))
                })
                .collect();
            let out = json!({
                "topic": topic,
                "partitions": partitions,
                "configs": configs,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            println!("topic {topic}: {} partitions", partitions.len());
            let rows: Vec<Vec<String>> = partitions
                .iter()
                .map(|p| {
                    vec![
                        p["partition"].to_string(),
                        p["leader"].to_string(),
                        ids(&p["replicas"]),
                        ids(&p["isr"]),
                        p["low"].to_string(),
                        p["high"].to_string(),
                    ]
                })
                .collect();
            print_table(
                &["PARTITION", "LEADER", "REPLICAS", "ISR", "LOW", "HIGH"],
                &rows,
            );
            println!("configuration (non-default, plus the usual suspects):");
            const ALWAYS: &[&str] = &[
                "cleanup.policy",
                "retention.ms",
                "min.insync.replicas",
                "max.message.bytes",
            ];
            for (name, value, is_default, sensitive) in &configs {
                if !is_default || ALWAYS.contains(&name.as_str()) {
                    let value = match (sensitive, value) {
                        (true, _) => "(sensitive)".to_owned(),
                        (false, Some(v)) => v.clone(),
                        (false, None) => "(none)".to_owned(),
                    };
                    let marker = if *is_default { "" } else { "  (set)" };
                    println!("  {name} = {value}{marker}");
                }
            }
        }
    }
    Ok(true)
}

fn ids(list: &serde_json::Value) -> String {
    list.as_array()
        .map(|ids| {
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

async fn create(
    cluster: &Cluster,
    name: Option<String>,
    partitions: i32,
    replication: i32,
    configs: Vec<(String, String)>,
) -> anyhow::Result<bool> {
    // Fail fast (within --timeout) when the broker cannot be reached: the admin request
    // itself would wait for its own, much longer, timeout.
    let client = cluster.metadata_client()?;
    cluster.metadata(&client, None)?;
    let kafka = &cluster.settings.kafka;
    let specs = match name {
        Some(name) => {
            let spec = TopicSpec::new(name, partitions).replication(replication);
            vec![configs.iter().fold(spec, |s, (k, v)| s.config(k, v))]
        }
        None => feedline::contracts::topic_specs(kafka),
    };
    let admin = Admin::new(kafka)?;
    tokio::time::timeout(
        cluster.timeout.max(Duration::from_secs(30)),
        admin.ensure_topics(&specs),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Kafka did not confirm the topics in time"))?
    .with_context(|| format!("failed to create topics on {}", kafka.bootstrap_servers))?;
    for spec in specs {
        println!("{}", spec.name);
    }
    Ok(true)
}
