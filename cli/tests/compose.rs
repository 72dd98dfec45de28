//! One file over 600 lines: each check reads the same parsed compose file, one test binary.
//! docker-compose.yml, read statically (no Docker engine here or in CI): what must hold for
//! the system it starts to be closed by default.
//!
//! - Only the gateway and the monitoring services publish a port; order-view, the registry and
//!   everything else sit on the `internal` network alone, which is `internal: true`.
//! - Every service a service names (in a URL of its environment, or in `depends_on`) exists
//!   and shares a network with it.
//! - No secret is written in the file: passwords, secrets and the credentials in URLs are
//!   `${VAR}` references, filled from `.env`.
//! - Every feedline service (the repository's image) has a healthcheck on its own
//!   `/health/ready`, so `depends_on: service_healthy` waits for readiness, not a process.
//! - Kafka, PostgreSQL and order-view keep their data in declared named volumes.
//! - Services that scale (`--scale`, `deploy.replicas`) hold no fixed host port and no
//!   container name, either of which would stop a second replica.
//! - Prometheus, Grafana (and any tracing backend) start only with `--profile observability`,
//!   and Grafana's provisioned data source names the Prometheus it can reach.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

/// The services that may be reached from outside, by the port they publish.
const PUBLISHED: &[&str] = &["gateway", "prometheus", "grafana", "jaeger"];
/// The services that must not be reachable from outside, whatever else changes.
const INTERNAL_ONLY: &[&str] = &["order-view", "registry", "kafka", "postgres"];
/// Every feedline service's HTTP port (the defaults the code and the image use).
const FEEDLINE_PORTS: &[(&str, u16)] = &[
    ("gateway", 8080),
    ("registry", 8081),
    ("orders", 8091),
    ("customers", 8092),
    ("order-view", 8093),
];
/// The image every feedline service runs.
const FEEDLINE_IMAGE: &str = "feedline:local";
/// The services that keep state, each in a named volume.
const STATEFUL: &[&str] = &["kafka", "postgres", "order-view"];
/// The services meant to run as several replicas.
const SCALABLE: &[&str] = &["orders", "customers", "order-view"];
/// The monitoring services, by the image names they run (a tracing backend counts too).
const OBSERVABILITY_IMAGES: &[&str] = &["prometheus", "grafana", "jaeger", "tempo", "otel"];
const OBSERVABILITY_PROFILE: &str = "observability";
/// Text that is a secret of the development setup and must never be in the file.
const KNOWN_SECRETS: &[&str] = &[
    "feedline-dev-only-jwt-secret",
    "demo-secret",
    "feedline:feedline@",
];

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml");
    let mut value: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    // `<<: *feedline` merges are how the services share their base.
    value.apply_merge().expect("merge keys resolve");
    value
}

fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn raw() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .expect("docker-compose.yml")
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("a services mapping")
        .iter()
        .map(|(name, service)| {
            (
                name.as_str().expect("service name").to_owned(),
                service.clone(),
            )
        })
        .collect()
}

/// A service's networks, in either of compose's two spellings (list or mapping); compose
/// puts a service with none on `default`.
fn networks(service: &Value) -> BTreeSet<String> {
    match &service["networks"] {
        Value::Sequence(list) => list
            .iter()
            .map(|n| n.as_str().expect("network name").to_owned())
            .collect(),
        Value::Mapping(map) => map
            .keys()
            .map(|n| n.as_str().expect("network name").to_owned())
            .collect(),
        _ => BTreeSet::from(["default".to_owned()]),
    }
}

