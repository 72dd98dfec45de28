//! Where the replica set comes from: the static list of `gateway.order_view_url`, or the
//! platform's Directory (the instances of order-view that serve now), with the static list
//! as the fallback while the Directory knows none.

use tokio_util::sync::CancellationToken;

use super::Upstream;

/// The service whose instances the gateway balances over.
pub const ORDER_VIEW: &str = "order-view";

#[derive(Debug, Clone)]
pub enum Source {
    /// `gateway.order_view_url` only.
    Static(Vec<String>),
}

impl Source {
    pub fn is_discovery(&self) -> bool {
        false
    }

    /// Every instance the Directory knows (none without one).
    pub fn instances(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }

    /// Keeps `upstream`'s replica set up to date until `token` is cancelled.
    pub fn follow(self, upstream: Upstream, token: CancellationToken) {
        match self {
            Source::Static(urls) => upstream.set_replicas(&urls),
        }
        drop(token);
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
