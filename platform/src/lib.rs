//! feedline's platform: everything a service needs to talk to Kafka and its database
//! reliably. Services are a library plus a thin `main.rs` that loads [`config::Settings`],
//! calls [`telemetry::init`] and runs until the [`shutdown`] token is cancelled.

pub mod admin;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod context;
pub mod contracts;
pub mod db;
pub mod dedup;
pub mod discovery;
pub mod dlq;
pub mod errors;
pub mod health;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod producer;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod transactional;

pub use config::Settings;
pub use consumer::{Consumer, Handler, HandlerError, Outcome};
pub use dlq::Rejection;
pub use errors::{Classify, ErrorClass};
pub use health::Health;
pub use metrics::Metrics;
pub use producer::{Outgoing, Producer};
pub use shutdown::{CancellationToken, TaskGroup};