/// A service's environment as pairs, in either spelling (mapping or `KEY=value` list).
fn environment(service: &Value) -> Vec<(String, String)> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other)
            .expect("scalar")
            .trim()
            .to_owned(),
    };
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let item = text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The hosts a value names, in each entry of a comma-separated list: a URL
/// (`scheme://[user[:pass]@]host[:port]`) or a `[id@]host:port` (Kafka's bootstrap servers
/// and quorum voters).
fn hosts(value: &str) -> Vec<String> {
    let host_of = |authority: &str| {
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        authority
            .split(['/', '?'])
            .next()
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    value
        .split(',')
        .map(str::trim)
        .filter_map(|entry| match entry.split_once("://") {
            Some((_, rest)) => Some(host_of(rest)),
            None => entry
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .then(|| host_of(entry)),
        })
        // `PLAINTEXT://:9092` listens on every interface: no host named.
        .filter(|host| !host.is_empty())
        .collect()
}

/// A list of strings in compose's list form, or a command string as one item.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Whether a service runs the repository's image (built here, or the tag that build makes).
fn is_feedline(service: &Value) -> bool {
    !service["build"].is_null() || service["image"].as_str() == Some(FEEDLINE_IMAGE)
}

/// A job that runs once and exits (`restart: "no"`), such as the topic creation: it serves
/// nothing, so it has no readiness to check.
fn is_one_shot(service: &Value) -> bool {
    service["restart"].as_str() == Some("no")
}

/// One volume mount: its source (a named volume, a host path, or none for an anonymous
/// volume), its target, and whether it is read-only; in either spelling.
#[derive(Debug, PartialEq)]
struct Mount {
    source: Option<String>,
    target: String,
    read_only: bool,
}

impl Mount {
    /// A named volume's source is a plain name; a bind mount's is a path.
    fn named(&self) -> Option<&str> {
        self.source
            .as_deref()
            .filter(|s| !s.starts_with(['.', '/', '~', '$']))
    }
}

fn mount(spec: &Value) -> Mount {
    match spec {
        Value::String(short) => {
            let parts: Vec<&str> = short.split(':').collect();
            match parts.as_slice() {
                [target] => Mount {
                    source: None,
                    target: (*target).to_owned(),
                    read_only: false,
                },
                [source, target, rest @ ..] => Mount {
                    source: Some((*source).to_owned()),
                    target: (*target).to_owned(),
                    read_only: rest.iter().any(|opts| opts.split(',').any(|o| o == "ro")),
                },
                [] => unreachable!("split yields at least one part"),
            }
        }
        long => Mount {
            source: long["source"].as_str().map(str::to_owned),
            target: long["target"].as_str().expect("a mount target").to_owned(),
            read_only: long["read_only"].as_bool().unwrap_or(false),
        },
    }
}

fn mounts(service: &Value) -> Vec<Mount> {
    service["volumes"]
        .as_sequence()
        .map(|list| list.iter().map(mount).collect())
        .unwrap_or_default()
}

/// The host port a `ports` entry publishes, if it names one: `"8093"` lets the engine pick
/// (no fixed port), `"8080:8080"` and `"127.0.0.1:8080:8080"` fix it, as does the long
/// syntax's `published`.
fn fixed_host_port(entry: &Value) -> Option<String> {
    match entry {
        Value::String(short) => {
            let without_protocol = short.split('/').next().unwrap_or(short);
            // An IPv6 address in brackets holds colons of its own.
            let without_ip = without_protocol
                .rsplit_once(']')
                .map_or(without_protocol, |(_, rest)| rest.trim_start_matches(':'));
            let parts: Vec<&str> = without_ip.split(':').collect();
            match parts.as_slice() {
                [_container] => None,
                [host, _container] | [_, host, _container] => {
                    (!host.is_empty()).then(|| (*host).to_owned())
                }
                _ => Some(short.clone()),
            }
        }
        Value::Number(_) => None,
        long => match &long["published"] {
            Value::Null => None,
            Value::String(p) if p.is_empty() => None,
            published => Some(
                serde_yaml::to_string(published)
                    .expect("scalar")
                    .trim()
                    .to_owned(),
            ),
        },
    }
}

/// The SQLite files a service is pointed at, in its environment or its command.
fn sqlite_paths(service: &Value) -> Vec<String> {
    let words: Vec<String> = environment(service)
        .into_iter()
        .map(|(_, v)| v)
        .chain(
            strings(&service["command"])
                .iter()
                .flat_map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>()),
        )
        .collect();
    words
        .iter()
        .filter_map(|word| {
            let at = word.find("sqlite:")?;
            let path = word[at + "sqlite:".len()..].trim_start_matches("//");
            Some(path.split('?').next().unwrap_or(path).to_owned())
        })
        .collect()
}

