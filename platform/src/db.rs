//! PostgreSQL helpers: the pool from config, and the platform's own tables.

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseSettings;

/// The tables every service with a PostgreSQL database gets: the transactional outbox and
/// the consumer-side dedup log. `IF NOT EXISTS`, so services may run it at every start
/// beside their own migrations.
pub const PLATFORM_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    id            BIGSERIAL   PRIMARY KEY,
    topic         TEXT        NOT NULL,
    msg_key       BYTEA,
    payload       BYTEA       NOT NULL,
    headers       BYTEA       NOT NULL DEFAULT ''::bytea,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
"#;

pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    settings.url.expose_secret().parse()
}

/// Connects lazily-validated: the first query fails if the database is unreachable.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .connect_with(connect_options(settings)?)
        .await
}

/// Creates the outbox and processed_events tables if missing.
pub async fn install_platform_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(PLATFORM_SCHEMA).execute(pool).await?;
    Ok(())
}
