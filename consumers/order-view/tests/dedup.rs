//! order-view forgets the ids of events applied longer ago than `dedup.retention_hours`, in
//! the background, on its real SQLite file.

mod common;

use std::path::Path;

use common::*;
use feedline::config::DatabaseSettings;
use feedline_order_view::store::Store;

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
    let store = Store::open(&DatabaseSettings {
        url: format!("sqlite:{}", db.display()).into(),
        max_connections: 1,
    })
    .await
    .unwrap();
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
    eventually("the old ids pruned", || async { processed(&db) == 5 }).await;
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
