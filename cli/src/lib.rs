//! The `feedline` command's library: each subcommand's implementation, so the end-to-end
//! tests can drive the same code the binary runs.
//!
//! - [`produce`] and [`consume`]: JSON in and out of Avro topics ([`avro_json`] converts,
//!   [`message`] frames, decodes and filters)
//! - [`topics`], [`groups`], [`dlq`]: the cluster's topics, consumer groups and dead letters
//! - [`schema`]: the registry and the compatibility gate
//! - [`cluster`]: settings, timeouts and the Kafka clients every command shares
//! - [`status`]: the fleet, from the service directory; [`view`]: the read model's rebuild
//! - [`up`]: the whole system, each service its own supervised process (or
//!   `feedline_launcher::System`, all in this one), with a demo load

pub mod avro_json;
pub mod cluster;
pub mod consume;
pub mod dlq;
pub mod groups;
pub mod message;
pub mod produce;
pub mod schema;
pub mod status;
pub mod topics;
pub mod up;
pub mod view;

/// Human or machine output.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Prints rows as columns aligned under their headers (the text output of the tables).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
