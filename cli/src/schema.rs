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
            serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            texts.push(text);
        }
    }
    if texts.is_empty() {
        bail!(
            "no .avsc files in {}; pass --dir with the contracts directory",
            dir.display()
        );
    }
    // Records refer to each other by name, so they parse together or not at all.
    apache_avro::Schema::parse_list(&texts).map_err(|e| {
        anyhow::anyhow!(
            "the .avsc files in {} are not valid Avro schemas: {e}",
            dir.display()
        )
    })?;
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
        let (ok, mut messages, status) = match verdict {
            None => (true, Vec::new(), "new subject"),
            Some(v) if v.is_compatible => (true, v.messages, "compatible"),
            Some(v) => (false, v.messages, "INCOMPATIBLE"),
        };
        if !ok && let Some(latest) = client.version(&subject, "latest").await? {
            messages.extend(field_changes(&latest.schema, &schema));
        }
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

/// Names the fields behind an incompatibility: per record (matched by full name), fields
/// added without a default (new readers cannot read old data) and fields removed that had
/// no default (old readers cannot read new data).
fn field_changes(old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<serde_json::Value>(old),
        serde_json::from_str::<serde_json::Value>(new),
    ) else {
        return Vec::new();
    };
    let (old, new) = (records(&old), records(&new));
    let mut out = Vec::new();
    for (name, new_fields) in &new {
        let Some(old_fields) = old.get(name) else {
            continue;
        };
        for (field, has_default) in new_fields {
            if !has_default && !old_fields.iter().any(|(f, _)| f == field) {
                out.push(format!("field {name}.{field} was added without a default: readers of the new schema cannot read old data"));
            }
        }
        for (field, had_default) in old_fields {
            if !had_default && !new_fields.iter().any(|(f, _)| f == field) {
                out.push(format!("field {name}.{field} was removed and had no default: readers of the old schema cannot read new data"));
            }
        }
    }
    out
}

/// Every record of a schema: full name → (field name, has a default).
fn records(schema: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<(String, bool)>> {
    fn walk(
        node: &serde_json::Value,
        namespace: Option<&str>,
        out: &mut std::collections::BTreeMap<String, Vec<(String, bool)>>,
    ) {
        match node {
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, namespace, out)),
            serde_json::Value::Object(map) => {
                let ns = map.get("namespace").and_then(|n| n.as_str()).or(namespace);
                if map.get("type").and_then(|t| t.as_str()) == Some("record") {
                    let name = map.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    let full = match ns {
                        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
                        _ => name.to_owned(),
                    };
                    let fields = map
                        .get("fields")
                        .and_then(|f| f.as_array())
                        .cloned()
                        .unwrap_or_default();
                    out.insert(
                        full,
                        fields
                            .iter()
                            .map(|f| {
                                let name = f
                                    .get("name")
                                    .and_then(|n| n.as_str())
                                    .unwrap_or("?")
                                    .to_owned();
                                (name, f.get("default").is_some())
                            })
                            .collect(),
                    );
                    for f in &fields {
                        if let Some(t) = f.get("type") {
                            walk(t, ns, out);
                        }
                    }
                } else {
                    for key in ["type", "items", "values"] {
                        if let Some(child) = map.get(key) {
                            walk(child, ns, out);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(schema, None, &mut out);
    out
}
