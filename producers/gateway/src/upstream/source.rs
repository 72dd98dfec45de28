//! Where the replica set comes from: the static list of `gateway.order_view_url`, or the
//! platform's Directory (the instances of order-view that serve now), with the static list
//! as the fallback while the Directory knows none.

use feedline::discovery::Directory;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Upstream;

/// The service whose instances the gateway balances over.
pub const ORDER_VIEW: &str = "order-view";

#[derive(Debug, Clone)]
pub enum Source {
    /// `gateway.order_view_url` only.
    Static(Vec<String>),
    /// The Directory's serving instances of order-view; the static list while it has none.
    Directory {
        directory: Directory,
        fallback: Vec<String>,
    },
}

impl Source {
    pub fn is_discovery(&self) -> bool {
        matches!(self, Source::Directory { .. })
    }

    /// Every instance the Directory knows, with its uptime (none without a Directory).
    pub fn instances(&self) -> Vec<Value> {
        let Source::Directory { directory, .. } = self else {
            return Vec::new();
        };
        directory
            .instances()
            .into_iter()
            .map(|instance| {
                let uptime_ms = instance.uptime_ms();
                let mut value = serde_json::to_value(instance).unwrap_or(Value::Null);
                if let Some(fields) = value.as_object_mut() {
                    fields.insert("uptime_ms".into(), uptime_ms.into());
                }
                value
            })
            .collect()
    }

    /// The replica set now.
    pub fn replicas(&self) -> Vec<String> {
        match self {
            Source::Static(urls) => urls.clone(),
            Source::Directory {
                directory,
                fallback,
            } => replica_set(
                directory
                    .serving(ORDER_VIEW)
                    .into_iter()
                    .map(|instance| instance.url),
                fallback,
            ),
        }
    }

    /// Keeps `upstream`'s replica set up to date until `token` is cancelled: at once, then
    /// on every change the Directory sees (an announcement, an instance counted down).
    pub fn follow(self, upstream: Upstream, token: CancellationToken) {
        upstream.set_replicas(&self.replicas());
        let Source::Directory { directory, .. } = &self else {
            return;
        };
        let mut changes = directory.changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
                upstream.set_replicas(&self.replicas());
            }
        });
    }
}

/// The replica set: the Directory's serving instances' URLs (without a trailing slash,
/// each once), or the static list when it has none.
pub fn replica_set(serving: impl IntoIterator<Item = String>, fallback: &[String]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in serving {
        let url = url.trim_end_matches('/').to_owned();
        if !url.is_empty() && !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        fallback.to_vec()
    } else {
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_first_the_static_list_when_it_knows_none() {
        let fallback = vec!["http://order-view:8093".to_owned()];
        assert_eq!(replica_set(Vec::new(), &fallback), fallback);
        assert_eq!(
            replica_set(
                [
                    "http://10.0.0.5:8093/".to_owned(),
                    "http://10.0.0.6:8093".to_owned(),
                    "http://10.0.0.5:8093".to_owned(),
                ],
                &fallback
            ),
            ["http://10.0.0.5:8093", "http://10.0.0.6:8093"]
        );
    }
}
