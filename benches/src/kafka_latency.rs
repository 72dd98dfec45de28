//! Kafka's own produce → consume latency tool (`EndToEndLatency`, run through
//! `infra/kafka.sh tool end-to-end-latency`) as a second e2e baseline: the Java clients on
//! the same broker.
//!
//! The tool is a closed loop of one message at a time: it sends, waits for the ack and for
//! its consumer to receive the message, commits the consumer's offset synchronously, then
//! sends the next. It forces `linger.ms=0` on its producer and `fetch.max.wait.ms=0` on its
//! consumer, whatever the properties file says, so it is the broker's best case for a single
//! message, not a rate-matched comparison.

use std::time::{Duration, Instant};

use anyhow::Context;
use feedline::Settings;
use feedline::admin::{Admin, TopicSpec};

/// The tool gives whole milliseconds for its percentiles (its latencies are kept as `long`
/// milliseconds) and the mean with decimals; no p90 and no maximum.
#[derive(Debug, Clone, Copy)]
pub struct ToolLatency {
    pub messages: usize,
    pub avg: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// Wall time of the whole command, JVM start included.
    pub seconds: f64,
}

/// How long the tool may run before it is given up on (and killed).
const TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the tool with `messages` records of `size` bytes, acks=all, on a fresh one-partition
/// topic created through feedline's admin client (the tool reads one partition) and deleted
/// afterwards.
pub async fn run(
    command: &str,
    settings: &Settings,
    messages: usize,
    size: usize,
) -> anyhow::Result<ToolLatency> {
    let mut parts = command.split_whitespace();
    let program = parts.next().context("empty end-to-end-latency command")?;
    let java_on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("java").is_file()));
    anyhow::ensure!(
        java_on_path,
        "java not found on PATH (Kafka's tools need Java 17+)"
    );
    let kafka = &settings.kafka;
    // The Java tool gets only the bootstrap servers and compression, not feedline's TLS and
    // SASL settings (it would need them as JVM client properties).
    anyhow::ensure!(
        kafka.security_protocol == feedline::config::SecurityProtocol::Plaintext,
        "Kafka's end-to-end-latency tool is only run against a plaintext listener"
    );
    let topic = format!("bench-e2e-latency-{}", uuid::Uuid::new_v4().simple());
    let admin = Admin::new(kafka)?;
    admin.ensure_topics(&[TopicSpec::new(&topic, 1)]).await?;
    // The services' compression; linger and fetch wait the tool sets itself.
    let properties = std::env::temp_dir().join(format!("{topic}.properties"));
    std::fs::write(
        &properties,
        format!(
            "compression.type={}\n",
            kafka
                .producer_config()
                .get("compression.type")
                .unwrap_or("none")
        ),
    )
    .with_context(|| format!("failed to write {}", properties.display()))?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let started = Instant::now();
    let output = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(program)
            .current_dir(root)
            .args(parts)
            .args(["--bootstrap-server", &kafka.bootstrap_servers])
            .args(["--topic", &topic])
            .args(["--num-records", &messages.to_string()])
            .args(["--producer-acks", "all"])
            .args(["--record-size", &size.to_string()])
            .arg("--command-config")
            .arg(&properties)
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&properties);
    let _ = admin.delete_topics(&[&topic]).await;
    let output = output
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))?
        .with_context(|| format!("cannot run {program}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    parse(&stdout, messages, seconds).with_context(|| {
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        format!(
            "exit {}; stdout {stdout:?}; stderr ends {:?}",
            output.status, last
        )
    })
}

/// Reads "Avg latency: 7.0575 ms" and "Percentiles: 50th = 2, 99th = 41, 99.9th = 109".
fn parse(stdout: &str, messages: usize, seconds: f64) -> anyhow::Result<ToolLatency> {
    let avg = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Avg latency:"))
        .and_then(|v| v.trim().trim_end_matches("ms").trim().parse().ok())
        .context("no \"Avg latency\" line")?;
    let percentiles = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Percentiles:"))
        .context("no \"Percentiles\" line")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        percentiles
            .split(',')
            .find_map(|p| p.trim().strip_prefix(name))
            .and_then(|v| v.trim().trim_start_matches('=').trim().parse().ok())
            .with_context(|| format!("no {name} in {percentiles:?}"))
    };
    Ok(ToolLatency {
        messages,
        avg,
        p50: field("50th")?,
        p99: field("99th")?,
        p999: field("99.9th")?,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tools_summary() {
        let out = "0\t463.450124\n1000\t10.466599\nAvg latency: 7.0575 ms\nPercentiles: 50th = 2, 99th = 41, 99.9th = 109\n";
        let t = parse(out, 2000, 21.0).unwrap();
        assert_eq!((t.avg, t.p50, t.p99, t.p999), (7.0575, 2.0, 41.0, 109.0));
        assert!(parse("Avg latency: 1 ms\n", 1, 1.0).is_err());
    }
}
