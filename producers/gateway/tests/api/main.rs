//! The gateway's integration tests, one binary (one link) for all: a real Kafka broker
//! (`infra/up.sh`), a real schema registry in-process, the gateway on port 0, and for the
//! proxy and wait plumbing only, a stub of order-view.

mod admission;
mod auth;
mod bad_input;
mod commands;
mod external_issuer;
mod failover;
mod fleet;
mod helpers;
mod idempotency;
mod limits;
mod ops;
mod proxy;
mod static_content;
mod stub_order_view;
mod tenancy;
mod tokens;
