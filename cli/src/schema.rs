//! `feedline schema`: register, list, get, and the compatibility gate.

use std::path::Path;

use anyhow::{Context, bail};
use feedline::Settings;
use feedline::codec::{RegistryClient, SchemaResolver};
use feedline_schemas::contracts::{self, TOPIC_ENVELOPES};

use crate::Output;

/// The envelope schemas composed from the `.avsc` files in `dir` (not the copies built into
/// this binary), by unprefixed topic: what a deploy of the working tree would register.
fn envelopes_on_disk(dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            apache_avro::Schema::parse_str(&text).map_err(|e| {
                anyhow::anyhow!("{} is not a valid Avro schema: {e}", path.display())
            })?;
            texts.push(text);
        }
    }
    if texts.is_empty() {
        bail!(
            "no .avsc files in {}; pass --dir with the contracts directory",
            dir.display()
        );
    }
    let composed = contracts::compose(texts.iter().map(String::as_str))?;
    TOPIC_ENVELOPES
        .iter()
        .map(|(topic, record)| {
            composed
                .get(*record)
                .map(|schema| (*topic, schema.clone()))
                .with_context(|| {
                    format!("{} has no {record}.avsc for topic {topic}", dir.display())
                })
        })
        .collect()
}

/// Exit code 1 with the registry's reasons when any contract would break its readers.
pub async fn check(settings: &Settings, dir: &Path, output: Output) -> anyhow::Result<bool> {
    let client = RegistryClient::new(&settings.registry);
    let mut all_ok = true;
    let mut report = Vec::new();
    for (topic, schema) in envelopes_on_disk(dir)? {
        let subject = feedline_schemas::value_subject(&settings.kafka.name(topic));
        let verdict = client
            .check(&subject, &schema)
            .await
            .with_context(|| format!("cannot check {subject} at {}", settings.registry.url))?;
        let (ok, messages, status) = match verdict {
            None => (true, Vec::new(), "new subject"),
            Some(v) if v.is_compatible => (true, v.messages, "compatible"),
            Some(v) => (false, v.messages, "INCOMPATIBLE"),
        };
        all_ok &= ok;
        match output {
            Output::Text => {
                println!("{subject}: {status}");
                for m in &messages {
                    println!("  {m}");
                }
            }
            Output::Json => report.push(serde_json::json!({
                "subject": subject, "compatible": ok, "status": status, "messages": messages,
            })),
        }
    }
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(all_ok)
}

pub async fn register(settings: &Settings, dir: &Path, output: Output) -> anyhow::Result<()> {
    let client = RegistryClient::new(&settings.registry);
    let mut report = Vec::new();
    for (topic, schema) in envelopes_on_disk(dir)? {
        let subject = feedline_schemas::value_subject(&settings.kafka.name(topic));
        let id = client
            .register(&subject, &schema)
            .await
            .with_context(|| format!("cannot register {subject} at {}", settings.registry.url))?;
        match output {
            Output::Text => println!("{subject}\tid {id}"),
            Output::Json => report.push(serde_json::json!({"subject": subject, "id": id})),
        }
    }
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

pub async fn list(settings: &Settings, output: Output) -> anyhow::Result<()> {
    let client = RegistryClient::new(&settings.registry);
    let subjects = client
        .subjects()
        .await
        .with_context(|| format!("cannot list subjects at {}", settings.registry.url))?;
    let mut rows = Vec::new();
    for subject in subjects {
        if let Some(latest) = client.version(&subject, "latest").await? {
            rows.push(latest);
        }
    }
    match output {
        Output::Text => {
            for v in rows {
                println!("{}\tversion {}\tid {}", v.subject, v.version, v.id);
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
    }
    Ok(())
}

pub async fn get(
    settings: &Settings,
    subject: &str,
    version: &str,
    output: Output,
) -> anyhow::Result<()> {
    let client = RegistryClient::new(&settings.registry);
    let Some(v) = client.version(subject, version).await? else {
        bail!("subject {subject} has no version {version}; see `feedline schema list`");
    };
    match output {
        Output::Text => {
            let pretty: serde_json::Value = serde_json::from_str(&v.schema)?;
            println!("# {} version {} id {}", v.subject, v.version, v.id);
            println!("{}", serde_json::to_string_pretty(&pretty)?);
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(())
}
