//! What `feedline up` runs as processes: each service's binary, replicas, port and
//! environment, all worked out before anything starts, so a mistake fails at once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use feedline::Settings;
use secrecy::ExposeSecret;

/// One service of the system, as a binary of the workspace.
#[derive(Debug)]
pub struct Part {
    pub name: &'static str,
    /// The service in the per-service variables: `FEEDLINE_UP__ORDER_VIEW__...`.
    key: &'static str,
    defaults: &'static str,
}

/// Every service in start order: the registry first (the others register and resolve
/// schemas through it), the gateway last (it proxies reads to order-view). They stop in the
/// reverse order, so nothing outlives what it depends on.
pub const PARTS: [Part; 5] = [
    Part {
        name: "registry",
        key: "REGISTRY",
        defaults: feedline_registry::DEFAULTS,
    },
    Part {
        name: "orders",
        key: "ORDERS",
        defaults: feedline_orders::DEFAULTS,
    },
    Part {
        name: "customers",
        key: "CUSTOMERS",
        defaults: feedline_customers::DEFAULTS,
    },
    Part {
        name: "order-view",
        key: "ORDER_VIEW",
        defaults: feedline_order_view::DEFAULTS,
    },
    Part {
        name: "gateway",
        key: "GATEWAY",
        defaults: feedline_gateway::DEFAULTS,
    },
];

/// Variables for one service only: `FEEDLINE_UP__ORDERS__DATABASE__URL` becomes the orders
/// processes' `FEEDLINE_DATABASE__URL`. A prefix of its own, because the service's name
/// alone would collide with real sections (`FEEDLINE_GATEWAY__...`, `FEEDLINE_REGISTRY__...`);
/// no child sees these variables.
pub const SERVICE_PREFIX: &str = "FEEDLINE_UP__";

/// Replica `i` listens on the service's port plus this times `i - 1`: the services' ports
/// differ in their last two digits, so no two replicas of any services collide.
const REPLICA_PORT_STEP: u32 = 100;

/// The most replicas of one service `--replicas` takes.
const MAX_REPLICAS: u16 = 20;

/// `--replicas SERVICE=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    pub part: &'static str,
    pub count: u16,
}

/// Parses one `SERVICE=N` of `--replicas`, with an error that says what to fix.
pub fn parse_replicas(arg: &str) -> Result<Replicas, String> {
    let (name, count) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=N (like order-view=2), got '{arg}'"))?;
    let name = name.trim();
    let part = PARTS.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<&str> = PARTS.iter().map(|p| p.name).collect();
        format!(
            "unknown service '{name}' in '{arg}': use one of {}",
            names.join(", ")
        )
    })?;
    let count = count
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|n| (1..=MAX_REPLICAS).contains(n))
        .ok_or_else(|| {
            format!(
                "the replicas of {name} must be a number from 1 to {MAX_REPLICAS}, got '{count}'"
            )
        })?;
    Ok(Replicas {
        part: part.name,
        count,
    })
}

/// One process to run: which binary, where it listens, and what it is told.
#[derive(Debug, Clone)]
pub struct Child {
    pub part: &'static str,
    /// `orders-1`: the name on the console and of its log file.
    pub label: String,
    pub program: PathBuf,
    /// `http://host:port`, where its `/health/ready` answers.
    pub url: String,
    /// Set on top of the parent's environment (which the child inherits, minus
    /// [`SERVICE_PREFIX`] variables).
    pub env: Vec<(String, String)>,
}

/// How the parent was asked to run the processes.
#[derive(Debug)]
pub struct Options<'a> {
    pub config: Option<&'a Path>,
    pub replicas: &'a [Replicas],
    pub port_offset: u16,
    /// Where the service binaries are (beside the running `feedline`).
    pub bin_dir: &'a Path,
}

