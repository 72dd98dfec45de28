//! The test PostgreSQL server: a fresh database per test.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("FEEDLINE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://feedline:feedline@127.0.0.1:5432/feedline".into())
}

/// A fresh, empty database; returns its URL. Never dropped: a failed test leaves its data
/// for a look, and CI machines are throwaway.
pub async fn fresh_database() -> String {
    let admin = PgPool::connect(&database_url())
        .await
        .expect("connect to postgres");
    let name = format!("test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let base = database_url();
    format!(
        "{}/{name}",
        &base[..base.rfind('/').expect("a database name")]
    )
}

pub async fn connect(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(5)
        .connect(url)
        .await
        .expect("connect to the test database")
}
