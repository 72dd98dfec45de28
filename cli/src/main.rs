//! `feedline`: the command line for a feedline deployment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use feedline::Settings;
use feedline::admin::{Admin, TopicSpec};
use feedline_cli::{Output, schema};
use rdkafka::consumer::{BaseConsumer, Consumer};

#[derive(Debug, Parser)]
#[command(name = "feedline", version, about = "Operate a feedline deployment")]
struct Cli {
    /// Config file (TOML); FEEDLINE_* environment variables override it.
    #[arg(long, global = true, env = "FEEDLINE_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides config).
    #[arg(long, global = true)]
    bootstrap_servers: Option<String>,
    /// Schema registry URL (overrides config).
    #[arg(long, global = true)]
    registry_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Avro schemas in the registry, and the compatibility gate.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Check every contract in --dir against the registry; exit 1 naming what would break.
    ///
    /// Example: feedline schema check --dir schemas/avro
    Check {
        #[arg(long, default_value = "schemas/avro")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Register every topic's envelope schema from --dir under <topic>-value.
    ///
    /// Example: feedline schema register --dir schemas/avro
    Register {
        #[arg(long, default_value = "schemas/avro")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List subjects with their latest version and id.
    ///
    /// Example: feedline schema list --output json
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print one version of a subject.
    ///
    /// Example: feedline schema get order-events-value --version latest
    Get {
        subject: String,
        #[arg(long, default_value = "latest")]
        version: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// List topics with their partition counts.
    ///
    /// Example: feedline topics list --output json
    List {
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Create the system's topics (or the named one) if missing.
    ///
    /// Examples: feedline topics create; feedline topics create clicks --partitions 12
    Create {
        /// Topic to create; without it, every topic feedline's services use.
        name: Option<String>,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor; -1 lets the broker decide.
        #[arg(long, default_value_t = -1)]
        replication: i32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)` is a clean "no" (the gate found a breaking change): exit 1 without an error.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut settings =
        Settings::load("", cli.config.as_deref()).context("failed to load configuration")?;
    if let Some(servers) = cli.bootstrap_servers {
        settings.kafka.bootstrap_servers = servers;
    }
    if let Some(url) = cli.registry_url {
        settings.registry.url = url;
    }
    match cli.command {
        Command::Schema(SchemaCommand::Check { dir, output }) => {
            schema::check(&settings, &dir, output).await
        }
        Command::Schema(SchemaCommand::Register { dir, output }) => {
            schema::register(&settings, &dir, output)
                .await
                .map(|()| true)
        }
        Command::Schema(SchemaCommand::List { output }) => {
            schema::list(&settings, output).await.map(|()| true)
        }
        Command::Schema(SchemaCommand::Get {
            subject,
            version,
            output,
        }) => schema::get(&settings, &subject, &version, output)
            .await
            .map(|()| true),
        Command::Topics(TopicsCommand::List { output }) => {
            list_topics(&settings, output).map(|()| true)
        }
        Command::Topics(TopicsCommand::Create {
            name,
            partitions,
            replication,
        }) => {
            let specs = match name {
                Some(name) => vec![TopicSpec::new(name, partitions).replication(replication)],
                None => feedline_schemas::topic_specs(&settings.kafka),
            };
            Admin::new(&settings.kafka)?
                .ensure_topics(&specs)
                .await
                .with_context(|| {
                    format!(
                        "failed to create topics on {}",
                        settings.kafka.bootstrap_servers
                    )
                })?;
            for spec in specs {
                println!("{}", spec.name);
            }
            Ok(true)
        }
    }
}

fn list_topics(settings: &Settings, output: Output) -> anyhow::Result<()> {
    let consumer: BaseConsumer = settings.kafka.client_config().create()?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("cannot reach Kafka at {}", settings.kafka.bootstrap_servers))?;
    let mut topics: Vec<(String, usize)> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect();
    topics.sort();
    match output {
        Output::Json => {
            let list: Vec<_> = topics
                .iter()
                .map(|(name, partitions)| serde_json::json!({"name": name, "partitions": partitions}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Output::Text => {
            for (name, partitions) in topics {
                println!("{name}\t{partitions}");
            }
        }
    }
    Ok(())
}
