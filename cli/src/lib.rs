//! The `feedline` command's library: each subcommand's implementation, so the end-to-end
//! tests can drive the same code the binary runs.

pub mod avro_json;
pub mod schema;

/// Human or machine output.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}