/// A whole `${VAR}` reference (with compose's `:?message`, `:-default` forms).
fn is_reference(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && value.matches("${").count() == 1
}

#[test]
fn only_the_gateway_and_monitoring_publish_ports_and_the_rest_is_internal() {
    let compose = compose();
    let services = services(&compose);
    assert_eq!(
        compose["networks"]["internal"]["internal"],
        Value::Bool(true),
        "the internal network must be `internal: true`"
    );
    for (name, service) in &services {
        let published = !service["ports"].is_null();
        assert_eq!(
            published,
            PUBLISHED.contains(&name.as_str()),
            "{name}: publishes {:?}; only {PUBLISHED:?} may publish a port",
            service["ports"]
        );
    }
    for name in INTERNAL_ONLY {
        let service = &services[*name];
        assert!(service["ports"].is_null(), "{name} publishes a port");
        assert!(service["expose"].is_null() || service["ports"].is_null());
        assert_eq!(
            networks(service),
            BTreeSet::from(["internal".to_owned()]),
            "{name} must be on the internal network only"
        );
    }
    let gateway = networks(&services["gateway"]);
    assert!(
        gateway.contains("internal") && gateway.contains("front"),
        "the gateway joins both networks: {gateway:?}"
    );
    // Every network a service joins is declared.
    let declared: BTreeSet<String> = compose["networks"]
        .as_mapping()
        .expect("networks declared")
        .keys()
        .map(|k| k.as_str().expect("network name").to_owned())
        .collect();
    for (name, service) in &services {
        for network in networks(service) {
            assert!(
                declared.contains(&network),
                "{name} joins an undeclared network {network}"
            );
        }
    }
}

#[test]
fn every_service_named_exists_and_shares_a_network() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let mut named: Vec<(String, String)> = Vec::new();
        for (key, value) in environment(service) {
            for host in hosts(&value) {
                named.push((host, format!("environment {key}={value}")));
            }
        }
        match &service["depends_on"] {
            Value::Mapping(map) => named.extend(
                map.keys()
                    .map(|k| (k.as_str().expect("name").to_owned(), "depends_on".into())),
            ),
            Value::Sequence(list) => named.extend(
                list.iter()
                    .map(|k| (k.as_str().expect("name").to_owned(), "depends_on".into())),
            ),
            _ => {}
        }
        for (host, place) in named {
            // A value that is a reference names whatever `.env` says; nothing to check.
            if host.starts_with("${") || host == "localhost" {
                continue;
            }
            let Some(other) = services.get(&host) else {
                panic!("{name}: {place} names {host}, which is not a service");
            };
            assert!(
                !networks(service).is_disjoint(&networks(other)),
                "{name}: {place} names {host}, which it shares no network with"
            );
        }
    }
    // The gateway must be pointed at order-view (its default is the host's loopback).
    let gateway = environment(&services["gateway"]);
    assert!(
        gateway
            .iter()
            .any(|(k, v)| k == "FEEDLINE_GATEWAY__ORDER_VIEW_URL" && hosts(v) == ["order-view"]),
        "the gateway's order_view_url must name the order-view service: {gateway:?}"
    );
}

