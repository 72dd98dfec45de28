//! PostgreSQL helpers: the pool from config, and the platform's own tables.

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseSettings;
use crate::errors::{Classify, ErrorClass};

/// What a service's own statements fail with.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("schema set-up: {0}")]
    Migrate(#[from] MigrateError),
    /// A stored value this release does not know, such as a status a newer release wrote.
    #[error("{0}")]
    UnknownValue(String),
}

impl Classify for DbError {
    fn class(&self) -> ErrorClass {
        match self {
            DbError::Sql(e) => e.class(),
            DbError::Migrate(e) => e.class(),
            // No rule says what an unknown value means.
            DbError::UnknownValue(_) => ErrorClass::Unknown,
        }
    }
}

/// The tables every service with a PostgreSQL database gets: the transactional outbox, the
/// rows it could never publish, and the consumer-side dedup log. `IF NOT EXISTS`, so services may run it at every start
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
CREATE TABLE IF NOT EXISTS outbox_quarantine (
    id             BIGINT      PRIMARY KEY,
    topic          TEXT        NOT NULL,
    msg_key        BYTEA,
    payload        BYTEA       NOT NULL,
    headers        BYTEA       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    error          TEXT        NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The W3C traceparent of the span that wrote the row: the relay publishes the row as part of
-- that trace. Added to tables of earlier releases in place.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_context TEXT;
ALTER TABLE outbox_quarantine ADD COLUMN IF NOT EXISTS trace_context TEXT;
CREATE TABLE IF NOT EXISTS processed_events (
    consumer     TEXT        NOT NULL,
    event_id     TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
-- What the pruner deletes by (feedline::dedup): without it every pruning run would read the
-- whole table. processed_at grows with the insertion order, so a BRIN index (a few pages of
-- block ranges) finds the old rows without an entry per row for the dedup insert to write.
DROP INDEX IF EXISTS processed_events_processed_at;
CREATE INDEX IF NOT EXISTS processed_events_processed_at_brin ON processed_events USING brin (processed_at);
"#;

/// The connection options of `database.url`, with every statement planned for its own
/// arguments.
///
/// sqlx prepares its statements, and after five executions PostgreSQL may switch a prepared
/// statement to a generic plan that it keeps until the table's statistics change. A
/// service's tables start empty, so the plan it settles on for `WHERE id = ANY($1)` is a
/// sequential scan, and autovacuum may not analyze the table for a long time under load: in
/// the saga bench the order and customer services spent half of both cores comparing UUIDs
/// in such scans of tables that had grown to 100,000 rows. A custom plan per execution
/// costs a few tens of microseconds per batch and follows the table as it grows.
pub fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse()?;
    Ok(options.options([("plan_cache_mode", "force_custom_plan")]))
}

/// How long a caller waits for a pooled connection: while the database is away, work fails
/// fast and is retried with backoff instead of hanging in the pool.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects lazily-validated: the first query fails if the database is unreachable.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(connect_options(settings)?)
        .await
}

/// Creates the outbox and processed_events tables if missing.
pub async fn install_platform_schema(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(PLATFORM_SCHEMA).execute(pool).await?;
    Ok(())
}

/// Runs a service's migrations and installs the platform tables, under the advisory lock
/// `lock_key` (one per service): replicas starting together would otherwise race, and
/// concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL's catalog. Safe
/// to run at every start, by any number of replicas.
pub async fn prepare(
    pool: &PgPool,
    mut migrator: Migrator,
    lock_key: i64,
) -> Result<(), MigrateError> {
    let mut lock = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key)
        .execute(&mut *lock)
        .await?;
    let result = async {
        // Tolerates migrations of a newer release already applied (rolling upgrades).
        migrator.set_ignore_missing(true);
        migrator.run(&mut *lock).await?;
        install_platform_schema(pool).await?;
        Ok(())
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_key)
        .execute(&mut *lock)
        .await?;
    result
}
