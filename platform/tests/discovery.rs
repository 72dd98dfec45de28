//! Discovery over the real broker and registry: an instance's announcements reach a
//! Directory, its readiness and consumer lag with them; a clean stop removes it at once; an
//! instance that stops announcing without a goodbye is counted down within three heartbeats.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use feedline::discovery::{Announcer, Beacon, Directory};
use feedline::{CancellationToken, Health, Metrics, Producer, Settings};
use feedline_testkit::{PATIENCE, eventually, kafka_bootstrap, random_prefix, start_registry};

const HEARTBEAT_MS: u64 = 300;

fn settings(prefix: &str, registry: &str, service: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
        service_name = "{service}"
        [kafka]
        bootstrap_servers = "{}"
        topic_prefix = "{prefix}"
        linger_ms = 0
        [registry]
        url = "{registry}"
        [discovery]
        heartbeat_ms = {HEARTBEAT_MS}
        missed_heartbeats = 2
        "#,
        kafka_bootstrap()
    ))
    .expect("settings")
}

struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    instance: String,
}

fn announce(settings: &Settings, port: u16, health: Health) -> Running {
    let producer = Producer::new(&settings.kafka, Metrics::new("test")).expect("producer");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let beacon = Beacon {
        health,
        consumer: None,
    };
    let announcer = Announcer::new(settings, addr, producer, beacon);
    let instance = announcer.identity().0.to_owned();
    let token = CancellationToken::new();
    let handle = tokio::spawn(announcer.run(token.clone()));
    Running {
        token,
        handle,
        instance,
    }
}

#[tokio::test]
async fn instances_come_and_go_and_the_silent_ones_are_counted_down() {
    feedline::telemetry::init();
    let prefix = random_prefix();
    let registry_token = CancellationToken::new();
    let _registry = registry_token.clone().drop_guard();
    let registry = start_registry(&prefix, registry_token).await;
    let view = settings(&prefix, &registry, "order-view");
    let directory = Directory::start(&view, CancellationToken::new())
        .await
        .expect("directory");

    // One ready instance, one whose readiness check fails.
    let ready = announce(&view, 18093, Health::new());
    let unready_health = Health::new();
    unready_health.ready_check("database", || async { Err("down".to_owned()) });
    let unready = announce(&view, 18193, unready_health);
    let gateway = announce(
        &settings(&prefix, &registry, "gateway"),
        18080,
        Health::new(),
    );

    let both = eventually(
        "both order-view instances announced",
        PATIENCE,
        async || {
            let seen: Vec<_> = directory
                .instances()
                .into_iter()
                .filter(|i| i.service == "order-view")
                .collect();
            (seen.len() == 2).then_some(seen)
        },
    )
    .await;
    assert!(both.iter().all(|i| i.up));
    let urls: Vec<&str> = both.iter().map(|i| i.url.as_str()).collect();
    assert!(urls.contains(&"http://127.0.0.1:18093"), "{urls:?}");
    let serving = directory.serving("order-view");
    assert_eq!(serving.len(), 1, "only the ready one serves: {serving:?}");
    assert_eq!(serving[0].instance_id, ready.instance);
    assert_eq!(serving[0].heartbeat_ms, HEARTBEAT_MS as i64);
    assert_eq!(serving[0].lag, None, "no consumer, no lag");
    assert_eq!(directory.serving("gateway").len(), 1);

    // A clean stop: the tombstone removes the instance without waiting for heartbeats.
    gateway.token.cancel();
    gateway.handle.await.unwrap().unwrap();
    eventually(
        "the stopped gateway left the directory",
        PATIENCE,
        async || {
            directory
                .instances()
                .iter()
                .all(|i| i.service != "gateway")
                .then_some(())
        },
    )
    .await;

    // A silent stop (no tombstone, as after kill -9): down within three heartbeats of the
    // last announcement.
    ready.handle.abort();
    let _ = ready.handle.await;
    let stopped = Instant::now();
    let mut changes = directory.changes();
    loop {
        let down = directory
            .instances()
            .into_iter()
            .find(|i| i.instance_id == ready.instance)
            .is_some_and(|i| !i.up);
        if down {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_millis(3 * HEARTBEAT_MS),
            "not counted down within 3 heartbeats"
        );
        let _ = tokio::time::timeout(Duration::from_millis(HEARTBEAT_MS), changes.changed()).await;
    }
    assert!(directory.serving("order-view").is_empty());

    // A Directory started now reads the history: the silent one down, the other one there.
    let later = Directory::start(&view, CancellationToken::new())
        .await
        .expect("directory");
    assert!(later.synced(Duration::from_secs(30)).await, "synced");
    let known: Vec<(String, bool)> = later
        .instances()
        .into_iter()
        .filter(|i| i.service == "order-view")
        .map(|i| (i.instance_id, i.up))
        .collect();
    assert!(
        known.contains(&(ready.instance.clone(), false)),
        "{known:?}"
    );
    unready.token.cancel();
    unready.handle.await.unwrap().unwrap();
}