/// Every process, in start order.
pub fn plan(options: &Options) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    let mut registry_url: Option<String> = None;
    let mut order_view_urls = Vec::new();
    for part in &PARTS {
        let program = binary(options.bin_dir, part.name)?;
        let settings = Settings::load(part.defaults, options.config)
            .with_context(|| format!("failed to load the configuration of {}", part.name))?;
        let overrides = service_overrides(part, std::env::vars());
        let given = |name: &str| {
            overrides
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let base_port = match given("FEEDLINE_HTTP__PORT") {
            Some(port) => port.parse::<u16>().with_context(|| {
                format!(
                    "{SERVICE_PREFIX}{}__HTTP__PORT is not a port: '{port}'",
                    part.key
                )
            })?,
            None => settings.http.port,
        };
        let host = connect_host(&given("FEEDLINE_HTTP__HOST").unwrap_or(settings.http.host));
        let database =
            given("FEEDLINE_DATABASE__URL").unwrap_or(settings.database.url.expose_secret().into());
        let count = options
            .replicas
            .iter()
            .rev()
            .find(|r| r.part == part.name)
            .map_or(1, |r| r.count);
        for replica in 1..=count {
            let label = format!("{}-{replica}", part.name);
            let port = u32::from(base_port)
                + REPLICA_PORT_STEP * u32::from(replica - 1)
                + u32::from(options.port_offset);
            let port = u16::try_from(port).ok().with_context(|| {
                format!("{label} would listen on port {port}, past 65535: lower --port-offset")
            })?;
            let url = format!("http://{host}:{port}");
            let mut env = vec![("FEEDLINE_HTTP__PORT".to_owned(), port.to_string())];
            if let Some(config) = options.config {
                env.push(("FEEDLINE_CONFIG".into(), config.display().to_string()));
            }
            match part.name {
                // A development system, as `System::start` runs it: the registry may run
                // open (it says so loudly); users in [registry_server.users] still apply.
                "registry" => {
                    env.push(("FEEDLINE_REGISTRY_SERVER__DEV_MODE".into(), "true".into()))
                }
                // The demo client and the development signing secret, unless configured.
                "gateway" => env.push(("FEEDLINE_GATEWAY__DEV_MODE".into(), "true".into())),
                _ => {}
            }
            if let Some(registry) = &registry_url {
                env.push(("FEEDLINE_REGISTRY__URL".into(), registry.clone()));
            }
            if part.name == "gateway" {
                env.push((
                    "FEEDLINE_GATEWAY__ORDER_VIEW_URL".into(),
                    order_view_urls.join(","),
                ));
            }
            // What the user set for this service wins over what `up` sets, except the
            // port and database, which `up` derives per replica from what was given.
            env.extend(
                overrides
                    .iter()
                    .filter(|(k, _)| k != "FEEDLINE_HTTP__PORT" && k != "FEEDLINE_DATABASE__URL")
                    .cloned(),
            );
            if let Some(url) = replica_database(&database, replica) {
                env.push(("FEEDLINE_DATABASE__URL".into(), url));
            } else if given("FEEDLINE_DATABASE__URL").is_some() {
                env.push(("FEEDLINE_DATABASE__URL".into(), database.clone()));
            }
            if part.name == "registry" && registry_url.is_none() {
                registry_url = Some(url.clone());
            }
            if part.name == "order-view" {
                order_view_urls.push(url.clone());
            }
            children.push(Child {
                part: part.name,
                label,
                program: program.clone(),
                url,
                env,
            });
        }
    }
    Ok(children)
}

/// The directory of the running `feedline`, where `cargo build` and the image put the
/// service binaries too.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("failed to locate the feedline binary")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the feedline binary has no directory")
}

pub(super) fn binary(dir: &Path, service: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("feedline-{service}"));
    anyhow::ensure!(
        path.is_file(),
        "{} not found beside feedline: build the services first with `cargo build --bins` \
         (add --release for a release feedline), or run them in this process with \
         `feedline up --in-process`",
        path.display()
    );
    Ok(path)
}

