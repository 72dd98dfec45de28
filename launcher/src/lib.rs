//! The whole of feedline in one process: the registry and every service under one shutdown
//! root. `feedline up --in-process` runs it on the default ports; the end-to-end tests and the
//! load tests on port 0 with a fresh topic prefix and fresh databases. A crate of its own so
//! that the load tests need not build the CLI.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use feedline::codec::RegistryClient;
use feedline::{CancellationToken, Settings, TaskGroup};

/// Where each part listens, and the tasks running them.
#[derive(Debug)]
pub struct System {
    pub registry: SocketAddr,
    pub gateway: SocketAddr,
    pub orders: SocketAddr,
    pub customers: SocketAddr,
    pub order_view: SocketAddr,
    tasks: TaskGroup,
}

impl System {
    /// Starts the registry, registers the schemas, then the services. `load(defaults)` gives
    /// a service's settings from its built-in defaults (plus whatever layers the caller adds:
    /// a config file and the environment for `feedline up`, test overrides for the tests).
    pub async fn start(
        load: impl Fn(&str) -> anyhow::Result<Settings>,
        token: CancellationToken,
    ) -> anyhow::Result<System> {
        let mut tasks = TaskGroup::new(token.clone());
        // A development system: the registry may run open (it says so loudly); users
        // configured in [registry_server.users] still apply.
        let registry_settings = load(feedline_registry::DEFAULTS)?
            .with_overrides("[registry_server]\ndev_mode = true\n")?;
        let registry = feedline_registry::spawn(registry_settings, token.clone())
            .await
            .context("failed to start the schema registry")?;
        let registry_addr = registry.addr;
        tasks.spawn("registry", async move { registry.handle.await? });
        let registry_url = format!("[registry]\nurl = \"http://{registry_addr}\"\n");

        let settings = load("")?.with_overrides(&registry_url)?;
        feedline::contracts::register_all(
            &RegistryClient::new(&settings.registry),
            &settings.kafka,
        )
        .await
        .context("failed to register the schemas")?;

        let with_registry = |defaults: &str| -> anyhow::Result<Settings> {
            Ok(load(defaults)?.with_overrides(&registry_url)?)
        };
        let (orders, handle) =
            feedline_orders::spawn(with_registry(feedline_orders::DEFAULTS)?, token.clone())
                .await?;
        tasks.spawn("orders", async move { handle.await? });
        let (customers, handle) =
            feedline_customers::spawn(with_registry(feedline_customers::DEFAULTS)?, token.clone())
                .await?;
        tasks.spawn("customers", async move { handle.await? });
        let (order_view, handle) = feedline_order_view::spawn(
            with_registry(feedline_order_view::DEFAULTS)?,
            token.clone(),
        )
        .await?;
        tasks.spawn("order-view", async move { handle.await? });
        // A development system: the demo client and, unless keys are configured, the
        // development signing secret (`feedline up` says so on the console).
        let gateway_settings = with_registry(feedline_gateway::DEFAULTS)?.with_overrides(
            &format!("[gateway]\norder_view_url = \"http://{order_view}\"\ndev_mode = true\n"),
        )?;
        let (gateway, handle) = feedline_gateway::spawn(gateway_settings, token.clone()).await?;
        tasks.spawn("gateway", async move { handle.await? });
        Ok(System {
            registry: registry_addr,
            gateway,
            orders,
            customers,
            order_view,
            tasks,
        })
    }

    /// Every part's name and address.
    pub fn addresses(&self) -> [(&'static str, SocketAddr); 5] {
        [
            ("gateway", self.gateway),
            ("registry", self.registry),
            ("orders", self.orders),
            ("customers", self.customers),
            ("order-view", self.order_view),
        ]
    }

    /// Waits until every part answers `/health/ready` with 200 (Kafka reachable, groups
    /// joined, databases and registry reachable); fails naming the parts that are not.
    pub async fn ready(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut waiting = Vec::new();
            for (name, addr) in self.addresses() {
                let url = format!("http://{addr}/health/ready");
                let answer = http.get(&url).timeout(Duration::from_secs(3)).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        waiting.push(format!("{name}: {}", r.text().await.unwrap_or_default()))
                    }
                    Err(e) => waiting.push(format!("{name}: {e}")),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "not ready within {within:?}: {}",
                waiting.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adds a task to the system's group (it is cancelled with the rest).
    pub fn spawn<F>(&mut self, name: &str, task: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(name, task);
    }

    /// Runs until the token is cancelled or a part fails, then drains.
    pub async fn join(self, drain: Duration) -> anyhow::Result<()> {
        self.tasks.join(drain).await
    }
}