#[test]
fn no_secret_is_written_in_the_file() {
    let text = raw();
    for secret in KNOWN_SECRETS {
        assert!(
            !text.contains(secret),
            "docker-compose.yml holds the development secret {secret:?}"
        );
    }
    let compose = compose();
    for (name, service) in services(&compose) {
        for (key, value) in environment(&service) {
            let upper = key.to_ascii_uppercase();
            let secret_key = ["SECRET", "PASSWORD", "PASSWD", "TOKEN", "PRIVATE", "_KEY"]
                .iter()
                .any(|word| upper.contains(word))
                && !upper.ends_with("_FILE");
            if secret_key && !value.is_empty() {
                assert!(
                    is_reference(&value),
                    "{name}: {key} is written in the file; make it a ${{VAR}} from .env"
                );
            }
            // Credentials inside a URL: the password part must be a reference.
            if let Some((_, rest)) = value.split_once("://") {
                let authority = rest.split('/').next().unwrap_or("");
                if let Some((userinfo, _)) = authority.rsplit_once('@') {
                    let password = userinfo.split_once(':').map_or("", |(_, p)| p);
                    assert!(
                        password.is_empty() || is_reference(password),
                        "{name}: {key} carries a password in its URL; make it a ${{VAR}}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_feedline_service_has_a_readiness_healthcheck_on_its_port() {
    let compose = compose();
    let services = services(&compose);
    let ports: BTreeMap<&str, u16> = FEEDLINE_PORTS.iter().copied().collect();
    let mut checked = BTreeSet::new();
    for (name, service) in &services {
        if !is_feedline(service) || is_one_shot(service) {
            continue;
        }
        let Some(port) = ports.get(name.as_str()) else {
            panic!("{name} runs the feedline image, but its port is unknown to this test");
        };
        let healthcheck = &service["healthcheck"];
        assert_ne!(
            healthcheck["disable"],
            Value::Bool(true),
            "{name}: healthcheck disabled"
        );
        let test = strings(&healthcheck["test"]).join(" ");
        let url = format!("http://localhost:{port}/health/ready");
        assert!(
            test.contains(&url),
            "{name}: its healthcheck must ask {url}, not {test:?}"
        );
        checked.insert(name.as_str());
    }
    let expected: BTreeSet<&str> = ports.keys().copied().collect();
    assert_eq!(
        checked, expected,
        "every feedline service runs the image and is checked"
    );
    // Whatever starts after the topic job waits for it to succeed, not merely to start.
    for (name, service) in &services {
        if is_feedline(service) && !is_one_shot(service) {
            assert_eq!(
                service["depends_on"]["topics"]["condition"].as_str(),
                Some("service_completed_successfully"),
                "{name} must wait for the topics job to succeed"
            );
        }
    }
}

#[test]
fn stateful_services_keep_their_data_in_declared_named_volumes() {
    let compose = compose();
    let services = services(&compose);
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|map| {
            map.keys()
                .map(|k| k.as_str().expect("volume name").to_owned())
                .collect()
        })
        .unwrap_or_default();
    // Compose refuses a named volume that is not declared at the top level.
    for (name, service) in &services {
        for mount in mounts(service) {
            if let Some(volume) = mount.named() {
                assert!(
                    declared.contains(volume),
                    "{name} mounts {volume}, which is not declared under `volumes:`"
                );
            }
        }
    }
    for name in STATEFUL {
        let named: Vec<Mount> = mounts(&services[*name])
            .into_iter()
            .filter(|m| m.named().is_some() && !m.read_only)
            .collect();
        assert!(
            !named.is_empty(),
            "{name} must keep its data in a named volume"
        );
        // A SQLite read model must live on the volume, or a new container starts empty.
        for path in sqlite_paths(&services[*name]) {
            assert!(
                named
                    .iter()
                    .any(|m| path.starts_with(&format!("{}/", m.target.trim_end_matches('/')))),
                "{name}: its SQLite file {path} is not on a named volume ({named:?})"
            );
        }
    }
    assert!(
        !sqlite_paths(&services["order-view"]).is_empty(),
        "order-view's SQLite file is not named in its environment or command"
    );
    let kafka_dirs: Vec<String> = environment(&services["kafka"])
        .into_iter()
        .filter(|(k, _)| k == "KAFKA_LOG_DIRS")
        .map(|(_, v)| v)
        .collect();
    assert!(
        kafka_dirs.iter().any(|dir| mounts(&services["kafka"])
            .iter()
            .any(|m| m.named().is_some() && dir.trim_end_matches('/') == m.target)),
        "kafka's KAFKA_LOG_DIRS ({kafka_dirs:?}) must be its named volume"
    );
}

#[test]
fn scalable_services_hold_no_fixed_host_port_or_container_name() {
    let compose = compose();
    for (name, service) in services(&compose) {
        let replicas = service["deploy"]["replicas"].as_u64();
        if !SCALABLE.contains(&name.as_str()) && replicas.is_none_or(|n| n <= 1) {
            continue;
        }
        for entry in service["ports"].as_sequence().into_iter().flatten() {
            assert_eq!(
                fixed_host_port(entry),
                None,
                "{name} scales, so it cannot publish the fixed host port of {entry:?}"
            );
        }
        assert!(
            service["container_name"].is_null(),
            "{name} scales, so it cannot have a container_name"
        );
    }
}

#[test]
fn observability_sits_in_its_profile_and_grafana_reads_prometheus() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let image = service["image"].as_str().unwrap_or("");
        let monitoring = OBSERVABILITY_IMAGES
            .iter()
            .any(|m| image.contains(m) || name.contains(m));
        let profiles = strings(&service["profiles"]);
        if monitoring {
            assert_eq!(
                profiles,
                [OBSERVABILITY_PROFILE],
                "{name} starts only with --profile {OBSERVABILITY_PROFILE}"
            );
        } else {
            // A plain `docker compose up` must start the whole system.
            assert!(profiles.is_empty(), "{name} is in profiles {profiles:?}");
        }
    }
    for name in ["prometheus", "grafana"] {
        assert!(services.contains_key(name), "{name} is missing");
    }

    // Grafana's provisioning folder, mounted read-only, holds a Prometheus data source that
    // names a service Grafana shares a network with.
    let grafana = &services["grafana"];
    let provisioning = mounts(grafana)
        .into_iter()
        .find(|m| m.target.starts_with("/etc/grafana/provisioning"))
        .expect("grafana mounts its provisioning");
    assert!(
        provisioning.read_only,
        "grafana's provisioning is mounted read-only"
    );
    let source = provisioning.source.expect("a bind mount of the repository");
    let relative = source.trim_start_matches("./");
    let folder = match provisioning.target.trim_end_matches('/') {
        "/etc/grafana/provisioning" => repo_path(relative).join("datasources"),
        "/etc/grafana/provisioning/datasources" => repo_path(relative),
        other => panic!("grafana mounts {other}, not its provisioning folder"),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&folder).expect("the datasources folder") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("a datasource file");
            let file: Value = serde_yaml::from_str(&text).expect("a YAML datasource file");
            for datasource in file["datasources"].as_sequence().into_iter().flatten() {
                if datasource["type"].as_str() == Some("prometheus") {
                    found.push(datasource["url"].as_str().expect("a url").to_owned());
                }
            }
        }
    }
    assert!(
        !found.is_empty(),
        "no prometheus datasource in {}",
        folder.display()
    );
    for url in found {
        for host in hosts(&url) {
            let other = services
                .get(&host)
                .unwrap_or_else(|| panic!("grafana's datasource names {host}: no such service"));
            assert!(
                !networks(grafana).is_disjoint(&networks(other)),
                "grafana shares no network with {host}, which its datasource names"
            );
        }
    }
}

