//! `e2e` and `saga`: the whole of feedline (the registry and every service, a random topic
//! prefix, fresh PostgreSQL databases and a fresh SQLite file), driven through the gateway's
//! HTTP API. The services run either in this process (`feedline_launcher::System`, on
//! port 0) or each as its own child process (`crate::processes`), which is what per-service
//! memory needs.
//!
//! - [`running`] starts and stops a run's system; [`effective`] reads the settings its
//!   services ran with
//! - [`drive`] offers orders to the gateway; [`feed`] times them on the live feed
//! - [`hops`] is raw Kafka's two-hop baseline; [`memory`] samples resident memory
//! - [`e2e`] and [`saga`] measure; [`report`] writes up what they measured

mod drive;
mod e2e;
pub mod effective;
mod feed;
mod hops;
mod memory;
pub mod report;
mod running;
mod saga;

pub use e2e::e2e;
pub use running::start_registry;
pub use saga::saga;
