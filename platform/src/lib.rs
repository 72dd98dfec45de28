//! feedline's platform: everything a service needs to talk to Kafka and its database
//! reliably. Services are a library plus a thin `main.rs` that loads [`config::Settings`],
//! calls [`telemetry::init`] and runs until the [`shutdown`] token is cancelled.

pub mod admin;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod context;
pub mod db;
pub mod dedup;
pub mod dlq;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod producer;
pub mod service;
pub mod shutdown;
pub mod telemetry;

/// The global allocator of every feedline binary (`#[global_allocator] static A:
/// feedline::Allocator = feedline::Allocator;` in each `main.rs`). Under load the services
/// allocate per message (decoded values, batches, HTTP bodies) from several threads: in a
/// saga profile glibc's `malloc`/`free` took about a fifth of the CPU; mimalloc serves most
/// of those calls from thread-local free lists.
pub use mimalloc::MiMalloc as Allocator;

pub use config::Settings;
pub use consumer::{Consumer, Handler, HandlerError, Outcome};
pub use dlq::Rejection;
pub use metrics::Metrics;
pub use producer::{Outgoing, Producer};
pub use shutdown::{CancellationToken, TaskGroup};