/// The host folder a service's bind mount puts at `target` (or at a folder above it).
fn mounted_at(service: &Value, target: &str) -> std::path::PathBuf {
    let mount = mounts(service)
        .into_iter()
        .filter(|m| target.starts_with(m.target.trim_end_matches('/')))
        .max_by_key(|m| m.target.len())
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"));
    assert!(mount.read_only, "{} is mounted read-only", mount.target);
    let source = mount.source.expect("a bind mount of the repository");
    let below = target[mount.target.trim_end_matches('/').len()..].trim_start_matches('/');
    repo_path(source.trim_start_matches("./")).join(below)
}

#[test]
fn grafana_loads_the_dashboard_and_prometheus_its_alert_rules() {
    let compose = compose();
    let services = services(&compose);

    // The dashboard provider's path, inside the container, holds feedline.json.
    let grafana = &services["grafana"];
    let providers = mounted_at(grafana, "/etc/grafana/provisioning/dashboards/feedline.yml");
    let text = std::fs::read_to_string(&providers).expect("the dashboard provider file");
    let file: Value = serde_yaml::from_str(&text).expect("a YAML provider file");
    let path = file["providers"][0]["options"]["path"]
        .as_str()
        .expect("the provider's path");
    let dashboard = mounted_at(grafana, path).join("feedline.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard).expect("feedline.json"))
            .expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));

    // Prometheus's configuration, where the image reads it, loads rule files that are
    // beside it in the same mount.
    let prometheus = &services["prometheus"];
    let config = mounted_at(prometheus, "/etc/prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&config).expect("prometheus.yml");
    let file: Value = serde_yaml::from_str(&text).expect("a YAML configuration");
    let rules = strings(&file["rule_files"]);
    assert!(!rules.is_empty(), "prometheus.yml loads no rule files");
    for rule in rules {
        let path = mounted_at(prometheus, &format!("/etc/prometheus/{rule}"));
        assert!(path.is_file(), "{} is missing", path.display());
    }
}

