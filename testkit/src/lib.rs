//! Shared test support against the real broker and PostgreSQL (started by `infra/up.sh`).
//!
//! The core needs no schema registry: a random topic prefix per test ([`random_prefix`]),
//! readers of topics ([`Reader`], [`Events`]), fresh databases ([`fresh_database`]), services
//! in-process ([`Service`]), builders of the services' messages ([`fixtures`]), the one way to
//! wait ([`eventually`]) and the one Prometheus text parser ([`prometheus`]).
//!
//! The `registry` feature adds the workspace's registry in-process ([`start_registry`]) and
//! [`TestEnv`], the whole world of a consumer service's test; the registry's own tests use
//! the core only.

#[cfg(feature = "registry")]
mod env;
pub mod fixtures;
pub mod fuzz;
mod kafka;
mod pg;
pub mod prometheus;
mod service;
mod wait;

#[cfg(feature = "registry")]
pub use env::{TestEnv, start_registry};
pub use fixtures::*;
pub use kafka::{
    Events, KafkaTls, Reader, committed, header, kafka_bootstrap, kafka_tls, random_prefix,
    read_topic,
};
pub use pg::{connect, database_url, fresh_database};
pub use prometheus::metric;
pub use service::{Service, registry_settings, service_binary};
pub use wait::{Outcome, PATIENCE, eventually};
