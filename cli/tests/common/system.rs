//! The whole system in-process, as the end-to-end tests start it: the registry and the four
//! services on port 0, a fresh topic prefix, fresh databases for orders and customers and a
//! fresh SQLite file for order-view.

use feedline::config::KafkaSettings;
use feedline::{CancellationToken, Settings};
use feedline_launcher::System;
use feedline_testkit::{database_url, fresh_database, kafka_bootstrap, random_prefix};
use serde_json::{Value, json};

/// What keeps one system apart from the others: its prefix and databases.
#[derive(Debug, Clone)]
pub struct Launch {
    pub prefix: String,
    pub orders_url: String,
    pub customers_url: String,
    pub view_url: String,
    /// More TOML over every service's settings.
    extra: String,
}

impl Launch {
    /// A system on the test broker; `extra` is TOML layered over every service's settings.
    pub async fn new(extra: &str) -> Self {
        let extra = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n{extra}",
            kafka_bootstrap()
        );
        Self::on_own_broker(&extra).await
    }

    /// A system whose settings name their broker themselves (or in `extra`).
    pub async fn on_own_broker(extra: &str) -> Self {
        let prefix = random_prefix();
        let view = std::env::temp_dir().join(format!("{prefix}view.db"));
        Launch {
            orders_url: fresh_database().await,
            customers_url: fresh_database().await,
            view_url: format!("sqlite:{}", view.display()),
            prefix,
            extra: extra.to_owned(),
        }
    }

    /// What every service gets over its defaults, but its database.
    fn common(&self) -> String {
        format!(
            "[kafka]\ntopic_prefix = \"{}\"\ndefault_partitions = 3\n\
             [consumer]\nsession_timeout_ms = 6000\ndrain_timeout_ms = 3000\n[http]\nport = 0\n",
            self.prefix
        )
    }

    /// The Kafka settings the services share.
    pub fn kafka(&self) -> KafkaSettings {
        Settings::from_toml(&self.common())
            .and_then(|s| s.with_overrides(&self.extra))
            .expect("the system's kafka settings")
            .kafka
    }

    /// Starts the system on the built-in defaults; it runs until `token` is cancelled.
    pub async fn start(self, token: CancellationToken) -> System {
        self.start_from(|defaults| Ok(Settings::from_toml(defaults)?), token)
            .await
    }

    /// Starts the system on what `base(defaults)` gives (the built-in defaults, a config
    /// file, the environment), this launch's settings over it.
    pub async fn start_from(
        self,
        base: impl Fn(&str) -> anyhow::Result<Settings>,
        token: CancellationToken,
    ) -> System {
        let common = self.common();
        let load = move |defaults: &str| -> anyhow::Result<Settings> {
            let settings = base(defaults)?;
            let db = match settings.service_name.as_str() {
                "orders" => self.orders_url.clone(),
                "customers" => self.customers_url.clone(),
                "order-view" => self.view_url.clone(),
                _ => database_url(),
            };
            Ok(settings
                .with_overrides(&format!(
                    "{common}[database]\nurl = \"{db}\"\nmax_connections = 5\n"
                ))?
                .with_overrides(&self.extra)?)
        };
        System::start(load, token).await.expect("system starts")
    }
}

/// A token of the demo client from the gateway at `base`.
pub async fn demo_bearer(http: &reqwest::Client, base: &str) -> String {
    let answer: Value = http
        .post(format!("{base}/auth/token"))
        .json(&json!({
            "grant_type": "client_credentials",
            "client_id": "demo",
            "client_secret": "demo-secret"
        }))
        .send()
        .await
        .expect("token request sent")
        .json()
        .await
        .expect("a token answer");
    answer["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}
