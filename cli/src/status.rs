//! `feedline status`: the fleet as the service directory sees it (the `_services` topic):
//! every instance of every service, whether it is up and ready, its lag, when it was last
//! heard from. Exit 1 when a service has no ready instance.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use feedline::discovery::{Directory, Instance};
use feedline::{CancellationToken, Settings};
use serde_json::json;

use crate::{Output, print_table};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Services that must have a ready instance even if none ever announced itself
    /// (comma-separated), besides every service the directory knows.
    #[arg(long, value_delimiter = ',', value_name = "SERVICE,...")]
    expect: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// Prints the fleet; `Ok(false)` when some service has no ready instance.
pub async fn run(settings: &Settings, timeout: Duration, args: StatusArgs) -> anyhow::Result<bool> {
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let directory = Directory::start(settings, token)
        .await
        .context("failed to read the service directory")?;
    anyhow::ensure!(
        directory.synced(timeout).await,
        "could not read the service directory ({}) within {timeout:?}: is Kafka at {} reachable?",
        settings.kafka.name(feedline::discovery::TOPIC),
        settings.kafka.bootstrap_servers
    );
    let instances = directory.instances();
    let services = summary(&instances, &args.expect, |s| directory.serving(s).len());
    let healthy = services.values().all(|s| s.serving > 0);
    match args.output {
        Output::Json => {
            let answer = json!({
                "healthy": healthy,
                "services": services,
                "instances": instances,
            });
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        Output::Text => {
            print_fleet(&instances);
            for (name, service) in &services {
                if service.serving == 0 {
                    eprintln!("{name}: no ready instance ({} known)", service.instances);
                }
            }
        }
    }
    Ok(healthy)
}

#[derive(Debug, serde::Serialize)]
struct ServiceSummary {
    instances: usize,
    /// Up, ready and (where others are) caught up: the instances reads go to.
    serving: usize,
}

fn summary(
    instances: &[Instance],
    expected: &[String],
    serving: impl Fn(&str) -> usize,
) -> BTreeMap<String, ServiceSummary> {
    let mut services = BTreeMap::new();
    let names = instances
        .iter()
        .map(|i| i.service.as_str())
        .chain(expected.iter().map(String::as_str));
    for name in names {
        services
            .entry(name.to_owned())
            .or_insert_with(|| ServiceSummary {
                instances: instances.iter().filter(|i| i.service == name).count(),
                serving: serving(name),
            });
    }
    services
}

/// One row per instance, as `feedline status` prints them.
pub fn rows(instances: &[Instance]) -> Vec<Vec<String>> {
    instances
        .iter()
        .map(|i| {
            vec![
                i.service.clone(),
                i.instance_id.clone(),
                i.url.clone(),
                i.version.clone(),
                state(i).to_owned(),
                i.lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                format!("{} ago", duration(i.last_seen_ms)),
                duration(i.uptime_ms()),
            ]
        })
        .collect()
}

fn print_fleet(instances: &[Instance]) {
    if instances.is_empty() {
        println!("no instance has announced itself yet");
        return;
    }
    print_table(
        &[
            "SERVICE",
            "INSTANCE",
            "URL",
            "VERSION",
            "READY",
            "LAG",
            "LAST SEEN",
            "UPTIME",
        ],
        &rows(instances),
    );
}

fn state(instance: &Instance) -> &'static str {
    match (instance.up, instance.ready) {
        (false, _) => "down",
        (true, true) => "yes",
        (true, false) => "no",
    }
}

/// `850ms`, `12s`, `4m05s`, `3h12m`, `2d04h`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(3 * 3_600_000 + 12 * 60_000), "3h12m");
        assert_eq!(duration(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }
}
