//! `feedline`: the command line for a feedline deployment.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use feedline::Settings;
use feedline::codec::CodecError;
use feedline::config::RegistrySettings;
use feedline_cli::cluster::{Cluster, seconds};
use feedline_cli::consume::ConsumeArgs;
use feedline_cli::dlq::DlqCommand;
use feedline_cli::groups::GroupsCommand;
use feedline_cli::produce::ProduceArgs;
use feedline_cli::topics::TopicsCommand;
use feedline_cli::{Output, consume, dlq, groups, produce, schema, topics};
use secrecy::SecretString;

const EXAMPLES: &str = "\
Examples:
  feedline topics list
  feedline consume order-events --from-beginning --meta --count 5
  echo '{...}' | feedline produce customer-commands --key-field payload.customer_id
  feedline groups describe orders
  feedline dlq inspect order-events
  feedline status
  feedline view rebuild

Configuration: flags, then FEEDLINE_* environment variables (FEEDLINE_KAFKA__BOOTSTRAP_SERVERS,
FEEDLINE_REGISTRY__URL, ...), then the --config file, then built-in defaults.
Exit status: 0 success, 1 failure (one `error:` line on stderr), 2 usage error.";

const GLOBAL: &str = "Connection (every command)";

#[derive(Debug, Parser)]
#[command(
    name = "feedline",
    version,
    about = "Operate a feedline deployment: publish and read Avro topics as JSON, inspect topics, groups and dead letters",
    after_help = EXAMPLES
)]
struct Cli {
    /// Config file (TOML); FEEDLINE_* environment variables override it.
    #[arg(long, global = true, env = "FEEDLINE_CONFIG", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides config).
    #[arg(long, global = true, help_heading = GLOBAL)]
    bootstrap_servers: Option<String>,
    /// Schema registry URL (overrides config).
    #[arg(long, global = true, help_heading = GLOBAL)]
    registry_url: Option<String>,
    /// Schema registry user, with its password after a colon or in --registry-password.
    #[arg(long, global = true, env = "FEEDLINE_REGISTRY_USER", value_name = "USER[:PASSWORD]", hide_env_values = true, help_heading = GLOBAL)]
    registry_user: Option<String>,
    /// Schema registry password (prefer the environment variable: flags show in `ps`).
    #[arg(long, global = true, env = "FEEDLINE_REGISTRY_PASSWORD", hide_env_values = true, help_heading = GLOBAL)]
    registry_password: Option<SecretString>,
    /// PEM CA certificates to trust for an https:// registry, besides the system's.
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    registry_ca: Option<PathBuf>,
    /// Seconds any one Kafka request (metadata, offsets) may take before the command fails.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "SECS", default_value = "10", value_parser = seconds)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system here: Kafka and PostgreSQL (infra/), the registry, every
    /// service, the schemas, demo customers and a stream of demo orders. Ctrl-C stops all.
    ///
    /// Example: feedline up --rate 50
    Up(feedline_cli::up::UpArgs),
    /// Publish JSON values to a topic, encoded as Avro with its registered schema.
    Produce(ProduceArgs),
    /// Print a topic's messages as JSON, decoded with the schemas their ids name.
    Consume(ConsumeArgs),
    /// Kafka topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Consumer groups: members, committed offsets, lag.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Dead-letter queues: inspect and redrive.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Avro schemas in the registry, and the compatibility gate.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// The fleet: every service instance from the service directory (`_services`), with
    /// its URL, readiness, lag and when it was last heard from. Exit 1 when a service has
    /// no ready instance.
    ///
    /// Example: feedline status --output json
    Status(feedline_cli::status::StatusArgs),
    /// The read model (order-view): rebuild a new generation beside the running one.
    #[command(subcommand)]
    View(feedline_cli::view::ViewCommand),
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

#[tokio::main]
async fn main() -> ExitCode {
    quiet_broken_pipe();
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

/// `feedline ... | head` closes stdout early: that ends the command quietly, as it ends
/// `cat`, instead of a panic from `println!` with a backtrace.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// `Ok(false)` is a clean "no" (the gate found a breaking change, some values were not
/// sent): exit 1 without an error line.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut settings =
        Settings::load("", cli.config.as_deref()).context("failed to load configuration")?;
    if let Some(servers) = cli.bootstrap_servers {
        settings.kafka.bootstrap_servers = servers;
    }
    if let Some(url) = cli.registry_url {
        settings.registry.url = url;
    }
    if let Some(password) = cli.registry_password {
        settings.registry.password = Some(password);
    }
    if let Some(user) = cli.registry_user {
        // A password given with the user, on this command line, wins over the variable.
        match user.split_once(':') {
            Some((user, password)) => {
                settings.registry.username = Some(user.to_owned());
                settings.registry.password = Some(password.to_owned().into());
            }
            None => settings.registry.username = Some(user),
        }
    }
    if let Some(ca) = cli.registry_ca {
        settings.registry.ca_location = Some(ca);
        settings.registry.load_ca()?;
    }
    if let Command::Up(args) = cli.command {
        return feedline_cli::up::up(cli.config.as_deref(), args).await;
    }
    if let Command::View(command) = cli.command {
        return feedline_cli::view::run(&settings, cli.config.as_deref(), cli.timeout, command)
            .await;
    }
    let registry = settings.registry.clone();
    let cluster = Cluster::new(settings, cli.timeout);
    dispatch(&cluster, cli.command)
        .await
        .map_err(|e| explain_registry_refusal(e, &registry))
}

/// A registry that refused the command's credentials: one line saying what to change
/// instead of the registry's own message.
fn explain_registry_refusal(e: anyhow::Error, registry: &RegistrySettings) -> anyhow::Error {
    let status = e
        .chain()
        .find_map(|cause| match cause.downcast_ref::<CodecError>() {
            Some(CodecError::Registry {
                status: status @ (401 | 403),
                ..
            }) => Some(*status),
            _ => None,
        });
    let url = &registry.url;
    let user = registry.username.as_deref().filter(|u| !u.is_empty());
    match (status, user) {
        (Some(401), None) => anyhow::anyhow!(
            "the schema registry at {url} needs credentials: pass --registry-user USER[:PASSWORD] (or set FEEDLINE_REGISTRY_USER and FEEDLINE_REGISTRY_PASSWORD)"
        ),
        (Some(401), Some(user)) => anyhow::anyhow!(
            "the schema registry at {url} rejected the password of user '{user}': check --registry-user and --registry-password (FEEDLINE_REGISTRY_USER, FEEDLINE_REGISTRY_PASSWORD)"
        ),
        (Some(_), user) => anyhow::anyhow!(
            "the schema registry at {url} does not let user '{}' do this: registering needs the write role, deleting the admin role",
            user.unwrap_or_default()
        ),
        (None, _) => e,
    }
}

async fn dispatch(cluster: &Cluster, command: Command) -> anyhow::Result<bool> {
    let settings = &cluster.settings;
    match command {
        Command::Produce(args) => produce::run(cluster, args).await,
        Command::Consume(args) => consume::run(cluster, args).await,
        Command::Topics(command) => topics::run(cluster, command).await,
        Command::Groups(command) => groups::run(cluster, command).await,
        Command::Dlq(command) => dlq::run(cluster, command).await,
        Command::Up(_) | Command::View(_) => {
            unreachable!("handled before the cluster is set up")
        }
        Command::Status(args) => feedline_cli::status::run(settings, cluster.timeout, args).await,
        Command::Schema(SchemaCommand::Check { dir, output }) => {
            schema::check(settings, &dir, output).await
        }
        Command::Schema(SchemaCommand::Register { dir, output }) => {
            schema::register(settings, &dir, output)
                .await
                .map(|()| true)
        }
        Command::Schema(SchemaCommand::List { output }) => {
            schema::list(settings, output).await.map(|()| true)
        }
        Command::Schema(SchemaCommand::Get {
            subject,
            version,
            output,
        }) => schema::get(settings, &subject, &version, output)
            .await
            .map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
