//! docker-compose.yml, read statically (no Docker engine here or in CI): what must hold for
//! the system it starts to be closed by default.
//!
//! - Only the gateway and the monitoring pair publish a port; order-view, the registry and
//!   everything else sit on the `internal` network alone, which is `internal: true`.
//! - Every service a service names (in a URL of its environment, or in `depends_on`) exists
//!   and shares a network with it.
//! - No secret is written in the file: passwords, secrets and the credentials in URLs are
//!   `${VAR}` references, filled from `.env`.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml::Value;

/// The services that may be reached from outside, by the port they publish.
const PUBLISHED: &[&str] = &["gateway", "prometheus", "grafana"];
/// The services that must not be reachable from outside, whatever else changes.
const INTERNAL_ONLY: &[&str] = &["order-view", "registry", "kafka", "postgres"];
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
fn the_checks_see_what_they_look_for() {
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
