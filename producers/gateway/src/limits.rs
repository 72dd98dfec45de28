//! Rate limits: token buckets per client id and per IP address, on `POST /auth/token`
//! (where they slow down guessing secrets) and on the API (where they keep one client or
//! one address from taking the gateway for itself). A refused request gets 429 with
//! `Retry-After` and the usual JSON error.
//!
//! The buckets live in memory, per replica, in a map of bounded size: an attacker who
//! cycles through addresses or invented client ids can only push old buckets out, never
//! grow the map (see [`Buckets`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::streams::PeerAddr;

/// `[gateway.limits]`: every limit of the gateway, with the defaults of [`crate::DEFAULTS`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Token requests per client id (whichever id is claimed, known or not).
    pub token_per_client: BucketConfig,
    /// Token requests per IP address.
    pub token_per_ip: BucketConfig,
    /// API requests per authenticated client.
    pub api_per_client: BucketConfig,
    /// API requests per IP address.
    pub api_per_ip: BucketConfig,
    /// At most this many buckets of each kind are kept; the least recently used go first.
    pub max_keys: usize,
    /// Peers whose `X-Forwarded-For` is believed (addresses or CIDR blocks). Empty: the
    /// peer address is the client's, whatever the header says.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Live feeds open at once per client (then 429) and in total (then 503).
    pub max_streams_per_client: usize,
    pub max_streams: usize,
    /// A response the client has not taken any of for this long is abandoned, and its
    /// connection closed: a reader that stopped reading holds nothing for longer.
    pub write_timeout_ms: u64,
    /// Comment lines sent on an idle feed, so proxies and browsers keep it open.
    pub keep_alive_ms: u64,
    /// Time limit of a request other than the live feed (a `?wait` adds its wait).
    pub request_timeout_ms: u64,
    /// Requests waiting (`?wait`) for a command's outcome at once; more get 503.
    pub max_waiters: usize,
    /// Lifetime of a feed ticket (`POST /feed/ticket`), and how many may be outstanding.
    pub ticket_ttl_secs: u64,
    pub max_tickets: usize,
}

/// A token bucket: up to `burst` requests at once, `per_second` on average.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    pub burst: u32,
    pub per_second: f64,
}