/// `part`'s own variables, renamed to what its processes read.
fn service_overrides(
    part: &Part,
    vars: impl Iterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let prefix = format!("{SERVICE_PREFIX}{}__", part.key);
    vars.filter_map(|(key, value)| {
        key.strip_prefix(&prefix)
            .map(|rest| (format!("FEEDLINE_{rest}"), value))
    })
    .collect()
}

/// Where to reach a service that binds `host`: a wildcard address is reached on loopback.
fn connect_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_owned(),
    }
}

/// The database of replica `replica` when it needs a file of its own: a SQLite file
/// (order-view's read model) is one process's, so replica 2 of `sqlite:data/view.db` gets
/// `sqlite:data/view-2.db` in the same directory. PostgreSQL databases are shared by the
/// replicas of a service, as in a deployment; replica 1 keeps the configured file.
fn replica_database(url: &str, replica: u16) -> Option<String> {
    if replica == 1 || !url.starts_with("sqlite:") || url.contains(":memory:") {
        return None;
    }
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (url, String::new()),
    };
    let name_at = path.rfind('/').map_or("sqlite:".len(), |i| i + 1);
    let (dir, name) = path.split_at(name_at);
    let file = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{replica}.{ext}"),
        _ => format!("{name}-{replica}"),
    };
    Some(format!("{dir}{file}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_parse_and_say_what_is_wrong() {
        assert_eq!(
            parse_replicas("order-view=2"),
            Ok(Replicas {
                part: "order-view",
                count: 2
            })
        );
        let unknown = parse_replicas("ordrs=2").unwrap_err();
        assert!(unknown.contains("unknown service 'ordrs'"), "{unknown}");
        assert!(unknown.contains("order-view"), "{unknown}");
        let zero = parse_replicas("orders=0").unwrap_err();
        assert!(zero.contains("from 1 to"), "{zero}");
        assert!(parse_replicas("orders=x").is_err());
        assert!(parse_replicas("orders").unwrap_err().contains("SERVICE=N"));
    }

    #[test]
    fn a_sqlite_file_per_replica_in_the_same_directory() {
        assert_eq!(replica_database("sqlite:order-view.db", 1), None);
        assert_eq!(
            replica_database("sqlite:order-view.db", 2).as_deref(),
            Some("sqlite:order-view-2.db")
        );
        assert_eq!(
            replica_database("sqlite:///var/lib/feedline/view.db?mode=rwc", 3).as_deref(),
            Some("sqlite:///var/lib/feedline/view-3.db?mode=rwc")
        );
        assert_eq!(
            replica_database("sqlite:data.v1/view", 2).as_deref(),
            Some("sqlite:data.v1/view-2")
        );
        assert_eq!(replica_database("sqlite::memory:", 2), None);
        assert_eq!(replica_database("postgres://h/orders", 2), None);
    }

    #[test]
    fn service_variables_go_to_their_service_only() {
        let vars = [
            ("FEEDLINE_UP__ORDERS__DATABASE__URL", "postgres://h/o"),
            ("FEEDLINE_UP__ORDER_VIEW__HTTP__HOST", "0.0.0.0"),
            ("FEEDLINE_KAFKA__TOPIC_PREFIX", "t-"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let orders = service_overrides(&PARTS[1], vars.clone().into_iter());
        assert_eq!(
            orders,
            vec![("FEEDLINE_DATABASE__URL".into(), "postgres://h/o".into())]
        );
        let view = service_overrides(&PARTS[3], vars.into_iter());
        assert_eq!(view, vec![("FEEDLINE_HTTP__HOST".into(), "0.0.0.0".into())]);
    }

    #[test]
    fn wildcard_hosts_are_reached_on_loopback() {
        assert_eq!(connect_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(connect_host("127.0.0.1"), "127.0.0.1");
        assert_eq!(connect_host("::1"), "[::1]");
    }
}
