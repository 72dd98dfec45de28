//! Services under test: in-process on port 0, or as the workspace's binaries.

use std::future::Future;
use std::net::SocketAddr;

use feedline::{CancellationToken, Settings};
use tokio::task::JoinHandle;

use crate::{PATIENCE, kafka_bootstrap};

/// A development registry's settings on `prefix`'s `_schemas` topic, on port 0: open (the
/// auth tests add users on top) and silent on the service directory, as an announcement
/// would register its own schema in it (the discovery tests turn that back on).
pub fn registry_settings(prefix: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
        service_name = "registry"
        [kafka]
        bootstrap_servers = "{}"
        topic_prefix = "{prefix}"
        linger_ms = 0
        [http]
        host = "127.0.0.1"
        port = 0
        [registry_server]
        dev_mode = true
        [discovery]
        enabled = false
        "#,
        kafka_bootstrap()
    ))
    .expect("registry settings")
}

/// A service started in-process.
pub struct Service {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Service {
    pub async fn start<F, Fut>(spawn: F, settings: Settings) -> Self
    where
        F: FnOnce(Settings, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)>>,
    {
        let token = CancellationToken::new();
        let (addr, handle) = tokio::time::timeout(PATIENCE, spawn(settings, token.clone()))
            .await
            .expect("service started in time")
            .expect("service started");
        Service {
            addr,
            token,
            handle: Some(handle),
        }
    }

    /// Cancels the service and waits until it has stopped cleanly.
    pub async fn stop(mut self) {
        self.token.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("service stopped in time")
            .expect("service task joined")
            .expect("service stopped cleanly");
    }

    /// The Prometheus text of the service's `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addr);
        let response = reqwest::get(&url).await.expect("GET /metrics");
        assert!(response.status().is_success());
        response.text().await.expect("metrics text")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The workspace binary `name` (`feedline-order-view`, ...), for tests that run services as
/// real processes (to kill -9 them). A test executable lives in `target/<profile>/deps`, the
/// binaries one level up; `cargo test --workspace` builds them all before any test runs.
pub fn service_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's directory");
    let profile = deps.parent().expect("the target profile directory");
    let path = profile.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the services first (`cargo build --workspace --bins`, which \
         `cargo test --workspace` does)",
        path.display()
    );
    path
}