impl LimitsConfig {
    /// The first problem, as (key under `gateway.limits`, reason).
    pub fn problem(&self) -> Option<(String, &'static str)> {
        for (name, bucket) in [
            ("token_per_client", self.token_per_client),
            ("token_per_ip", self.token_per_ip),
            ("api_per_client", self.api_per_client),
            ("api_per_ip", self.api_per_ip),
        ] {
            if bucket.burst == 0 {
                return Some((format!("{name}.burst"), "must be at least 1"));
            }
            if !(bucket.per_second.is_finite() && bucket.per_second > 0.0) {
                return Some((format!("{name}.per_second"), "must be a number above 0"));
            }
        }
        for (name, value) in [
            ("max_keys", self.max_keys as u64),
            ("max_streams_per_client", self.max_streams_per_client as u64),
            ("max_streams", self.max_streams as u64),
            ("write_timeout_ms", self.write_timeout_ms),
            ("keep_alive_ms", self.keep_alive_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("ticket_ttl_secs", self.ticket_ttl_secs),
            ("max_tickets", self.max_tickets as u64),
        ] {
            if value == 0 {
                return Some((name.to_owned(), "must be at least 1"));
            }
        }
        for (i, entry) in self.trusted_proxies.iter().enumerate() {
            if Cidr::parse(entry).is_none() {
                return Some((
                    format!("trusted_proxies[{i}]"),
                    "must be an IP address or a CIDR block such as 10.0.0.0/8",
                ));
            }
        }
        None
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_millis(self.keep_alive_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key, at most `max_keys` of them.
///
/// Two generations instead of a least-recently-used list: a key is looked up in the
/// current map, then in the previous one (and moved over); when the current map holds half
/// the bound, the previous one is dropped and the current one becomes it. Every operation
/// is O(1), and a key used within the last generation keeps its bucket. A dropped bucket
/// is a full one when its key comes back, which only costs the limit a burst.
#[derive(Debug)]
pub struct Buckets {
    config: BucketConfig,
    generation: usize,
    maps: Mutex<(HashMap<String, Bucket>, HashMap<String, Bucket>)>,
}

impl Buckets {
    pub fn new(config: BucketConfig, max_keys: usize) -> Self {
        Buckets {
            config,
            generation: (max_keys / 2).max(1),
            maps: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let BucketConfig { burst, per_second } = self.config;
        let mut maps = self.maps.lock().expect("bucket lock");
        let (current, previous) = &mut *maps;
        let bucket = match current.get(key) {
            Some(bucket) => *bucket,
            None => previous.remove(key).unwrap_or(Bucket {
                tokens: f64::from(burst),
                updated: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * per_second).min(f64::from(burst));
        let (tokens, answer) = if tokens >= 1.0 {
            (tokens - 1.0, Ok(()))
        } else {
            (
                tokens,
                Err(Duration::from_secs_f64((1.0 - tokens) / per_second)),
            )
        };
        if !current.contains_key(key) && current.len() >= self.generation {
            *previous = std::mem::take(current);
        }
        current.insert(
            key.to_owned(),
            Bucket {
                tokens,
                updated: now,
            },
        );
        answer
    }
}

/// An IP address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address it maps.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy; then the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (the
/// left-most entries are whatever the client chose to write).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|entry| entry.trim().parse::<IpAddr>().map(canonical))
        .collect::<Result<_, _>>()
        // A garbled header proves nothing: the proxy itself is what we know.
        .unwrap_or_default();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

/// Every bucket of the gateway.
#[derive(Debug)]
pub struct Limits {
    token_per_client: Buckets,
    token_per_ip: Buckets,
    api_per_client: Buckets,
    api_per_ip: Buckets,
    trusted: Vec<Cidr>,
}

/// Which bucket refused a request: the metric's label.
#[derive(Debug, Clone, Copy)]
enum Kind {
    TokenClient,
    TokenIp,
    ApiClient,
    ApiIp,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::TokenClient => "token_client",
            Kind::TokenIp => "token_ip",
            Kind::ApiClient => "api_client",
            Kind::ApiIp => "api_ip",
        }
    }
}

impl Limits {
    /// `config` was validated, so every trusted proxy parses.
    pub fn new(config: &LimitsConfig) -> Self {
        let buckets = |bucket| Buckets::new(bucket, config.max_keys);
        Limits {
            token_per_client: buckets(config.token_per_client),
            token_per_ip: buckets(config.token_per_ip),
            api_per_client: buckets(config.api_per_client),
            api_per_ip: buckets(config.api_per_ip),
            trusted: config
                .trusted_proxies
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
        }
    }

    fn bucket(&self, kind: Kind) -> &Buckets {
        match kind {
            Kind::TokenClient => &self.token_per_client,
            Kind::TokenIp => &self.token_per_ip,
            Kind::ApiClient => &self.api_per_client,
            Kind::ApiIp => &self.api_per_ip,
        }
    }
}

/// Takes a token of `kind` for `key`, or the 429 to answer.
fn take(app: &AppState, kind: Kind, key: &str) -> Result<(), ApiError> {
    app.limits
        .bucket(kind)
        .take(key, Instant::now())
        .map_err(|wait| {
            app.metrics
                .rate_limited
                .with_label_values(&[kind.label()])
                .inc();
            tracing::debug!(limit = kind.label(), "request rate limited");
            too_many_requests(wait)
        })
}

/// 429 with `Retry-After` in whole seconds, at least one.
pub fn too_many_requests(wait: Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests; retry in {} s", secs.max(1)),
    )
    .header(header::RETRY_AFTER, &secs.max(1).to_string())
}

/// A token request claiming `client_id`: called before the secret is checked, so guessing
/// one client's secret is slow from any number of addresses.
pub fn admit_token_client(app: &AppState, client_id: &str) -> Result<(), ApiError> {
    take(app, Kind::TokenClient, client_id)
}

/// An API request by an authenticated client.
pub fn admit_api_client(app: &AppState, client: &str) -> Result<(), ApiError> {
    take(app, Kind::ApiClient, client)
}

/// Middleware on every API route: the per-address bucket (the token endpoint's own, or
/// the API's). The client's address is also left in the request for the handlers.
pub async fn per_ip(
    State(app): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(PeerAddr(addr))| addr.ip());
    if let Some(peer) = peer {
        let ip = client_ip(peer, request.headers(), &app.limits.trusted);
        let kind = if request.uri().path() == "/auth/token" {
            Kind::TokenIp
        } else {
            Kind::ApiIp
        };
        if let Err(refused) = take(&app, kind, &ip.to_string()) {
            return refused.into_response();
        }
        request.extensions_mut().insert(ClientIp(ip));
    }
    next.run(request).await
}

/// The client's address as [`per_ip`] decided it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_bucket_allows_its_burst_then_refills() {
        let buckets = Buckets::new(
            BucketConfig {
                burst: 3,
                per_second: 2.0,
            },
            100,
        );
        let start = Instant::now();
        for _ in 0..3 {
            buckets.take("a", start).unwrap();
        }
        let wait = buckets.take("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        buckets.take("b", start).unwrap();
        buckets
            .take("a", start + Duration::from_millis(500))
            .unwrap();
        buckets
            .take("a", start + Duration::from_millis(600))
            .unwrap_err();
    }

    #[test]
    fn the_map_stays_bounded_and_recent_keys_keep_their_bucket() {
        let buckets = Buckets::new(
            BucketConfig {
                burst: 1,
                per_second: 0.001,
            },
            10,
        );
        let now = Instant::now();
        buckets.take("kept", now).unwrap();
        for i in 0..1000 {
            buckets.take(&i.to_string(), now).unwrap();
            if i % 3 == 0 {
                buckets.take("kept", now).unwrap_err();
            }
        }
        let maps = buckets.maps.lock().unwrap();
        assert!(maps.0.len() + maps.1.len() <= 10);
    }

    fn load(toml: &str) -> Result<crate::config::GatewayConfig, String> {
        let settings = feedline::Settings::from_toml(toml).map_err(|e| e.to_string())?;
        crate::config::GatewayConfig::from_settings(&settings).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bad_values_name_the_key() {
        let limits = load("").unwrap().limits;
        assert_eq!(limits.token_per_client.burst, 10);
        assert_eq!(limits.api_per_client.burst, 20_000);
        assert!(limits.trusted_proxies.is_empty());
        assert_eq!(limits.max_streams_per_client, 10);
        assert_eq!(limits.max_streams, 1000);
        assert_eq!(limits.write_timeout(), Duration::from_secs(30));
        assert_eq!(limits.request_timeout(), Duration::from_secs(15));
        assert_eq!(limits.max_waiters, 1000);
        assert_eq!(limits.ticket_ttl_secs, 60);
        for (toml, key) in [
            (
                "trusted_proxies = [\"10.0.0.0/40\"]",
                "limits.trusted_proxies[0]",
            ),
            ("max_streams = 0", "limits.max_streams"),
            (
                "api_per_ip = { burst = 0, per_second = 1.0 }",
                "limits.api_per_ip.burst",
            ),
            (
                "token_per_ip = { burst = 1, per_second = 0.0 }",
                "limits.token_per_ip.per_second",
            ),
        ] {
            let error = load(&format!("[gateway.limits]\n{toml}")).unwrap_err();
            assert!(error.contains(key), "{toml}: {error}");
        }
    }

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.7"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "3.3.3.3".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
        assert_eq!(client_ip(proxy, &headers, &[]), proxy);
        headers.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(proxy, &headers, &trusted), proxy);
    }
}