#[test]
fn the_checks_see_what_they_look_for() {
    let port = |s: &str| fixed_host_port(&Value::String(s.into()));
    assert_eq!(port("8093"), None);
    assert_eq!(port("8093/tcp"), None);
    assert_eq!(port("8080:8080").as_deref(), Some("8080"));
    assert_eq!(port("127.0.0.1:9090:9090").as_deref(), Some("9090"));
    assert_eq!(port("127.0.0.1::8093"), None);
    assert_eq!(port("[::1]:3000:3000").as_deref(), Some("3000"));
    let long: Value = serde_yaml::from_str("{target: 8093, published: 8093}").expect("yaml");
    assert_eq!(fixed_host_port(&long).as_deref(), Some("8093"));
    let long: Value = serde_yaml::from_str("{target: 8093}").expect("yaml");
    assert_eq!(fixed_host_port(&long), None);
    let short = mount(&Value::String("data:/var/lib/x:ro".into()));
    assert_eq!(
        (short.named(), short.target.as_str(), short.read_only),
        (Some("data"), "/var/lib/x", true)
    );
    assert_eq!(mount(&Value::String("./a:/b".into())).named(), None);
    assert_eq!(mount(&Value::String("/b".into())).named(), None);
    let command: Value =
        serde_yaml::from_str("{command: [sh, -c, 'X=sqlite:/v/a-$HOSTNAME.db exec y']}")
            .expect("yaml");
    assert_eq!(sqlite_paths(&command), ["/v/a-$HOSTNAME.db"]);

    assert_eq!(hosts("http://registry:8081"), ["registry"]);
    assert_eq!(
        hosts("postgres://feedline:${POSTGRES_PASSWORD:?x}@postgres:5432/orders"),
        ["postgres"]
    );
    assert_eq!(hosts("kafka:9092,other:9093"), ["kafka", "other"]);
    assert_eq!(hosts("1@kafka:9093"), ["kafka"]);
    assert_eq!(hosts("PLAINTEXT://:9092,CONTROLLER://c:9093"), ["c"]);
    assert!(hosts("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT").is_empty());
    assert!(hosts("sqlite:/var/lib/feedline/order-view.db").is_empty());
    assert!(hosts("info").is_empty());
    assert!(is_reference("${JWT_SECRET:?set it}"));
    assert!(!is_reference("feedline"));
    assert!(!is_reference("${A}${B}x"));
}
