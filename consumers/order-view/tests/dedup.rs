//! order-view forgets the ids of events applied longer ago than `dedup.retention_hours`, in
//! the background, on its real SQLite file.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use feedline::config::DatabaseSettings;
use feedline_order_view::store::Store;

fn database(db: &Path) -> DatabaseSettings {
    DatabaseSettings {
        url: format!("sqlite:{}", db.display()).into(),
        max_connections: 1,
    }
}

fn processed(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM processed_events", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_ids_are_pruned_in_the_background_and_newer_kept() {
    let env = TestEnv::start().await;
    let db = env.db("view");
    // A file holding ids from before the service started: eight days old and one hour old
    // (none of them noted as applied recently, so age alone decides).
    let store = Store::open(&database(&db)).await.unwrap();
    store.close().await;
    let now = chrono::Utc::now().timestamp_millis();
    let conn = rusqlite::Connection::open(&db).unwrap();
    for (n, age_hours) in (0..30).map(|n| (n, 8 * 24)).chain((30..35).map(|n| (n, 1))) {
        conn.execute(
            "INSERT INTO processed_events (occurred_at, event_id) VALUES (?1, ?2)",
            rusqlite::params![
                now - age_hours * 3_600_000,
                uuid::Uuid::from_u128(n).as_bytes()
            ],
        )
        .unwrap();
    }
    drop(conn);

    let app = env
        .spawn_app(&db, "[dedup]\nprune_interval_secs = 1\nprune_chunk = 7")
        .await;
    eventually("the old ids pruned", PATIENCE, async || processed(&db) == 5).await;
    assert_eq!(
        app.metric("feedline_processed_events_pruned_total").await,
        30.0
    );
    // And the service goes on applying events.
    let ada = new_id();
    env.send_customer(&registered(&ada, "Ada", 100)).await;
    app.until(&format!("/customers/{ada}"), |s, _| s == 200)
        .await;
    assert_eq!(processed(&db), 6);
    app.stop().await;
}

/// A file from before `applied_minutes`: its ids count as applied at the upgrade, so none
/// is forgotten before a whole retention passed after it.
#[tokio::test]
async fn ids_of_a_file_from_before_the_upgrade_are_kept_a_whole_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("view.db");
    // The file as the release before made it: the first migration only.
    let first = dir.path().join("migrations");
    std::fs::create_dir(&first).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/0001_read_model.sql");
    std::fs::copy(&source, first.join("0001_read_model.sql")).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(first.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool.close().await;
    let now = chrono::Utc::now().timestamp_millis();
    let conn = rusqlite::Connection::open(&db).unwrap();
    for n in 0..10 {
        conn.execute(
            "INSERT INTO processed_events (occurred_at, event_id) VALUES (?1, ?2)",
            rusqlite::params![now - 30 * 86_400_000, uuid::Uuid::from_u128(n).as_bytes()],
        )
        .unwrap();
    }
    drop(conn);

    let store = Store::open(&database(&db)).await.unwrap();
    let mut writer = store.writer(10).await.unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(
        writer.prune_chunk(now, week, 100).unwrap(),
        0,
        "just upgraded"
    );
    let day = 86_400_000;
    assert_eq!(writer.prune_chunk(now + 6 * day, week, 100).unwrap(), 0);
    assert_eq!(writer.prune_chunk(now + 8 * day, week, 100).unwrap(), 10);
    assert_eq!(processed(&db), 0);
    drop(writer);
    store.close().await;
}
